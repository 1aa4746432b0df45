//! Per-pass checkpoint switches (a later pass's `checkpoint`, a pass's refiner): a pass of
//! another latent space than the pass before it only through a pixel upscaler, a refiner only
//! in its pass's latent space — the same family, or SDXL and its refiner, which share SDXL's
//! (refused before anything loads otherwise); and the seed article's two failure modes as
//! warnings — another text encoder understands the prompt differently, and more than 10 steps
//! on the second model repaint the composition.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use crate::lint::{Finding, Severity};
use crate::models::Models;
use crate::plan::{PassPlan, PassSize};

/// Steps on a switched-to checkpoint beyond which the composition is repainted.
pub const MAX_STEPS_AFTER_SWITCH: usize = 10;

/// Families whose checkpoints continue each other's latents: the SDXL refiner works in SDXL's
/// latent space (its VAE is SDXL's), Flux dev and schnell share the `ae`, so a pass or a
/// refiner may switch between them.
const SHARED_LATENT_SPACE: &[(&str, &str)] =
    &[("sdxl", "sdxl-refiner"), ("flux-dev", "flux-schnell")];

/// Whether a checkpoint of `family` may continue the latents of one of `base`.
pub fn shares_latent_space(family: &str, base: &str) -> bool {
    family == base
        || SHARED_LATENT_SPACE
            .iter()
            .any(|&(a, b)| (a, b) == (family, base) || (b, a) == (family, base))
}

/// Each pass's checkpoint against the pass before it ([`hand_off`]) and each pass's refiner
/// against the pass's checkpoint ([`refiner_family`]); families read from the headers, before
/// anything loads.
pub fn check_families(plans: &[PassPlan<'_>], models: &Models<'_>) -> Result<()> {
    let family =
        |path: &Path| -> Result<String> { Ok(models.backend(path)?.decl.family.to_string()) };
    for (i, plan) in plans.iter().enumerate() {
        if i > 0 && plan.checkpoint != plans[i - 1].checkpoint {
            let previous = &plans[i - 1];
            hand_off(
                plan,
                &family(&plan.checkpoint)?,
                previous,
                &family(&previous.checkpoint)?,
            )?;
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

/// The rule: `plan`'s checkpoint, of `family`, may follow `previous`'s, of `previous_family`,
/// when they share a latent space, or when `plan`'s upscaler works in pixels — it decodes with
/// the earlier pass's VAE and encodes with the new one's, so another latent space is fine
/// (checked before the run from the headers, and during it from the loaded models).
pub fn hand_off(
    plan: &PassPlan<'_>,
    family: &str,
    previous: &PassPlan<'_>,
    previous_family: &str,
) -> Result<()> {
    if shares_latent_space(family, previous_family)
        || plan.upscaler.is_some_and(|u| u.decl.works_in_pixels)
    {
        return Ok(());
    }
    let upscaler = plan.upscaler.map_or("none", |u| u.decl.name.as_str());
    bail!(
        "pass {}: checkpoint {} is {family} but pass {} ran {previous_family}, and upscaler `{upscaler}` keeps its latent — switch families through a pixel upscaler (\"Lanczos\" or an ESRGAN file)",
        plan.number,
        plan.checkpoint.display(),
        previous.number,
    );
}

/// A pass that switches to another family below this share of that family's native area (as
/// 768x768 is of SDXL's 1024x1024) refines where the new model works badly.
pub const MIN_HAND_OFF_AREA: f64 = 0.5;

/// The findings for each switch (another text encoder, too many steps, another family below
/// its native size), naming the pass.
pub fn switch_findings(
    plans: &[PassPlan<'_>],
    sizes: &[PassSize],
    models: &Models<'_>,
) -> Result<Vec<Finding>> {
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
        if let Some(finding) = hand_off_size(plan, &sizes[i], previous, models)? {
            warnings.push(finding);
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

/// A pass of another family than the pass before it, far below the new family's native size.
fn hand_off_size(
    plan: &PassPlan<'_>,
    size: &PassSize,
    previous: &PassPlan<'_>,
    models: &Models<'_>,
) -> Result<Option<Finding>> {
    let backend = models.backend(&plan.checkpoint)?;
    if backend.decl.family == models.backend(&previous.checkpoint)?.decl.family
        || !backend.decl.has_tools()
    {
        return Ok(None);
    }
    let info = backend
        .decl
        .run_inspect(&plan.checkpoint, false)
        .map_err(|e| anyhow!("{e}"))?;
    let native = f64::from(info.default_size);
    let area = f64::from(size.width) * f64::from(size.height);
    if native == 0.0 || area >= MIN_HAND_OFF_AREA * native * native {
        return Ok(None);
    }
    Ok(Some(Finding {
        severity: Severity::Warning,
        pass: plan.number,
        key: "scale",
        message: format!(
            "{}x{} is far below {}'s native {native} px, and this pass hands the image over to it: it refines badly there",
            size.width, size.height, info.family_name
        ),
        fix: format!(
            "reach about {native}x{native} in this pass (a larger scale), or switch in a later pass"
        ),
    }))
}
