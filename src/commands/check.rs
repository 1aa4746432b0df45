//! `hiresfix check PROFILE`: validates the profile — names, checkpoints (read from their
//! headers), limits, every pass's size — without running anything heavy.
use std::path::Path;

use anyhow::{bail, Result};

use super::{base_dir, load_profile, registry_for};
use crate::{generate, plan};

pub fn run(profile_path: &Path, sets: &[String]) -> Result<()> {
    let mut profile = load_profile(profile_path, sets)?;
    let base = base_dir(profile_path);
    let registry = registry_for(&profile, &base);
    // As `generate` prepares a job: resolved and planned once, pass 1's native size from the
    // checkpoint's headers (a family's own pass-1 steps first: Flux schnell's 4).
    plan::fill_family_steps(&mut profile, &registry, &base);
    profile.resolve(None)?;
    let plans = plan::plan_passes(&profile, &registry, &base)?;
    let settings = crate::models::LoadSettings::from_profile(&profile)?.resolve_files(&base);
    let mut models = crate::models::Models::new(&registry);
    let info = crate::models::checkpoint_info(
        &mut models,
        &settings,
        &plans[0].checkpoint,
        plans[0].vae.as_deref(),
    )?;
    let staged = profile.target.map(|t| (t, profile.stage_factor));
    profile.fill_native_size(info.default_size)?;
    let plans = match staged {
        // The stage plan's passes, planned as `generate` plans them.
        Some((target, factor)) => {
            println!(
                "stage plan: {} stages to {target}, ×{} per stage",
                profile.passes.len(),
                generate::num(factor.unwrap_or(crate::defaults::STAGE_FACTOR))
            );
            plan::plan_passes(&profile, &registry, &base)?
        }
        None => plans,
    };
    let (sizes, notes) = plan::pass_sizes(&profile.passes, info.vae_scale_factor)?;
    for note in &notes {
        println!("note: {note}");
    }
    // `tiled = "auto"` as `generate` decides it (`job::prepare_inner`).
    let decided = crate::auto_tiled::decide(&mut profile, (&plans, &sizes), &models, &settings)?;
    for decision in &decided {
        println!("{}", decision.line);
    }
    let plans = match decided.iter().any(|d| d.tiled) {
        true => plan::plan_passes(&profile, &registry, &base)?,
        false => plans,
    };
    for (plan, size) in plans.iter().zip(&sizes) {
        let backend = models.backend(&plan.checkpoint)?;
        if let Some(vae) = &plan.vae {
            if !vae.exists() {
                bail!("pass {}: VAE {} not found", plan.number, vae.display());
            }
        }
        println!(
            "pass {}: {}x{}, {} steps, denoise {}, sampler {}, schedule {}{}, model {} ({})",
            plan.number,
            size.width,
            size.height,
            plan.steps,
            generate::num(plan.denoise),
            plan.sampler.decl.name,
            plan.schedule.decl.name,
            plan.upscaler
                .map(|u| match &plan.upscaler_model {
                    // A model file: its architecture and scale, read by its plugin.
                    Some(stem) => format!(
                        ", upscaler {stem} ({})",
                        u.decl
                            .run_describe(&plan.upscaler_options)
                            .unwrap_or_else(|e| e.to_string())
                    ),
                    None => format!(", upscaler {}", u.decl.name),
                })
                .unwrap_or_default(),
            plan.checkpoint.display(),
            backend.decl.family
        );
        if let Some(tiled) = &plan.tiled {
            let (h, w) = (size.latent_h, size.latent_w);
            let grid = crate::tiled::Grid::wrapping(tiled, h, w, profile.tiling);
            println!("pass {}: tiled {}", plan.number, grid.describe(tiled));
        }
        if let Some(refiner) = &plan.refiner {
            println!(
                "pass {}: refiner {} ({}) from {} of the schedule",
                plan.number,
                refiner.checkpoint.display(),
                models.backend(&refiner.checkpoint)?.decl.family,
                generate::num(refiner.switch_at)
            );
        }
    }
    crate::switch::check_families(&plans, &models)?;
    crate::run::patches_fit(&plans, &info)?;
    crate::run::tiled_fit(&plans, &models)?;
    let mut findings = crate::lint::lint(&plans, &sizes, &info);
    findings.extend(crate::switch::switch_findings(&plans, &sizes, &models)?);
    for finding in &findings {
        println!("{finding}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == crate::lint::Severity::Error)
        .count();
    if errors > 0 {
        bail!("{errors} error(s) above");
    }
    crate::output::checked_template(&profile.output)?;
    match crate::memory::table(&plans, &sizes, &models, &settings) {
        Ok(rows) => crate::memory::render(&rows, &settings)
            .iter()
            .for_each(|line| println!("{line}")),
        Err(e) => println!("note: no memory estimate: {e}"),
    }
    println!("ok: {} passes", plans.len());
    Ok(())
}
