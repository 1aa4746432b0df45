//! The hires-fix run: pass 1 txt2img, then upscale + partial re-denoise per later pass.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{anyhow, bail, Context, Result};
use host_api::backend::device_name;
use host_api::tch::{self, Device, Kind, Tensor};
use host_api::{
    EncodeRequest, LoadRequest, ModelBox, ModelInfo, ModelSigmas, SamplerCallbacks, VaeCallbacks,
};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::infotext;
use crate::noise::{initial_noise, StepNoise};
use crate::output;
use crate::plan::{pass_sigmas, pass_sizes, plan_passes, PassPlan, PassSize};
use crate::profile::{DeviceChoice, DtypeChoice, Profile, VaeTiling};
use crate::registry::{display_name, Registry};

pub struct RunOptions {
    pub quiet: bool,
    /// `-o PATH`: replaces the profile's output template.
    pub output: Option<String>,
    /// Folder relative model paths are looked up in (the profile's).
    pub base_dir: PathBuf,
}

pub fn device_of(choice: &DeviceChoice) -> Device {
    match choice {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(n) => Device::Cuda(*n),
    }
}

fn dtype_name(choice: DtypeChoice, device: Device) -> &'static str {
    match (choice, device) {
        (DtypeChoice::Fp32, _) | (DtypeChoice::Auto, Device::Cpu) => "fp32",
        (DtypeChoice::Fp16, _) | (DtypeChoice::Auto, _) => "fp16",
        (DtypeChoice::Bf16, _) => "bf16",
    }
}

/// What identifies a loaded model: checkpoint, VAE override, merge recipe.
type ModelKey = (PathBuf, Option<PathBuf>, String);

/// Loaded models by checkpoint (and VAE), shared between passes.
pub struct Models<'r> {
    registry: &'r Registry,
    device: String,
    dtype: String,
    vae_tiling: (String, u32, u32),
    /// `[model] prediction`, empty to detect.
    prediction: String,
    /// Warnings already shown (a LoRA's stray layers), so each shows once per run.
    warned: std::collections::HashSet<String>,
    loaded: HashMap<ModelKey, (Rc<ModelBox>, ModelInfo)>,
}

impl<'r> Models<'r> {
    pub fn new(registry: &'r Registry, device: Device, dtype: &str, profile: &Profile) -> Self {
        let tiling = match profile.vae_tiling {
            VaeTiling::Auto => "auto",
            VaeTiling::On => "on",
            VaeTiling::Off => "off",
        };
        Self {
            registry,
            device: device_name(device),
            dtype: dtype.into(),
            vae_tiling: (
                tiling.into(),
                profile.vae_tile_size,
                profile.vae_tile_overlap,
            ),
            prediction: profile
                .model
                .prediction
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            loaded: HashMap::new(),
            warned: Default::default(),
        }
    }

    /// Prints each warning the first time it comes up.
    pub fn warn_once(&mut self, warnings: Vec<String>) {
        for warning in warnings {
            if self.warned.insert(warning.clone()) {
                eprintln!("warning: {warning}");
            }
        }
    }

    pub fn get(
        &mut self,
        checkpoint: &Path,
        vae: Option<&Path>,
        merge: &[(PathBuf, f64)],
    ) -> Result<(Rc<ModelBox>, ModelInfo)> {
        let recipe: Vec<String> = merge
            .iter()
            .map(|(p, w)| format!("{}:{w}", p.display()))
            .collect();
        let key = (
            checkpoint.to_path_buf(),
            vae.map(Path::to_path_buf),
            recipe.join("+"),
        );
        if let Some(found) = self.loaded.get(&key) {
            return Ok(found.clone());
        }
        let backend = detect_backend(self.registry, checkpoint)?;
        log::info!("loading checkpoint {}", checkpoint.display());
        let request = LoadRequest {
            checkpoint: checkpoint.to_string_lossy().as_ref().into(),
            vae: vae.map(|v| v.to_string_lossy().as_ref().into()).into(),
            device: self.device.as_str().into(),
            dtype: self.dtype.as_str().into(),
            vae_tiling: self.vae_tiling.0.as_str().into(),
            vae_tile_size: self.vae_tiling.1,
            vae_tile_overlap: self.vae_tiling.2,
            prediction: self.prediction.as_str().into(),
            merge: merge
                .iter()
                .map(|(path, weight)| host_api::MergeInput {
                    path: path.to_string_lossy().as_ref().into(),
                    weight: *weight,
                })
                .collect(),
        };
        // A backend's own errors name the checkpoint; a panic needs the plugin named.
        let plugin = |e: host_api::Error| match e.0.starts_with("panicked") {
            true => anyhow!(
                "{e} (backend `{}`, plugin {})",
                backend.decl.family,
                backend.file.display()
            ),
            false => anyhow!("{e}"),
        };
        let model = backend.decl.run_load(&request).map_err(plugin)?;
        let info = model.info().map_err(plugin)?;
        let entry = (Rc::new(model), info);
        self.loaded.insert(key, entry.clone());
        Ok(entry)
    }
}

/// The backend whose family reads `checkpoint`.
pub fn detect_backend<'r>(
    registry: &'r Registry,
    checkpoint: &Path,
) -> Result<&'r crate::registry::Entry<host_api::BackendDecl>> {
    if !checkpoint.exists() {
        bail!(
            "checkpoint {} not found; check [model] checkpoint in the profile",
            checkpoint.display()
        );
    }
    if registry.backends.is_empty() {
        let e = anyhow!("no model backend plugin was found; see `hiresfix plugins`");
        return Err(registry.with_refusals(e));
    }
    let mut refusal = None;
    for entry in &registry.backends {
        match entry.decl.run_detect(checkpoint) {
            Ok(Some(_)) => return Ok(entry),
            Ok(None) => continue,
            Err(e) => refusal = refusal.or(Some(e)),
        }
    }
    if let Some(e) = refusal {
        bail!("{e}");
    }
    let families: Vec<&str> = registry
        .backends
        .iter()
        .map(|b| b.decl.family.as_str())
        .collect();
    bail!(
        "no backend reads {} (families available: {})",
        checkpoint.display(),
        families.join(", ")
    )
}

/// Set by Ctrl-C: the running sampler stops at its next step and nothing is written.
pub static CANCELLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// CFG over the backend's predictions, the image's step noise, and the progress bar.
struct Guidance<'a> {
    model: &'a ModelBox,
    uncond: &'a [Tensor],
    cond: &'a [Tensor],
    cfg: f64,
    noise: StepNoise,
    bar: &'a ProgressBar,
}

impl SamplerCallbacks for Guidance<'_> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> host_api::Result<Tensor> {
        if self.cfg == 1.0 {
            let mut out = self.model.denoise(x, sigma, &[self.cond])?;
            return Ok(out.remove(0));
        }
        let out = self.model.denoise(x, sigma, &[self.uncond, self.cond])?;
        Ok(&out[0] + (&out[1] - &out[0]) * self.cfg)
    }

    fn noise_like(&mut self, x: &Tensor) -> host_api::Result<Tensor> {
        Ok(self.noise.next_like(x))
    }

    fn step(&mut self, i: usize, _total: usize) -> bool {
        self.bar.set_position(i as u64 + 1);
        !CANCELLED.load(std::sync::atomic::Ordering::Relaxed)
    }
}

struct Vae<'a>(&'a ModelBox);

impl VaeCallbacks for Vae<'_> {
    fn decode(&mut self, latent: &Tensor) -> host_api::Result<Tensor> {
        self.0.decode(latent)
    }
    fn encode(&mut self, image: &Tensor) -> host_api::Result<Tensor> {
        self.0.encode(image)
    }
}

fn progress_bar(quiet: bool, steps: usize, label: String) -> ProgressBar {
    let target = if quiet {
        ProgressDrawTarget::hidden()
    } else {
        ProgressDrawTarget::stderr()
    };
    let bar = ProgressBar::with_draw_target(Some(steps as u64), target);
    let style =
        ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(label);
    bar
}

/// Decoded image as RGB8, A1111's `clamp((x + 1) / 2, 0, 1) * 255` truncated to u8. NaN or
/// infinite pixels are an error: clamping would turn them into a black image.
pub fn to_rgb8(pixels: &Tensor) -> Result<(u32, u32, Vec<u8>)> {
    let finite = bool::try_from(pixels.isfinite().all()).unwrap_or(false);
    if !finite {
        bail!("the decoded image has NaN or infinite values (the model, VAE or prompt conditioning overflowed), so it was not written — try dtype = \"fp32\", another VAE, or check the checkpoint");
    }
    let image =
        ((pixels.to_device(Device::Cpu).to_kind(Kind::Float) + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0;
    let image = image
        .to_kind(Kind::Uint8)
        .squeeze_dim(0)
        .permute([1, 2, 0])
        .contiguous();
    let size = image.size();
    let (h, w) = (size[0] as u32, size[1] as u32);
    let bytes = Vec::<u8>::try_from(image.flatten(0, -1)).context("cannot read decoded pixels")?;
    Ok((w, h, bytes))
}

/// Per-image outputs: the final latent and, with `save_passes`, every earlier pass's latent.
pub struct ImageResult {
    pub latents: Vec<Tensor>,
}

/// Runs every pass for one image.
pub fn run_image(
    plans: &[PassPlan<'_>],
    sizes: &[PassSize],
    models: &mut Models<'_>,
    seed: i64,
    noise_seed_delta: i64,
    quiet: bool,
) -> Result<ImageResult> {
    let mut latents: Vec<Tensor> = Vec::new();
    let mut family: Option<String> = None;
    for (plan, size) in plans.iter().zip(sizes) {
        let (model, info) = models.get(&plan.checkpoint, plan.vae.as_deref(), &plan.merge)?;
        if let Some(f) = &family {
            if *f != info.family.as_str() {
                bail!("pass {}: checkpoint {} is {} but earlier passes are {f}; a pass may only switch to a checkpoint of the same family", plan.number, plan.checkpoint.display(), info.family);
            }
        }
        family = Some(info.family.to_string());
        let device = latent_device(&info);
        let table = ModelSigmas::new(info.sigmas.to_vec())
            .map_err(|e| anyhow!("model sigma table: {e}"))?;
        let sigmas = pass_sigmas(plan, &table)?;
        let shape = [info.latent_channels as i64, size.latent_h, size.latent_w];
        let noise = initial_noise(seed, &shape).unsqueeze(0).to_device(device);
        let x = match latents.last() {
            None => noise * sigmas[0],
            Some(prev) => {
                let upscaler = plan
                    .upscaler
                    .ok_or_else(|| anyhow!("pass {} has no upscaler", plan.number))?;
                let mut vae = Vae(&model);
                let up = upscaler
                    .decl
                    .run(&mut vae, prev, size.cover_h, size.cover_w)
                    .map_err(|e| {
                        let file = &upscaler.file;
                        plugin_error(plan.number, size, "upscaler", &upscaler.decl.name, file, e)
                    })?;
                let up = centre_crop(&up, size.latent_h, size.latent_w);
                check_finite(&up, &model, plan.number, "the upscaled latent")?;
                up + noise * sigmas[0]
            }
        };
        let specs: Vec<host_api::LoraSpec> = plan.loras.iter().map(|l| l.spec()).collect();
        let warnings = model
            .set_loras(&specs)
            .map_err(|e| anyhow!("pass {}: {e}", plan.number))?;
        models.warn_once(warnings);
        // Each pass conditions on its own size (SDXL's size ids, as A1111's hires pass).
        let request = EncodeRequest::pair(
            &plan.negative,
            &plan.prompt,
            plan.clip_skip,
            size.width,
            size.height,
        );
        let conds = model
            .encode_prompts(&request)
            .map_err(|e| anyhow!("pass {}: encoding the prompt: {e}", plan.number))?;
        let bar = progress_bar(quiet, plan.steps, format!("pass {}", plan.number));
        let mut guidance = Guidance {
            model: &model,
            uncond: &conds[0],
            cond: &conds[1],
            cfg: plan.cfg,
            noise: StepNoise::start(seed + noise_seed_delta),
            bar: &bar,
        };
        let out = plan
            .sampler
            .decl
            .run(&mut guidance, &plan.options, x, &sigmas)
            .map_err(|e| {
                let (name, file) = (&plan.sampler.decl.name, &plan.sampler.file);
                plugin_error(plan.number, size, "sampler", name, file, e)
            })?;
        bar.finish();
        check_finite(&out, &model, plan.number, "the UNet's result")?;
        latents.push(out);
    }
    Ok(ImageResult { latents })
}

fn plugin_error(
    pass: usize,
    size: &PassSize,
    kind: &str,
    name: &str,
    file: &Path,
    e: host_api::Error,
) -> anyhow::Error {
    if CANCELLED.load(std::sync::atomic::Ordering::Relaxed) {
        return anyhow!("cancelled (Ctrl-C) during pass {pass}");
    }
    out_of_memory(pass, size, &e.0).unwrap_or_else(|| {
        anyhow!(
            "pass {pass}: {kind} `{name}` (plugin {}): {e}",
            file.display()
        )
    })
}

/// Running out of memory, anywhere in a pass, as one line with the size and what to change.
fn out_of_memory(pass: usize, size: &PassSize, message: &str) -> Option<anyhow::Error> {
    let lower = message.to_lowercase();
    let oom = lower.contains("out of memory") || lower.contains("not enough memory");
    oom.then(|| {
        anyhow!(
            "out of memory in pass {pass} at {}x{} — lower the size, use dtype = \"fp16\" or \"bf16\", set vae_tiling = \"on\", or use a device with more memory",
            size.width,
            size.height
        )
    })
}

/// NaN or inf in a pass's latent is an error that says whether the checkpoint's weights are
/// the cause; such a latent is never decoded into an image.
fn check_finite(latent: &Tensor, model: &ModelBox, pass: usize, what: &str) -> Result<()> {
    let finite = bool::try_from(latent.isfinite().all()).unwrap_or(false);
    if finite {
        return Ok(());
    }
    let cause = model
        .nonfinite_cause()
        .unwrap_or_else(|e| format!("the model could not say why ({e})"));
    bail!("pass {pass}: {what} holds NaN or inf — {cause}")
}

fn latent_device(info: &ModelInfo) -> Device {
    host_api::backend::parse_device(info.device.as_str()).unwrap_or(Device::Cpu)
}

/// Centre crop of a `[B, C, H, W]` latent to `h × w` (no-op when it already fits).
fn centre_crop(x: &Tensor, h: i64, w: i64) -> Tensor {
    let size = x.size();
    let (ch, cw) = (size[2], size[3]);
    if ch == h && cw == w {
        return x.shallow_clone();
    }
    x.narrow(2, (ch - h) / 2, h).narrow(3, (cw - w) / 2, w)
}

/// A number as A1111 prints it: `7`, `7.5`, `0.35`.
pub fn num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The A1111 `parameters` pairs for one image.
pub fn infotext_pairs(
    profile: &Profile,
    plans: &[PassPlan<'_>],
    sizes: &[PassSize],
    seed: i64,
    model_hash: Option<&str>,
) -> Vec<(String, String)> {
    let first = &plans[0];
    let mut pairs: Vec<(String, String)> = vec![
        ("Steps".into(), first.steps.to_string()),
        ("Sampler".into(), display_name(&first.sampler.decl)),
        ("Schedule type".into(), display_name(&first.schedule.decl)),
        ("CFG scale".into(), num(first.cfg)),
        ("Seed".into(), seed.to_string()),
        (
            "Size".into(),
            format!("{}x{}", sizes[0].width, sizes[0].height),
        ),
    ];
    if let Some(hash) = model_hash {
        pairs.push(("Model hash".into(), hash.to_owned()));
    }
    let model = match first.merge.is_empty() {
        true => model_name(&first.checkpoint),
        // A merge from the profile: its recipe, as a merged file's name would stand for it.
        false => first
            .merge
            .iter()
            .map(|(path, weight)| format!("{} {}", model_name(path), num(*weight)))
            .collect::<Vec<_>>()
            .join(" + "),
    };
    pairs.push(("Model".into(), model));
    if let Some(hashes) = lora_hashes(plans) {
        pairs.push(("Lora hashes".into(), hashes));
    }
    if first.clip_skip > 1 {
        pairs.push(("Clip skip".into(), first.clip_skip.to_string()));
    }
    for (i, (plan, size)) in plans.iter().zip(sizes).enumerate().skip(1) {
        let p = if i == 1 {
            "Hires".to_owned()
        } else {
            format!("Hires {i}")
        };
        let pass = &profile.passes[i];
        if i == 1 {
            pairs.push(("Denoising strength".into(), num(plan.denoise)));
        } else {
            pairs.push((format!("{p} denoising strength"), num(plan.denoise)));
        }
        match pass.scale {
            Some(s) if pass.width.is_none() && pass.height.is_none() => {
                pairs.push((format!("{p} upscale"), num(s)))
            }
            _ => pairs.push((
                format!("{p} resize"),
                format!("{}x{}", size.width, size.height),
            )),
        }
        pairs.push((format!("{p} steps"), plan.steps.to_string()));
        if let Some(up) = plan.upscaler {
            pairs.push((format!("{p} upscaler"), display_name(&up.decl)));
        }
        if plan.checkpoint != first.checkpoint {
            pairs.push((format!("{p} checkpoint"), model_name(&plan.checkpoint)));
        }
        if plan.sampler.decl.name != first.sampler.decl.name {
            pairs.push((format!("{p} sampler"), display_name(&plan.sampler.decl)));
        }
        if plan.schedule.decl.name != first.schedule.decl.name {
            pairs.push((
                format!("{p} schedule type"),
                display_name(&plan.schedule.decl),
            ));
        }
        let prompt = infotext_prompt(plan);
        if prompt != infotext_prompt(first) {
            pairs.push((format!("{p} prompt"), prompt));
        }
        if plan.negative != first.negative {
            pairs.push((format!("{p} negative prompt"), plan.negative.clone()));
        }
        if plan.cfg != first.cfg {
            pairs.push((format!("{p} CFG Scale"), num(plan.cfg)));
        }
    }
    if profile.eta_noise_seed_delta != 0 {
        pairs.push(("ENSD".into(), profile.eta_noise_seed_delta.to_string()));
    }
    pairs.push((
        "Version".into(),
        format!("hiresfix {}", env!("CARGO_PKG_VERSION")),
    ));
    pairs
}

/// A1111's `Lora hashes`: `name: hash` of every LoRA any pass used, once each.
fn lora_hashes(plans: &[PassPlan<'_>]) -> Option<String> {
    let mut seen = Vec::new();
    let mut parts = Vec::new();
    for lora in plans.iter().flat_map(|p| &p.loras) {
        if seen.contains(&&lora.path) {
            continue;
        }
        seen.push(&lora.path);
        let hash = crate::loras::short_hash(&lora.path).unwrap_or_else(|_| "unknown".into());
        parts.push(format!("{}: {hash}", lora.name));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The prompt as the infotext shows it: a LoRA the profile lists (rather than a tag in the
/// prompt) is written as its A1111 tag, so A1111 and Civitai see it.
pub fn infotext_prompt(plan: &PassPlan<'_>) -> String {
    let mut prompt = plan.prompt.clone();
    for lora in plan.loras.iter().filter(|l| !l.from_tag) {
        prompt.push(' ');
        prompt.push_str(&lora.tag());
    }
    prompt
}

fn model_name(checkpoint: &Path) -> String {
    checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A1111's "Model hash": the first 10 hex digits of the file's sha256 (none for a folder).
pub fn model_hash(checkpoint: &Path) -> Option<String> {
    if !checkpoint.is_file() {
        return None;
    }
    let hex = crate::registry::sha256_hex(checkpoint).ok()?;
    Some(hex[..10].to_owned())
}

/// A profile made ready to run: models loaded, names resolved, sizes known.
pub struct Job<'r> {
    pub profile: Profile,
    pub plans: Vec<PassPlan<'r>>,
    pub sizes: Vec<PassSize>,
    pub models: Models<'r>,
    /// Size roundings and other things the user should know.
    pub notes: Vec<String>,
}

/// Resolves names (before any model load, so a typo fails fast), loads the first pass's model,
/// fills defaults from it and computes every pass's size.
pub fn prepare<'r>(
    mut profile: Profile,
    registry: &'r Registry,
    base_dir: &Path,
) -> Result<Job<'r>> {
    let device = device_of(&profile.device);
    if matches!(device, Device::Cuda(_)) && !tch::Cuda::is_available() {
        bail!(
            "device {} requested but CUDA is not available here; set device = \"cpu\" or \"auto\"",
            device_name(device)
        );
    }
    let mut probe = profile.clone();
    probe.resolve_defaults(512)?;
    let first = plan_passes(&probe, registry, base_dir)?;
    // Families must match across passes: refused now, before any model loads or samples.
    crate::switch::check_families(&first, registry)?;
    let mut models = Models::new(
        registry,
        device,
        dtype_name(profile.dtype, device),
        &profile,
    );
    let p0 = &first[0];
    let (_, info) = models.get(&p0.checkpoint, p0.vae.as_deref(), &p0.merge)?;
    profile.resolve_defaults(info.default_size)?;
    if profile.seed == -1 {
        profile.seed = random_seed();
    }
    let plans = plan_passes(&profile, registry, base_dir)?;
    let (sizes, notes) = pass_sizes(&profile.passes, info.vae_scale_factor)?;
    Ok(Job {
        profile,
        plans,
        sizes,
        models,
        notes,
    })
}

impl Job<'_> {
    pub fn run_image(&mut self, seed: i64, quiet: bool) -> Result<ImageResult> {
        run_image(
            &self.plans,
            &self.sizes,
            &mut self.models,
            seed,
            self.profile.eta_noise_seed_delta,
            quiet,
        )
    }

    /// The profile that reproduces image `n` alone (seed + n, batch 1, sizes and paths
    /// spelled out), for the PNG's second chunk and `replay`: generation settings only, no
    /// plugin folders, pins or output path (a PNG travels; see [`Profile::untrusted`]).
    pub fn image_profile(&self, n: usize) -> Profile {
        let mut p = self.profile.clone().untrusted();
        p.seed = self.profile.seed + n as i64;
        p.batch = 1;
        for (i, pass) in p.passes.iter_mut().enumerate() {
            if i == 0 {
                pass.width = Some(self.sizes[0].width);
                pass.height = Some(self.sizes[0].height);
            }
            pass.checkpoint = pass
                .checkpoint
                .as_ref()
                .map(|_| absolute(&self.plans[i].checkpoint));
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

/// `generate`: every image of the batch, written as PNG. Returns the written paths.
pub fn generate(
    profile: Profile,
    registry: &Registry,
    options: &RunOptions,
) -> Result<Vec<PathBuf>> {
    let template = output::checked_template(options.output.as_deref().unwrap_or(&profile.output))?;
    let mut job = prepare(profile, registry, &options.base_dir)?;
    for warning in crate::switch::switch_warnings(&job.plans, registry)? {
        eprintln!("warning: {warning}");
    }
    if !options.quiet {
        for note in &job.notes {
            eprintln!("note: {note}");
        }
    }
    let hash = match job.plans[0].merge.is_empty() {
        true => model_hash(&job.plans[0].checkpoint),
        false => None, // a merge made at load time has no file to hash
    };
    let mut written = Vec::new();
    let batch = job.profile.batch as usize;
    for n in 0..batch {
        write_image(
            &mut job,
            n,
            &template,
            hash.as_deref(),
            options.quiet,
            &mut written,
        )
        .map_err(|e| anyhow!("{e}; {}", output::written_so_far(&written, batch)))?;
    }
    Ok(written)
}

/// Runs image `n` of the batch and writes its PNG (and, with `save_passes`, its earlier passes).
fn write_image(
    job: &mut Job<'_>,
    n: usize,
    template: &str,
    hash: Option<&str>,
    quiet: bool,
    written: &mut Vec<PathBuf>,
) -> Result<()> {
    {
        let seed = job.profile.seed + n as i64;
        let result = job.run_image(seed, quiet)?;
        let resolved =
            toml::to_string(&job.image_profile(n)).context("cannot encode the resolved profile")?;
        let pairs = infotext_pairs(&job.profile, &job.plans, &job.sizes, seed, hash);
        let prompt = infotext_prompt(&job.plans[0]);
        let parameters = infotext::format(&prompt, &job.plans[0].negative, &pairs);
        let last = job.plans.len() - 1;
        let wanted = output::expand(template, seed, n);
        for (i, latent) in result.latents.iter().enumerate() {
            if i != last && !job.profile.save_passes {
                continue;
            }
            let (model, _) = job.models.get(
                &job.plans[i].checkpoint,
                job.plans[i].vae.as_deref(),
                &job.plans[i].merge,
            )?;
            let pixels = model.decode(latent).map_err(|e| {
                let size = &job.sizes[i];
                out_of_memory(i + 1, size, &e.0).unwrap_or_else(|| anyhow!("pass {}: {e}", i + 1))
            })?;
            let (w, h, rgb) = to_rgb8(&pixels)?;
            let png = output::encode_png(w, h, &rgb, &parameters, &resolved)?;
            let path = if i == last {
                wanted.clone()
            } else {
                pass_path(&wanted, i + 1)
            };
            written.push(output::write_new_file(&path, &png)?);
        }
    }
    Ok(())
}

fn pass_path(final_path: &Path, pass: usize) -> PathBuf {
    let stem = final_path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    final_path.with_file_name(format!("{stem}-pass{pass}.png"))
}

fn random_seed() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    (nanos % 4_294_967_295) as i64
}
