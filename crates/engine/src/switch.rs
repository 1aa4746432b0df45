//! Per-pass checkpoint switches (a later pass's `checkpoint`, a pass's refiner): one latent
//! space throughout — the same family, or SDXL and its refiner, which share SDXL's latent
//! space (refused before anything loads); and the seed article's two failure modes as
//! warnings — another text encoder understands the prompt differently, and more than 10
//! steps on the second model repaint the composition.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::lint::{Finding, Severity};
use crate::models::Models;
use crate::plan::PassPlan;

/// Steps on a switched-to checkpoint beyond which the composition is repainted.
pub const MAX_STEPS_AFTER_SWITCH: usize = 10;

/// Families whose checkpoints continue each other's latents: the SDXL refiner works in SDXL's
/// latent space (its VAE is SDXL's), so a pass or a refiner may switch between them.
const SHARED_LATENT_SPACE: &[(&str, &str)] = &[("sdxl", "sdxl-refiner")];

/// Whether a checkpoint of `family` may continue the latents of one of `base`.
pub fn shares_latent_space(family: &str, base: &str) -> bool {
    family == base
        || SHARED_LATENT_SPACE
            .iter()
            .any(|&(a, b)| (a, b) == (family, base) || (b, a) == (family, base))
}

/// Every pass's checkpoint and refiner must share the first pass's latent space (read from
/// the headers, before anything loads).
pub fn check_families(plans: &[PassPlan<'_>], models: &Models<'_>) -> Result<()> {
    let family =
        |path: &Path| -> Result<String> { Ok(models.backend(path)?.decl.family.to_string()) };
    let first = &plans[0];
    let base = family(&first.checkpoint)?;
    for plan in plans {
        if plan.checkpoint != first.checkpoint {
            same_family(plan, &family(&plan.checkpoint)?, first, &base)?;
        }
        if let Some(refiner) = &plan.refiner {
            let pass_family = family(&plan.checkpoint)?;
            refiner_family(plan, &family(&refiner.checkpoint)?, &pass_family)?;
        }
    }
    Ok(())
}

/// The rule for a pass's refiner: it continues the pass's latent, so it must share the
/// latent space of the pass's checkpoint, of `base_family`.
pub fn refiner_family(plan: &PassPlan<'_>, family: &str, base_family: &str) -> Result<()> {
    let Some(refiner) = &plan.refiner else {
        return Ok(());
    };
    if !shares_latent_space(family, base_family) {
        bail!(
            "pass {}: refiner_checkpoint {} is {family} but the pass's {} is {base_family} — a refiner continues the pass's latent, so it must be of the same family (or SDXL ↔ SDXL refiner, which share a latent space)",
            plan.number,
            refiner.checkpoint.display(),
            plan.checkpoint.display()
        );
    }
    Ok(())
}

/// The rule: `plan`'s checkpoint, of `family`, may only follow `base`'s, of `base_family`, when
/// they share a latent space (checked before the run from the headers, and during it from the
/// loaded models).
pub fn same_family(
    plan: &PassPlan<'_>,
    family: &str,
    base: &PassPlan<'_>,
    base_family: &str,
) -> Result<()> {
    if !shares_latent_space(family, base_family) {
        bail!(
            "pass {}: checkpoint {} is {family} but pass {}'s {} is {base_family} — a pass may only switch to a checkpoint of the same family (or SDXL ↔ SDXL refiner, which share a latent space)",
            plan.number,
            plan.checkpoint.display(),
            base.number,
            base.checkpoint.display()
        );
    }
    Ok(())
}

/// The findings for each switch (another text encoder, too many steps), naming the pass.
pub fn switch_findings(plans: &[PassPlan<'_>], models: &Models<'_>) -> Result<Vec<Finding>> {
    // `None` for a backend without the optional tools table: its text encoders are unknown.
    let fingerprint = |path: &PathBuf| -> Result<Option<String>> {
        let backend = models.backend(path)?;
        if !backend.decl.has_tools() {
            return Ok(None);
        }
        let info = backend
            .decl
            .run_inspect(path, false)
            .map_err(|e| anyhow!("{e}"))?;
        Ok(Some(info.text_encoder_fingerprint.to_string()))
    };
    let mut warnings = Vec::new();
    for (i, plan) in plans.iter().enumerate().skip(1) {
        let previous = &plans[i - 1];
        if plan.checkpoint == previous.checkpoint {
            continue;
        }
        let (ours, theirs) = (
            fingerprint(&plan.checkpoint)?,
            fingerprint(&previous.checkpoint)?,
        );
        if ours.is_some() && theirs.is_some() && ours != theirs {
            warnings.push(Finding {
                severity: Severity::Warning,
                pass: plan.number,
                key: "checkpoint",
                message: format!(
                    "{} has another text encoder than pass {}'s {}: the prompt is understood differently",
                    plan.checkpoint.display(),
                    previous.number,
                    previous.checkpoint.display()
                ),
                fix: "switch to a checkpoint that shares the text encoder".into(),
            });
        }
        let steps: usize = plans[i..]
            .iter()
            .take_while(|p| p.checkpoint == plan.checkpoint)
            .map(|p| p.steps)
            .sum();
        if steps > MAX_STEPS_AFTER_SWITCH {
            warnings.push(Finding {
                severity: Severity::Warning,
                pass: plan.number,
                key: "steps",
                message: format!(
                    "{steps} steps after switching to {} (more than {MAX_STEPS_AFTER_SWITCH}): the second model repaints the composition",
                    plan.checkpoint.display()
                ),
                fix: format!("run at most {MAX_STEPS_AFTER_SWITCH} steps after the switch, or switch in a later pass"),
            });
        }
    }
    Ok(warnings)
}
