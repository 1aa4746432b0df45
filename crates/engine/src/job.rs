//! A profile made ready to run: defaults filled, names resolved, the first pass's model loaded
//! (it gives pass 1 its native size), every pass's size known.
use std::path::Path;

use anyhow::{anyhow, Result};

use crate::models::{LoadSettings, Models};
use crate::noise::{ImageSeeds, NoiseSettings, Variation};
use crate::observer::Observer;
use crate::plan::{pass_sizes, plan_passes, PassPlan, PassSize};
use crate::profile::Profile;
use crate::registry::Registry;
use crate::run::{run_batch, run_image, ImageResult, Resume};

/// A profile made ready to run: models loaded, names resolved, sizes known.
pub struct Job<'r> {
    pub profile: Profile,
    pub plans: Vec<PassPlan<'r>>,
    pub sizes: Vec<PassSize>,
    pub models: Models<'r>,
    pub settings: LoadSettings,
    /// Size roundings and other things the user should know.
    pub notes: Vec<String>,
}

/// Resolves the profile and its names once (before any model load, so a typo fails fast), loads
/// the first pass's model, takes pass 1's native size from it and computes every pass's size.
pub fn prepare<'r>(profile: Profile, registry: &'r Registry, base_dir: &Path) -> Result<Job<'r>> {
    prepare_with(profile, registry, base_dir, Models::new(registry))
}

/// [`prepare`] for a run whose progress, timings and stopping go through `observer`.
pub fn prepare_observed<'r>(
    profile: Profile,
    registry: &'r Registry,
    base_dir: &Path,
    observer: &'r dyn Observer,
) -> Result<Job<'r>> {
    prepare_with(
        profile,
        registry,
        base_dir,
        Models::observed(registry, observer),
    )
}

/// [`prepare`] with models already loaded by earlier jobs (grid cells) to reuse.
pub fn prepare_with<'r>(
    profile: Profile,
    registry: &'r Registry,
    base_dir: &Path,
    models: Models<'r>,
) -> Result<Job<'r>> {
    prepare_inner(profile, registry, base_dir, models).map_err(|failed| failed.0)
}

/// [`prepare`] with the models of `models` (a server's cache); on failure they are left
/// there, so a bad request does not unload what earlier ones loaded.
pub fn prepare_reusing<'r>(
    profile: Profile,
    registry: &'r Registry,
    base_dir: &Path,
    models: &mut Models<'r>,
) -> Result<Job<'r>> {
    let taken = std::mem::replace(models, Models::observed(registry, models.observer));
    prepare_inner(profile, registry, base_dir, taken).map_err(|failed| {
        let (e, back) = *failed;
        *models = back;
        e
    })
}

/// The work of [`prepare_with`]; a failure hands the models back.
fn prepare_inner<'r>(
    mut profile: Profile,
    registry: &'r Registry,
    base_dir: &Path,
    mut models: Models<'r>,
) -> Result<Job<'r>, Box<(anyhow::Error, Models<'r>)>> {
    macro_rules! give_back {
        ($e:expr) => {
            match $e {
                Ok(v) => v,
                Err(e) => return Err(Box::new((e, models))),
            }
        };
    }
    let settings = give_back!(LoadSettings::from_profile(&profile)).resolve_files(base_dir);
    models.preview_dirs = crate::live_preview::dirs(&profile.vae_approx_dirs, base_dir);
    // Everything but pass 1's native size needs no model: resolved and planned once, here.
    crate::plan::fill_family_steps(&mut profile, registry, base_dir);
    give_back!(profile.resolve(None));
    let plans = give_back!(plan_passes(&profile, registry, base_dir));
    // Families must match across passes: refused now, before any model loads or samples.
    give_back!(crate::switch::check_families(&plans, &models));
    let info = give_back!(models.for_pass(&settings, &plans[0]).map(|(_, info)| info));
    let staged = profile.target.is_some();
    give_back!(profile.fill_native_size(info.default_size));
    // A stage plan's passes exist now: planned again, pass 1's model already loaded.
    let plans = match staged {
        true => give_back!(plan_passes(&profile, registry, base_dir)),
        false => plans,
    };
    if profile.seed == -1 {
        profile.seed = random_seed();
    }
    if profile.subseed == -1 && profile.subseed_strength > 0.0 {
        profile.subseed = random_seed();
    }
    let (sizes, mut notes) = give_back!(pass_sizes(&profile.passes, info.vae_scale_factor));
    // `tiled = "auto"` (every stage of a stage plan): decided from the memory estimate and
    // written into the profile, then planned again with the tiles.
    let decided = crate::auto_tiled::decide(&mut profile, (&plans, &sizes), &models, &settings);
    let decided = give_back!(decided);
    notes.extend(decided.iter().map(|d| d.line.clone()));
    let plans = match decided.iter().any(|d| d.tiled) {
        true => give_back!(plan_passes(&profile, registry, base_dir)),
        false => plans,
    };
    Ok(Job {
        profile,
        plans,
        sizes,
        models,
        settings,
        notes,
    })
}

impl Job<'_> {
    /// What pass 1's checkpoint is, read from its headers (for the lint).
    pub fn first_checkpoint_info(&mut self) -> Result<host_api::CheckpointInfo> {
        let checkpoint = &self.plans[0].checkpoint;
        let backend = self.models.backend(checkpoint)?;
        if !backend.decl.has_tools() {
            let vae = self.plans[0].vae.as_deref();
            return crate::models::checkpoint_info(
                &mut self.models,
                &self.settings,
                checkpoint,
                vae,
            );
        }
        let mut info = backend
            .decl
            .run_inspect(checkpoint, false)
            .map_err(|e| anyhow!("{e}"))?;
        // The loaded model knows its native size for sure (SD 2.x's probe decides it).
        if let Some(loaded) = self.models.loaded_info(checkpoint) {
            info.default_size = loaded.default_size;
        }
        Ok(info)
    }

    pub fn run_image(&mut self, seed: i64) -> Result<ImageResult> {
        self.run_passes(seed, None, self.plans.len())
    }

    /// Runs image `seed`'s passes (with the profile's subseed: image 0's) up to pass `until`,
    /// after `resume`'s pass from its latent when given (`hiresfix finish`).
    pub fn run_passes(
        &mut self,
        seed: i64,
        resume: Option<&Resume>,
        until: usize,
    ) -> Result<ImageResult> {
        let noise = self.noise_settings();
        let seeds = ImageSeeds {
            seed,
            subseed: self.profile.subseed,
        };
        let job = (&self.plans[..until], &self.sizes[..until], &self.settings);
        run_image(job, &mut self.models, seeds, &noise, resume)
    }

    /// Runs the images with `seeds` as one UNet batch up to pass `until` (each equal to its
    /// single run).
    pub fn run_batch(&mut self, seeds: &[ImageSeeds], until: usize) -> Result<Vec<ImageResult>> {
        let noise = self.noise_settings();
        let job = (&self.plans[..until], &self.sizes[..until], &self.settings);
        run_batch(job, &mut self.models, seeds, &noise, None)
    }

    /// The eta noise seed delta and the variation seeds of every image.
    pub fn noise_settings(&self) -> NoiseSettings {
        let p = &self.profile;
        NoiseSettings {
            delta: p.eta_noise_seed_delta,
            variation: Variation {
                strength: p.subseed_strength,
                resize_from: (p.seed_resize_from_w, p.seed_resize_from_h),
            },
        }
    }

    /// Image `n`'s seeds, A1111's batch rule: seed + n and subseed + n, except that with a
    /// variation strength every image keeps the seed (only the subseed varies).
    pub fn image_seeds(&self, n: usize) -> ImageSeeds {
        let p = &self.profile;
        let n = n as i64;
        ImageSeeds {
            seed: p.seed + if p.subseed_strength == 0.0 { n } else { 0 },
            subseed: p.subseed.saturating_add(n),
        }
    }

    /// The profile that reproduces image `n` alone (seed + n, batch 1, sizes and paths
    /// spelled out), for the PNG's second chunk and `replay`: generation settings only, no
    /// plugin folders, pins or output path (a PNG travels; see [`Profile::untrusted`]).
    pub fn image_profile(&self, n: usize) -> Profile {
        let mut p = self.profile.clone().untrusted();
        let seeds = self.image_seeds(n);
        p.seed = seeds.seed;
        if p.subseed_strength > 0.0 {
            p.subseed = seeds.subseed;
        }
        p.batch = 1;
        for (i, pass) in p.passes.iter_mut().enumerate() {
            if i == 0 {
                pass.width = Some(self.sizes[0].width);
                pass.height = Some(self.sizes[0].height);
                // img2img's files, as the run found them (a PNG travels).
                if let Some(i2i) = &self.plans[0].img2img {
                    pass.init_image = Some(absolute(&i2i.init_image));
                    pass.mask = i2i.mask.as_ref().map(|m| absolute(m));
                }
            }
            pass.checkpoint = pass
                .checkpoint
                .as_ref()
                .map(|_| absolute(&self.plans[i].checkpoint));
            pass.refiner_checkpoint = self.plans[i]
                .refiner
                .as_ref()
                .map(|r| absolute(&r.checkpoint));
        }
        p.model.checkpoint = Some(absolute(&self.plans[0].checkpoint));
        p.model.vae = self.plans[0].vae.as_ref().map(|v| absolute(v));
        p
    }
}

fn absolute(path: &Path) -> String {
    std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned()
}

pub fn random_seed() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos % 4_294_967_295) as i64
}
