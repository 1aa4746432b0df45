//! `generate` and `finish`: every image of the batch run and written as PNG, with the A1111
//! parameters and the resolved profile (and, for an image that stops before the last pass,
//! its latent, so `finish` can continue it).
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use host_api::tch::{Kind, Tensor};

pub use crate::infotext::num;
pub use crate::job::{prepare, Job};
pub use crate::models::{detect_backend, device_of, LoadSettings, Models};
pub use crate::parameters::{infotext_pairs, infotext_prompt, model_hash};
pub use crate::run::{run_image, to_rgb8, ImageResult};

use crate::infotext;
use crate::noise::ImageSeeds;
use crate::observer::{timed, Observer};
use crate::output;
use crate::profile::Profile;
use crate::registry::Registry;
use crate::run::{out_of_memory, Resume};
use crate::stored_latent::{self, StoredLatent};

pub struct RunOptions {
    pub quiet: bool,
    /// `-o PATH`: replaces the profile's output template.
    pub output: Option<String>,
    /// Folder relative model paths are looked up in (the profile's).
    pub base_dir: PathBuf,
    /// `--passes K`: stop after pass K; the images carry their latent for `finish`.
    pub passes: Option<usize>,
    /// The model's native size when the caller knows better than its family (the demo's
    /// tiny model composes at 48 px), for the lint.
    pub native_size: Option<u32>,
}

impl RunOptions {
    pub fn new(base_dir: PathBuf) -> Self {
        Self {
            quiet: false,
            output: None,
            base_dir,
            passes: None,
            native_size: None,
        }
    }

    /// The last pass to run, checked against the profile's pass count.
    fn until(&self, total: usize) -> Result<usize> {
        match self.passes {
            None => Ok(total),
            Some(k) if (1..=total).contains(&k) => Ok(k),
            Some(k) => bail!("--passes {k}: the profile has {total} pass(es); give 1 to {total}"),
        }
    }
}

/// `generate`: every image of the batch, written as PNG, its progress told to `observer`
/// (which may stop it). Returns the written paths.
pub fn generate<'r>(
    profile: Profile,
    registry: &'r Registry,
    options: &RunOptions,
    observer: &'r dyn Observer,
) -> Result<Vec<PathBuf>> {
    let template = output::checked_template(options.output.as_deref().unwrap_or(&profile.output))?;
    // A stage plan's passes are known once the model is read: `--passes` is checked then.
    let staged = profile.target.is_some();
    if !staged {
        options.until(profile.passes.len())?;
    }
    let mut job = crate::job::prepare_observed(profile, registry, &options.base_dir, observer)?;
    let until = options.until(job.plans.len())?;
    report_findings(&mut job, options)?;
    let mut writer = Writer::new(Sink::files(template), &job);
    // One run, then the process ends: the last images decode with the VAE alone in memory.
    let last_use = LastUse::ReleaseForDecode;
    run_all(&mut job, &mut writer, options.quiet, until, last_use)?;
    Ok(writer.sink.into_paths())
}

/// An image made in memory (`hiresfix serve`): its seed, PNG file and `parameters` text.
pub struct Rendered {
    pub seed: i64,
    /// Its variation seed (A1111's `all_subseeds` entry).
    pub subseed: i64,
    pub png: Vec<u8>,
    pub parameters: String,
}

/// Why [`generate_in_memory`] stopped, with the images it finished before.
pub struct MemoryError {
    pub error: anyhow::Error,
    /// The request itself could not run (a name, a file, a value): nothing was sampled.
    pub before_sampling: bool,
    pub images: Vec<Rendered>,
}

/// `generate` without files: every image of the batch as PNG bytes, with the models of
/// `models` reused and left there for the next call (also when the run fails or is cancelled).
pub fn generate_in_memory<'r>(
    profile: Profile,
    registry: &'r Registry,
    base_dir: &Path,
    models: &mut Models<'r>,
    quiet: bool,
) -> Result<Vec<Rendered>, MemoryError> {
    let mut job =
        crate::job::prepare_reusing(profile, registry, base_dir, models).map_err(|error| {
            MemoryError {
                error,
                before_sampling: true,
                images: Vec::new(),
            }
        })?;
    let options = RunOptions {
        quiet,
        ..RunOptions::new(base_dir.to_path_buf())
    };
    if let Err(error) = report_findings(&mut job, &options) {
        *models = job.models;
        return Err(MemoryError {
            error,
            before_sampling: true,
            images: Vec::new(),
        });
    }
    let mut writer = Writer::new(Sink::Memory(Vec::new()), &job);
    let until = job.plans.len();
    let result = run_all(&mut job, &mut writer, quiet, until, LastUse::Keep);
    *models = job.models;
    let images = writer.sink.into_rendered();
    match result {
        Ok(()) => Ok(images),
        Err(error) => Err(MemoryError {
            error,
            before_sampling: false,
            images,
        }),
    }
}

/// What happens to the models once the run's last UNet call is done.
#[derive(Clone, Copy, PartialEq, Eq)]
enum LastUse {
    /// They stay whole for the next request (`serve`).
    Keep,
    /// Nothing but decoding follows (`generate`): all but the VAE decoders are freed first,
    /// so the final decodes do not peak on top of the UNet and text encoders.
    ReleaseForDecode,
}

/// Every image of `job`'s batch, as many per UNet call as memory allows, into `writer`.
fn run_all(
    job: &mut Job<'_>,
    writer: &mut Writer,
    quiet: bool,
    until: usize,
    last_use: LastUse,
) -> Result<()> {
    let batch = job.profile.batch as usize;
    let (per_call, warnings) = crate::memory::batch_plan(
        &job.plans[..until],
        &job.sizes[..until],
        &job.models,
        &job.settings,
        batch,
    );
    for warning in &warnings {
        eprintln!("{warning}");
    }
    if per_call > 1 && !quiet {
        eprintln!(
            "note: {per_call} images per UNet call (what the free memory allows, at most {})",
            crate::memory::MAX_IMAGES_PER_CALL
        );
    }
    let steps: usize = job.plans[..until].iter().map(|p| p.steps).sum();
    job.models
        .observer
        .job_started(steps * batch.div_ceil(per_call), batch);
    let seeds: Vec<ImageSeeds> = (0..batch).map(|n| job.image_seeds(n)).collect();
    let chunks = batch.div_ceil(per_call);
    for (c, chunk) in seeds.chunks(per_call).enumerate() {
        let first = c * per_call;
        let release = last_use == LastUse::ReleaseForDecode && c + 1 == chunks;
        run_chunk(job, chunk, quiet, until, release, |job, k, result| {
            let image = Image {
                n: first + k,
                seed: chunk[k].seed,
                subseed: chunk[k].subseed,
                until,
            };
            writer.write(job, &image, result).map(drop)
        })
        .map_err(|e| match &writer.sink {
            Sink::Files { written, .. } => {
                anyhow!("{e}; {}", output::written_so_far(written, batch))
            }
            Sink::Memory(_) => e,
        })?;
        let observer = job.models.observer;
        if observer.stopped() && observer.keeps_partial() {
            break; // stopped, its images kept as far as they got: no more chunks
        }
    }
    Ok(())
}

/// Runs the images with `seeds` as one UNet batch and hands each result to `write` (its index
/// in `seeds`); a batch that runs out of memory is run again one image at a time. With
/// `release`, the models keep only their VAE decoders once the batch's sampling is done.
fn run_chunk(
    job: &mut Job<'_>,
    seeds: &[ImageSeeds],
    quiet: bool,
    until: usize,
    release: bool,
    mut write: impl FnMut(&mut Job<'_>, usize, &ImageResult) -> Result<()>,
) -> Result<()> {
    job.models.final_image = release;
    let run = job.run_batch(seeds, until);
    job.models.final_image = false;
    let results = match run {
        Ok(results) => {
            if release {
                job.models.release_for_decode();
            }
            results
        }
        Err(e) if seeds.len() > 1 && e.to_string().starts_with("out of memory") => {
            if !quiet {
                eprintln!(
                    "note: {} images at once ran out of memory; running them one at a time",
                    seeds.len()
                );
            }
            for (k, seed) in seeds.iter().enumerate() {
                let mut one = job.run_batch(&[*seed], until)?;
                write(job, k, &one.remove(0))?;
            }
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    for (k, result) in results.iter().enumerate() {
        write(job, k, result)?;
    }
    Ok(())
}

/// Where `finish` starts from.
pub enum Start {
    /// The latent an earlier run stored (after its pass `pass`).
    Latent(StoredLatent),
    /// An image taken as pass 1's result and VAE-encoded (A1111's "hires fix this image");
    /// the profile's pass 1 must already have its size.
    Image {
        width: u32,
        height: u32,
        rgb: Vec<u8>,
    },
}

/// `finish`: the remaining passes of one image, from `start`, its progress told to
/// `observer`. Returns the written paths.
pub fn finish<'r>(
    profile: Profile,
    registry: &'r Registry,
    options: &RunOptions,
    start: Start,
    observer: &'r dyn Observer,
) -> Result<Vec<PathBuf>> {
    let template = output::checked_template(options.output.as_deref().unwrap_or(&profile.output))?;
    let done = match &start {
        Start::Latent(stored) => stored.pass,
        Start::Image { .. } => 1,
    };
    let left = |total: usize| -> Result<usize> {
        let until = options.until(total)?;
        if done >= until {
            bail!("nothing left to run: the image is pass {done} and the profile stops at pass {until}; add a [[pass]] (or --set pass.{}.scale=2)", done + 1);
        }
        Ok(until)
    };
    // A stage plan's passes are known once the model is read: checked then.
    if profile.target.is_none() {
        left(profile.passes.len())?;
    }
    let mut job = crate::job::prepare_observed(profile, registry, &options.base_dir, observer)?;
    let until = left(job.plans.len())?;
    report_findings(&mut job, options)?;
    let latent = match start {
        Start::Latent(stored) => {
            let size = &job.sizes[stored.pass - 1];
            let got = stored.latent.size();
            if got.len() != 4 || got[0] != 1 || got[2] != size.latent_h || got[3] != size.latent_w {
                bail!("the stored latent is pass {} at {}x{} cells but the profile's pass {} is {}x{} px ({}x{} cells); keep pass 1's size and scales as they were",
                    stored.pass, got.get(3).unwrap_or(&0), got.get(2).unwrap_or(&0), stored.pass, size.width, size.height, size.latent_w, size.latent_h);
            }
            // The backstop of `finish`'s header check: the pass that continues must take it.
            let next = &job.plans[stored.pass];
            let channels = i64::from(job.models.for_pass(&job.settings, next)?.1.latent_channels);
            if got[1] != channels {
                bail!("the stored latent has {} channels but pass {}'s model takes {channels}; finish with the model that made it, or use --ignore-latent", got[1], next.number);
            }
            stored.latent
        }
        Start::Image { width, height, rgb } => encode_image(&mut job, width, height, &rgb)?,
    };
    let resume = Resume {
        after_pass: done,
        latent,
    };
    let mut writer = Writer::new(Sink::files(template), &job);
    let (seed, subseed) = (job.profile.seed, job.profile.subseed);
    let result = job.run_passes(seed, Some(&resume), until)?;
    let image = Image {
        n: 0,
        seed,
        subseed,
        until,
    };
    writer.write(&mut job, &image, &result)?;
    Ok(writer.sink.into_paths())
}

/// Pass 1's latent for an image: the pass-1 model's VAE encoding of it.
fn encode_image(job: &mut Job<'_>, width: u32, height: u32, rgb: &[u8]) -> Result<Tensor> {
    let (model, _) = job.models.for_pass(&job.settings, &job.plans[0])?;
    let pixels = Tensor::from_slice(rgb)
        .view([height as i64, width as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        / 127.5
        - 1.0;
    let latent = model
        .encode(&pixels)
        .map_err(|e| anyhow!("encoding the image with pass 1's VAE: {e}"))?;
    Ok(latent.to_kind(Kind::Float))
}

/// Lint findings (warnings go to stderr; errors stop before anything heavy) and notes.
fn report_findings(job: &mut Job<'_>, options: &RunOptions) -> Result<()> {
    let seen = &mut HashSet::new();
    report_new_findings(job, (options.quiet, options.native_size), seen)
}

/// [`report_findings`], printing only lines not in `seen` (a grid's cells share most).
fn report_new_findings(
    job: &mut Job<'_>,
    (quiet, native_size): (bool, Option<u32>),
    seen: &mut HashSet<String>,
) -> Result<()> {
    let mut info = job.first_checkpoint_info()?;
    if let Some(size) = native_size {
        info.default_size = size;
    }
    crate::run::patches_fit(&job.plans, &info)?;
    crate::run::tiled_fit(&job.plans, &job.models)?;
    let mut findings = crate::lint::lint(&job.plans, &job.sizes, &info);
    findings.extend(crate::switch::switch_findings(
        &job.plans,
        &job.sizes,
        &job.models,
    )?);
    let mut lines: Vec<String> = findings.iter().map(ToString::to_string).collect();
    if !quiet {
        lines.extend(job.notes.iter().map(|note| format!("note: {note}")));
    }
    for line in lines {
        if seen.insert(line.clone()) {
            eprintln!("{line}");
        }
    }
    Ok(())
}

fn checkpoint_hash(job: &Job<'_>) -> Option<String> {
    match job.plans[0].merge.is_empty() {
        true => model_hash(&job.plans[0].checkpoint),
        false => None, // a merge made at load time has no file to hash
    }
}

/// Image `n` of the batch (seed `seed`, variation seed `subseed`), run up to pass `until`.
struct Image {
    n: usize,
    seed: i64,
    subseed: i64,
    until: usize,
}

/// An RGB8 image: width, height, pixels.
pub type Rgb8 = (u32, u32, Vec<u8>);

/// Where a run's images go: files under an output template, or memory.
enum Sink {
    Files {
        template: String,
        written: Vec<PathBuf>,
    },
    Memory(Vec<Rendered>),
}

impl Sink {
    fn files(template: String) -> Self {
        Sink::Files {
            template,
            written: Vec::new(),
        }
    }

    fn into_paths(self) -> Vec<PathBuf> {
        match self {
            Sink::Files { written, .. } => written,
            Sink::Memory(_) => Vec::new(),
        }
    }

    fn into_rendered(self) -> Vec<Rendered> {
        match self {
            Sink::Memory(rendered) => rendered,
            Sink::Files { .. } => Vec::new(),
        }
    }
}

/// Writes a run's images (to files or memory), keeping what it wrote.
struct Writer {
    sink: Sink,
    /// The A1111 model hash of pass 1's checkpoint.
    hash: Option<String>,
}

impl Writer {
    fn new(sink: Sink, job: &Job<'_>) -> Self {
        Self {
            sink,
            hash: checkpoint_hash(job),
        }
    }

    /// Writes image `n`'s PNG (and, with `save_passes`, its earlier passes); an image of a
    /// pass before the profile's last carries its latent. Returns the image of pass `until`.
    fn write(&mut self, job: &mut Job<'_>, image: &Image, result: &ImageResult) -> Result<Rgb8> {
        write_image(job, image, result, self.hash.as_deref(), &mut self.sink)
    }
}

fn write_image(
    job: &mut Job<'_>,
    image: &Image,
    result: &ImageResult,
    hash: Option<&str>,
    sink: &mut Sink,
) -> Result<Rgb8> {
    let mut last = None;
    // A stopped run's image is that of the last pass it reached, and it records only the
    // passes that ran (its stored latent would not be a pass's end: none is kept).
    let until = match result.interrupted {
        true => image.until.min(result.first + result.latents.len() - 1),
        false => image.until,
    };
    let mut resolved = job.image_profile(image.n);
    if result.interrupted {
        resolved.passes.truncate(until);
    }
    let resolved = toml::to_string(&resolved).context("cannot encode the resolved profile")?;
    let (plans, sizes) = (&job.plans[..until], &job.sizes[..until]);
    let seeds = ImageSeeds {
        seed: image.seed,
        subseed: image.subseed,
    };
    let used = crate::run::used_embeddings(&mut job.models, &job.settings, plans)?;
    let ti_hashes = crate::embeddings::ti_hashes(&used);
    let mut pairs = infotext_pairs(&job.profile, plans, sizes, seeds, hash, ti_hashes);
    if !result.refined {
        // A1111 names a refiner only once it took over (`apply_refiner`).
        pairs.retain(|(k, _)| {
            !matches!(
                k.as_str(),
                "Refiner" | "Refiner switch at" | "Hires refiner"
            )
        });
    }
    if let Some(weight) = result.mask_weight {
        // Before "Version", as A1111's extra generation parameters.
        let at = pairs.len().saturating_sub(1);
        pairs.insert(
            at,
            ("Conditional mask weight".into(), format!("{weight:?}")),
        ); // Python's float repr: 1.0
    }
    let prompt = infotext_prompt(&job.plans[0]);
    let parameters = infotext::format(&prompt, &job.plans[0].negative, &pairs);
    for (k, latent) in result.latents.iter().enumerate() {
        let pass = result.first + k;
        let keep = pass == until || (job.profile.save_passes && matches!(sink, Sink::Files { .. }));
        if !keep {
            continue;
        }
        let (model, _) = job.models.for_pass(&job.settings, &job.plans[pass - 1])?;
        let observer = job.models.observer;
        let pixels = timed(observer, "vae decode", || model.decode(latent)).map_err(|e| {
            out_of_memory(pass, &job.sizes[pass - 1], &e.0)
                .unwrap_or_else(|| anyhow!("pass {pass}: {e}"))
        })?;
        let (w, h, rgb) = to_rgb8(&pixels)?;
        // Inpainting: the original where the mask is 0 (A1111's overlay), every pass's image.
        let (w, h, rgb) = match &result.overlay {
            Some(overlay) => {
                let out = overlay.apply(&crate::img2img::from_rgb8(w, h, rgb));
                (out.width as u32, out.height as u32, out.data)
            }
            None => (w, h, rgb),
        };
        let stored = match pass < job.plans.len() && !result.interrupted {
            true => Some(stored_latent::encode(latent, pass)?),
            false => None,
        };
        let png = timed(observer, "png", || {
            output::encode_png(w, h, &rgb, &parameters, &resolved, stored.as_deref())
        })?;
        match sink {
            Sink::Files { template, written } => {
                let wanted = output::expand(template, image.seed, image.n);
                let path = match pass == until {
                    true => wanted,
                    false => pass_path(&wanted, pass),
                };
                written.push(output::write_new_file(&path, &png)?);
            }
            Sink::Memory(rendered) => rendered.push(Rendered {
                seed: image.seed,
                subseed: image.subseed,
                png,
                parameters: parameters.clone(),
            }),
        }
        if pass == until {
            last = Some((w, h, rgb));
        }
    }
    last.ok_or_else(|| anyhow!("pass {until} produced no image"))
}

/// One image of `profile` (its seed, batch 1) written at `path` with `models` reused (grid
/// cells; lint lines already in `seen` are not printed again). Returns the models for the
/// next cell, the written path and the image.
pub fn render_one<'r>(
    profile: Profile,
    registry: &'r Registry,
    base_dir: &Path,
    models: Models<'r>,
    path: &str,
    (quiet, seen): (bool, &mut HashSet<String>),
) -> Result<(Models<'r>, PathBuf, Rgb8)> {
    let template = output::checked_template(path)?;
    let mut job = crate::job::prepare_with(profile, registry, base_dir, models)?;
    report_new_findings(&mut job, (quiet, None), seen)?;
    let mut writer = Writer::new(Sink::files(template), &job);
    let until = job.plans.len();
    let (seed, subseed) = (job.profile.seed, job.profile.subseed);
    let result = job.run_passes(seed, None, until)?;
    let image = Image {
        n: 0,
        seed,
        subseed,
        until,
    };
    let rgb = writer.write(&mut job, &image, &result)?;
    let path = writer
        .sink
        .into_paths()
        .pop()
        .ok_or_else(|| anyhow!("nothing was written"))?;
    Ok((job.models, path, rgb))
}

fn pass_path(final_path: &Path, pass: usize) -> PathBuf {
    let stem = final_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!("{stem}-pass{pass}.png"))
}
