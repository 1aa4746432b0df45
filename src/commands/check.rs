//! `hiresfix check PROFILE`: validates the profile and resolves every plugin name and
//! checkpoint without running anything heavy.
use std::path::Path;

use anyhow::{bail, Result};

use super::{base_dir, load_profile, registry_for};
use crate::{generate, plan};

pub fn run(profile_path: &Path, sets: &[String]) -> Result<()> {
    let mut profile = load_profile(profile_path, sets)?;
    let base = base_dir(profile_path);
    let registry = registry_for(&profile, &base);
    profile.resolve_defaults(512)?;
    let plans = plan::plan_passes(&profile, &registry, &base)?;
    for plan in &plans {
        let backend = generate::detect_backend(&registry, &plan.checkpoint)?;
        if let Some(vae) = &plan.vae {
            if !vae.exists() {
                bail!("pass {}: VAE {} not found", plan.number, vae.display());
            }
        }
        println!(
            "pass {}: {} steps, denoise {}, sampler {}, schedule {}{}, model {} ({})",
            plan.number,
            plan.steps,
            generate::num(plan.denoise),
            plan.sampler.decl.name,
            plan.schedule.decl.name,
            plan.upscaler
                .map(|u| format!(", upscaler {}", u.decl.name))
                .unwrap_or_default(),
            plan.checkpoint.display(),
            backend.decl.family
        );
    }
    println!("ok: {} passes", plans.len());
    Ok(())
}
