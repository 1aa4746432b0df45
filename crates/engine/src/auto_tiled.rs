//! `tiled = "auto"`, and every stage of a stage plan (README "Tiled diffusion", "Stage
//! plan"): decided once per job, when the sizes and pass 1's model are known — a pass is
//! tiled with its settings (`"auto"`: the defaults) when the backend's memory estimate says its
//! whole-latent UNet call (with the weights and runtime) will not fit in
//! [`memory::BATCH_SHARE`] of the device's free memory. The decision is written into the
//! profile (the table, or the key removed), so the resolved profile in the PNG and `replay`
//! tile as this run did whatever memory the replaying machine has.
use anyhow::Result;

use crate::memory;
use crate::models::{LoadSettings, Models};
use crate::pass_size::PassSize;
use crate::plan::PassPlan;
use crate::profile::Profile;
use crate::tiled::setting::TiledSetting;

/// What [`decide`] chose for one `auto` pass, as `check` and `generate` print it.
#[derive(Debug, PartialEq)]
pub struct Decision {
    pub pass: usize,
    pub tiled: bool,
    pub line: String,
}

/// Decides every `tiled = "auto"` pass of `profile` (`plans` and `sizes` are its passes,
/// planned with the `auto` passes untiled) and writes the decisions into it; the caller plans
/// again when any pass became tiled.
pub fn decide(
    profile: &mut Profile,
    (plans, sizes): (&[PassPlan<'_>], &[PassSize]),
    models: &Models<'_>,
    settings: &LoadSettings,
) -> Result<Vec<Decision>> {
    let mut decisions = Vec::new();
    for ((pass, plan), size) in profile.passes.iter_mut().zip(plans).zip(sizes) {
        let Some(TiledSetting::Auto(table)) = pass.tiled else {
            continue;
        };
        let n = plan.number;
        let at = format!("{}x{}", size.width, size.height);
        let (tiled, why) = match memory::whole_call(plan, size, models, settings) {
            None => (
                false,
                "no memory estimate for this checkpoint or device".to_string(),
            ),
            Some((need, free)) if (need as f64) <= free as f64 * memory::BATCH_SHARE => (
                false,
                format!(
                    "{} at {at} fits in {} free",
                    memory::gib(need),
                    memory::gib(free)
                ),
            ),
            Some((need, free)) => (
                true,
                format!(
                    "{} at {at} untiled, {} free",
                    memory::gib(need),
                    memory::gib(free)
                ),
            ),
        };
        // Where tiles cannot run, the pass stays whole (and `check`'s memory table says it
        // will not fit) rather than being refused.
        let blocked = match tiled {
            false => None,
            true if crate::run::inpainting_checkpoint(plan, models)? => {
                Some("a 9-channel inpainting checkpoint's conditioning is not tiled")
            }
            true => None,
        };
        let line = match (tiled, blocked) {
            (false, _) => format!("pass {n}: tiled = \"auto\": not tiled ({why})"),
            (true, Some(reason)) => {
                format!("pass {n}: tiled = \"auto\": would tile ({why}) but {reason}: runs whole")
            }
            (true, None) => format!("pass {n}: tiled = \"auto\": tiled ({why})"),
        };
        let tiled = tiled && blocked.is_none();
        pass.tiled = tiled.then_some(TiledSetting::Table(table));
        decisions.push(Decision {
            pass: n,
            tiled,
            line,
        });
    }
    Ok(decisions)
}
