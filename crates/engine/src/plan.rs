//! From a profile to an executable plan: names resolved to plugin entries, sizes in latent
//! cells, and each pass's sigma schedule (README "Semantics": denoise slicing).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use host_api::{
    ModelSampling, ModelSigmas, OptionEntry, OptionValue, PatchDecl, PatchModel, SamplerDecl,
    ScheduleDecl, UpscalerDecl,
};

use crate::defaults::{self, resolved};
use crate::limits;
use crate::loras::{pass_loras, ResolvedLora};
use crate::profile::{resolve_path, Pass, PatchEntry, Profile};
use crate::prompt_schedule::{schedule, total_steps, Schedule, Steps};
use crate::registry::{find, Entry, Registry};

pub struct PassPlan<'r> {
    /// 1-based, as users count passes.
    pub number: usize,
    pub steps: usize,
    pub denoise: f64,
    pub sampler: &'r Entry<SamplerDecl>,
    pub schedule: &'r Entry<ScheduleDecl>,
    pub upscaler: Option<&'r Entry<UpscalerDecl>>,
    /// What the upscaler runs with (a model upscaler's file).
    pub upscaler_options: Vec<OptionEntry>,
    /// The upscaler's name for the infotext when it is a model file (its stem).
    pub upscaler_model: Option<String>,
    pub options: Vec<OptionEntry>,
    pub prompt: String,
    pub negative: String,
    pub cfg: f64,
    /// Flux dev's distilled guidance (`None`: the backend's default), sent to the backend in
    /// the pass's `EncodeRequest.options` under `guidance`.
    pub guidance: Option<f64>,
    pub checkpoint: PathBuf,
    pub vae: Option<PathBuf>,
    pub clip_skip: usize,
    /// The LoRA set this pass runs with (empty: the checkpoint's own weights).
    pub loras: Vec<ResolvedLora>,
    /// `[model] merge`: (checkpoint, weight), the first being `checkpoint`; empty when the pass
    /// runs one checkpoint.
    pub merge: Vec<(PathBuf, f64)>,
    /// The UNet patches this pass runs with, in order.
    pub patches: Vec<PatchPlan<'r>>,
    /// Pass 1 from an init image (img2img); `steps` is then A1111's `t_enc + 1`.
    pub img2img: Option<crate::img2img::Img2ImgPlan>,
    /// A later pass on pass 1's checkpoint whose prompts are encoded with pass 1's LoRA set
    /// (A1111's `hires_fix_use_firstpass_conds`).
    pub firstpass_conds: bool,
    /// The checkpoint that continues this pass's sampling part-way (A1111's refiner).
    pub refiner: Option<crate::refiner::RefinerPlan>,
    /// The textual-inversion embedding files prompts may name (the profile's, every pass).
    pub embeddings: Vec<host_api::EmbeddingSpec>,
    /// Tiled diffusion: the pass's denoiser runs over tiles of the latent.
    pub tiled: Option<crate::tiled::Tiled>,
}

/// One UNet patch of a pass: its plugin entry, options, and infotext fields.
pub struct PatchPlan<'r> {
    pub entry: &'r Entry<PatchDecl>,
    pub options: Vec<OptionEntry>,
    pub infotext: Vec<(String, String)>,
}

pub use crate::pass_size::PassSize;

fn option_value(table: &str, key: &str, value: &toml::Value) -> Result<OptionValue> {
    Ok(match value {
        toml::Value::Float(f) => OptionValue::Number(*f),
        toml::Value::Integer(i) => OptionValue::Number(*i as f64),
        toml::Value::Boolean(b) => OptionValue::Flag(*b),
        toml::Value::String(s) => OptionValue::Text(s.as_str().into()),
        other => bail!("{table}.{key}: {other} is not a number, string or boolean"),
    })
}

/// Pass 1's steps where the profile sets none: its checkpoint's family's own
/// ([`defaults::family_steps`]: Flux schnell's 4), the family read from the headers, before
/// [`Profile::resolve`] would fill [`defaults::STEPS`]; later passes then take pass 1's as
/// usual. A checkpoint that cannot be read is left to planning to report.
pub fn fill_family_steps(profile: &mut Profile, registry: &Registry, base_dir: &Path) {
    if profile.passes.first().is_some_and(|p| p.steps.is_some()) {
        return;
    }
    let merged = profile.model.merge.as_ref().and_then(|m| m.first());
    let checkpoint = profile
        .passes
        .first()
        .and_then(|p| p.checkpoint.clone())
        .or_else(|| profile.model.checkpoint.clone())
        .or_else(|| merged.map(|m| m.checkpoint.clone()));
    let Some(checkpoint) = checkpoint else {
        return;
    };
    let family = crate::registry::detect_backend(registry, &resolve_path(base_dir, &checkpoint));
    let Some(steps) = family
        .ok()
        .and_then(|b| defaults::family_steps(&b.decl.family))
    else {
        return;
    };
    if profile.passes.is_empty() {
        profile.passes.push(Pass::default());
    }
    profile.passes[0].steps = Some(steps);
}

/// Resolves every pass's names against the registry. `profile` must be resolved
/// ([`Profile::resolve`]; pass 1's size may still be open): no default is applied here.
pub fn plan_passes<'r>(
    profile: &Profile,
    registry: &'r Registry,
    base_dir: &Path,
) -> Result<Vec<PassPlan<'r>>> {
    let embeddings = crate::embeddings::profile_files(profile, base_dir)?;
    let merge: Vec<(PathBuf, f64)> = match &profile.model.merge {
        Some(_) if profile.model.checkpoint.is_some() => {
            bail!("[model] has both checkpoint and merge — keep one")
        }
        Some(list) if list.len() < 2 => {
            bail!("[model] merge needs at least two checkpoints, e.g. merge = [{{ checkpoint = \"a.safetensors\", weight = 0.8 }}, {{ checkpoint = \"b.safetensors\", weight = 0.2 }}]")
        }
        Some(list) => list
            .iter()
            .map(|m| (resolve_path(base_dir, &m.checkpoint), m.weight))
            .collect(),
        None => Vec::new(),
    };
    let base_checkpoint = match merge.first() {
        Some((first, _)) => first.to_string_lossy().into_owned(),
        None => profile.model.checkpoint.clone().ok_or_else(|| {
            anyhow!("no checkpoint: set [model] checkpoint = \"path\" (a Civitai .safetensors file or a diffusers folder), or run `hiresfix demo`")
        })?,
    };
    if profile.tiling && matches!(profile.vae_tiling, crate::profile::VaeTiling::On) {
        bail!("`tiling = true` (seamless output) cannot use vae_tiling = \"on\": decoding in tiles breaks the wrap-around; set vae_tiling = \"auto\" or \"off\"");
    }
    limits::check_profile(profile)?;
    let model_dirs = crate::upscaler_models::dirs(
        &profile
            .upscaler_dirs
            .iter()
            .map(|d| resolve_path(base_dir, &d.to_string_lossy()))
            .collect::<Vec<_>>(),
    );
    let mut plans = Vec::new();
    for (i, pass) in profile.passes.iter().enumerate() {
        let number = i + 1;
        let tiled = pass.tiled.and_then(|t| t.table());
        let at = |e: anyhow::Error| registry.with_refusals(e).context(format!("pass {number}"));
        let sampler_name = resolved(pass.sampler.as_deref(), number, "sampler")?;
        let (sampler, named_schedule) = find_sampler(registry, sampler_name).map_err(at)?;
        // A1111's "Automatic" schedule means the sampler's own default.
        let explicit = pass
            .schedule
            .as_ref()
            .filter(|s| !s.trim().eq_ignore_ascii_case("automatic"));
        let schedule = match (
            explicit,
            named_schedule,
            sampler.decl.default_schedule.as_str(),
        ) {
            (Some(s), _, _) => find(&registry.schedules, s, "schedule").map_err(at)?,
            (None, Some(from_name), _) => from_name,
            (None, None, "") => {
                find(&registry.schedules, defaults::SCHEDULE, "schedule").map_err(at)?
            }
            (None, None, default) => find(&registry.schedules, default, "schedule").map_err(at)?,
        };
        let (upscaler, upscaler_options, upscaler_model) = match number {
            1 => (None, Vec::new(), None),
            _ => {
                let name = resolved(pass.upscaler.as_deref(), number, "upscaler")?;
                let (entry, model) = find_upscaler(registry, &model_dirs, name).map_err(at)?;
                let options = model.as_ref().map(|m| m.options()).unwrap_or_default();
                (Some(entry), options, model.map(|m| m.label))
            }
        };
        let mut options = Vec::new();
        for (key, value) in &pass.sampler_options {
            if !sampler.decl.options.iter().any(|o| o.as_str() == key) {
                let known: Vec<&str> = sampler.decl.options.iter().map(|o| o.as_str()).collect();
                bail!(
                    "pass {number}: sampler `{}` has no option `{key}` (it reads: {})",
                    sampler.decl.name,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                );
            }
            options.push(OptionEntry {
                key: key.as_str().into(),
                value: option_value("sampler_options", key, value).map_err(at)?,
            });
        }
        let checkpoint = resolve_path(
            base_dir,
            pass.checkpoint.as_deref().unwrap_or(&base_checkpoint),
        );
        let pass_merge = match pass.checkpoint {
            Some(_) => Vec::new(),
            None => merge.clone(),
        };
        let vae = pass
            .vae
            .as_deref()
            .or(profile.model.vae.as_deref())
            .map(|v| resolve_path(base_dir, v));
        let prompt = pass
            .prompt
            .clone()
            .unwrap_or_else(|| profile.prompt.clone());
        let loras = pass_loras(profile, pass, number, &prompt, base_dir)?;
        let steps = resolved(pass.steps, number, "steps")? as usize;
        let img2img = match number {
            1 => img2img_plan(profile, pass, base_dir, steps)?,
            _ => None,
        };
        let denoise = match (number, &img2img) {
            (1, None) => 1.0, // txt2img: from pure noise
            _ => resolved(pass.denoise, number, "denoise")?,
        };
        let steps = match &img2img {
            // img2img: t_enc + 1 steps at the end of a schedule of `steps` (A1111).
            Some(_) => crate::img2img::steps_run(steps, denoise),
            None => {
                limits::schedule_steps(number, steps, denoise)?;
                // Denoise 0 upscales only: no step runs (progress and noise count none).
                if denoise == 0.0 {
                    0
                } else {
                    steps
                }
            }
        };
        let patches = pass
            .patches
            .as_ref()
            .unwrap_or(&profile.patches)
            .iter()
            .map(|p| plan_patch(registry, p))
            .collect::<Result<Vec<_>>>()
            .map_err(at)?;
        // A1111 computes a hires pass's conds early only when it keeps pass 1's checkpoint.
        let firstpass_conds = profile.hires_fix_use_firstpass_conds
            && plans
                .first()
                .is_some_and(|p: &PassPlan<'_>| p.checkpoint == checkpoint);
        // A1111 switches only to another checkpoint than the one loaded.
        let refiner = crate::refiner::plan(pass, base_dir)
            .filter(|r| r.checkpoint != checkpoint || !pass_merge.is_empty());
        plans.push(PassPlan {
            number,
            steps,
            denoise,
            sampler,
            schedule,
            upscaler,
            upscaler_options,
            upscaler_model,
            options,
            prompt,
            negative: pass
                .negative
                .clone()
                .unwrap_or_else(|| profile.negative.clone()),
            // Unset: the family's default, the checkpoint's family read from its headers (an
            // unreadable one is reported when it loads).
            cfg: match pass.cfg.or(profile.cfg) {
                Some(cfg) => cfg,
                None => crate::registry::detect_backend(registry, &checkpoint)
                    .map_or(defaults::CFG, |b| defaults::family_cfg(&b.decl.family)),
            },
            guidance: pass.guidance.or(profile.guidance),
            checkpoint,
            vae,
            clip_skip: pass.clip_skip.unwrap_or(profile.model.clip_skip) as usize,
            loras,
            merge: pass_merge,
            patches,
            img2img,
            firstpass_conds,
            refiner,
            embeddings: embeddings.clone(),
            tiled,
        });
    }
    check_plans(&plans)?;
    Ok(plans)
}

/// Pass 1's img2img settings with their defaults, paths beside the profile.
fn img2img_plan(
    profile: &Profile,
    pass: &Pass,
    base_dir: &Path,
    steps: usize,
) -> Result<Option<crate::img2img::Img2ImgPlan>> {
    let Some(init) = &pass.init_image else {
        return Ok(None);
    };
    let full_res = pass.inpaint_full_res.unwrap_or(false) && pass.mask.is_some();
    if full_res && profile.passes.len() > 1 {
        bail!("pass.1.inpaint_full_res: \"only masked\" inpainting makes an image of the init image's size, which a later pass cannot continue — drop the later passes or set inpaint_full_res = false");
    }
    Ok(Some(crate::img2img::Img2ImgPlan {
        init_image: resolve_path(base_dir, init),
        mask: pass.mask.as_deref().map(|m| resolve_path(base_dir, m)),
        mask_blur: pass.mask_blur.unwrap_or(defaults::MASK_BLUR),
        mask_invert: pass.mask_invert.unwrap_or(false),
        fill: pass.inpainting_fill.unwrap_or_default(),
        full_res,
        padding: pass
            .inpaint_full_res_padding
            .unwrap_or(defaults::INPAINT_PADDING),
        resize_mode: pass.resize_mode.unwrap_or_default(),
        mask_weight: pass
            .inpainting_mask_weight
            .unwrap_or(defaults::INPAINTING_MASK_WEIGHT),
        requested_steps: steps,
    }))
}

/// An upscaler by id or alias, else a model file in `dirs` by stem, path or A1111 name (run
/// by the `model` upscaler); the error lists both kinds.
pub(crate) fn find_upscaler<'r>(
    registry: &'r Registry,
    dirs: &[PathBuf],
    name: &str,
) -> Result<(
    &'r Entry<UpscalerDecl>,
    Option<crate::upscaler_models::ModelFile>,
)> {
    let builtin = find(&registry.upscalers, name, "upscaler");
    if let Ok(entry) = builtin {
        if entry.decl.name.as_str() != "model" {
            return Ok((entry, None));
        }
    }
    match crate::upscaler_models::find(dirs, name)? {
        Some(model) => Ok((find(&registry.upscalers, "model", "upscaler")?, Some(model))),
        None => Err(match builtin {
            Err(e) => anyhow!(
                "{e}; model files: {}",
                crate::upscaler_models::available(dirs)
            ),
            Ok(_) => anyhow!(
                "upscaler `model` runs a model file: name the file's stem instead (found: {})",
                crate::upscaler_models::available(dirs)
            ),
        }),
    }
}

/// A patch entry resolved and checked: its name, its option keys, and its options as the
/// patch itself reads them (made once without a model, so a bad value fails before loading).
fn plan_patch<'r>(registry: &'r Registry, patch: &PatchEntry) -> Result<PatchPlan<'r>> {
    let entry = find(&registry.patches, &patch.name, "patch")?;
    let decl = &entry.decl;
    let mut options = Vec::new();
    for (key, value) in &patch.options {
        if !decl.options.iter().any(|o| o.as_str() == key) {
            let known: Vec<&str> = decl.options.iter().map(|o| o.as_str()).collect();
            bail!(
                "patch `{}` has no option `{key}` (it reads: {})",
                decl.name,
                match known.is_empty() {
                    true => "none".to_owned(),
                    false => known.join(", "),
                }
            );
        }
        options.push(OptionEntry {
            key: key.as_str().into(),
            value: option_value(&format!("patch {}", decl.name), key, value)?,
        });
    }
    let probe = PatchModel {
        family: "".into(),
        sigmas: Default::default(),
        extra: Default::default(),
    };
    let made = decl
        .create(&options, &probe)
        .and_then(|p| p.infotext())
        .map_err(|e| anyhow!("patch `{}` ({}): {e}", decl.name, entry.file.display()))?;
    Ok(PatchPlan {
        entry,
        options,
        infotext: made,
    })
}

/// A sampler by id or alias; A1111's combined names ("DPM++ 2M Karras") also name a schedule.
pub fn find_sampler<'r>(
    registry: &'r Registry,
    name: &str,
) -> Result<(&'r Entry<SamplerDecl>, Option<&'r Entry<ScheduleDecl>>)> {
    let direct = find(&registry.samplers, name, "sampler");
    if let Ok(sampler) = direct {
        return Ok((sampler, None));
    }
    let lower = name.trim().to_lowercase();
    for schedule in &registry.schedules {
        let names = std::iter::once(schedule.decl.name.as_str())
            .chain(schedule.decl.aliases.iter().map(|a| a.as_str()));
        for suffix in names {
            let Some(prefix) = lower.strip_suffix(&format!(" {}", suffix.to_lowercase())) else {
                continue;
            };
            if let Ok(sampler) = find(&registry.samplers, prefix, "sampler") {
                return Ok((sampler, Some(schedule)));
            }
        }
    }
    direct.map(|s| (s, None))
}

fn round_to(value: f64, factor: u32) -> u32 {
    ((value as u32) / factor).max(1) * factor
}

/// Pixel and latent sizes of every pass of a resolved profile ([`Profile::resolve`], pass 1's
/// size included). Sizes are rounded down to multiples of the VAE factor; each rounding is
/// returned as a note for the user. A pass over the size limit is an error.
pub fn pass_sizes(passes: &[Pass], factor: u32) -> Result<(Vec<PassSize>, Vec<String>)> {
    let mut sizes: Vec<PassSize> = Vec::new();
    let mut notes = Vec::new();
    for (i, pass) in passes.iter().enumerate() {
        let (w, h, cover) = match sizes.last() {
            None => (
                resolved(pass.width, 1, "width")? as f64,
                resolved(pass.height, 1, "height")? as f64,
                None,
            ),
            Some(prev) => {
                let (pw, ph) = (prev.width as f64, prev.height as f64);
                match (pass.width, pass.height, pass.scale) {
                    (Some(w), Some(h), _) => {
                        let s = (w as f64 / pw).max(h as f64 / ph);
                        (w as f64, h as f64, Some((pw * s, ph * s)))
                    }
                    (Some(w), None, _) => (w as f64, ph * w as f64 / pw, None),
                    (None, Some(h), _) => (pw * h as f64 / ph, h as f64, None),
                    (None, None, s) => {
                        let s = resolved(s, i + 1, "scale")?;
                        (pw * s, ph * s, None)
                    }
                }
            }
        };
        limits::side(i + 1, w, h)?;
        if let Some((cw, ch)) = cover {
            limits::side(i + 1, cw, ch)?;
        }
        let (rw, rh) = (round_to(w, factor), round_to(h, factor));
        if (rw as f64 - w).abs() >= 1.0 || (rh as f64 - h).abs() >= 1.0 {
            notes.push(format!(
                "pass {}: {}x{} rounded to {rw}x{rh} (multiples of {factor})",
                i + 1,
                w as u32,
                h as u32
            ));
        }
        let (cw, ch) = cover.map_or((rw, rh), |(cw, ch)| {
            (round_to(cw, factor).max(rw), round_to(ch, factor).max(rh))
        });
        let f = factor as i64;
        sizes.push(PassSize {
            width: rw,
            height: rh,
            latent_w: rw as i64 / f,
            latent_h: rh as i64 / f,
            cover_w: cw as i64 / f,
            cover_h: ch as i64 / f,
        });
    }
    Ok((sizes, notes))
}

/// The sigmas a pass runs: `steps + 1` of them. A pass with `denoise < 1` builds the schedule
/// for `int(steps / denoise)` steps and keeps the tail (A1111 / ComfyUI). Samplers that drop the
/// penultimate sigma get one extra step first, as A1111 does.
pub fn pass_sigmas(plan: &PassPlan<'_>, model: &ModelSigmas) -> Result<Vec<f64>> {
    if plan.denoise == 0.0 && plan.img2img.is_none() {
        // A1111's zero-strength hires pass: `get_sigmas(0)` is `[0]`, no step runs.
        return Ok(vec![0.0]);
    }
    let total = match &plan.img2img {
        // A1111's img2img: a schedule of the steps asked for (`sample_img2img`).
        Some(i2i) => i2i.requested_steps,
        None => limits::schedule_steps(plan.number, plan.steps, plan.denoise)?,
    };
    let discard = plan.sampler.decl.discard_penultimate_sigma;
    let mut sigmas = plan
        .schedule
        .decl
        .run(model, total + usize::from(discard))
        .map_err(|e| {
            anyhow!(
                "schedule `{}` ({}): {e}",
                plan.schedule.decl.name,
                plan.schedule.file.display()
            )
        })?;
    if discard {
        let last = sigmas.len() - 1;
        sigmas.remove(last - 1);
    }
    let keep = plan.steps + 1;
    sigmas.drain(..sigmas.len() - keep);
    if sigmas.iter().any(|s| !s.is_finite() || *s < 0.0) {
        bail!(
            "schedule `{}` returned a negative or non-finite sigma",
            plan.schedule.decl.name
        );
    }
    Ok(sigmas)
}

/// A pass's sampler against the model's sampling: a sampler without a rectified-flow form
/// (`Sampler::SERVES_FLOW`) is refused for a flow model, in one line naming both and the fix.
pub fn check_sampler_serves(
    plan: &PassPlan<'_>,
    sampling: &ModelSampling,
    family: &str,
) -> Result<()> {
    if !sampling.is_flow() || plan.sampler.decl.serves_flow {
        return Ok(());
    }
    bail!(
        "pass {}: sampler `{}` has no form for the flow-matching model ({family}, {}); use sampler = \"euler\" (README \"Flow-matching models\" lists the others)",
        plan.number,
        plan.sampler.decl.name,
        sampling.describe()
    )
}

/// What pass `i` (0-based) of `plans` counts: pass 1 its own steps (an img2img pass the steps
/// asked for, as A1111's `p.steps`, of which it runs the last ones), every later pass A1111's
/// hires rule with pass 1's count as the base; each times its sampler's denoiser calls.
pub fn pass_steps(plans: &[PassPlan<'_>], i: usize) -> Steps {
    let first = &plans[0];
    let first_steps = first
        .img2img
        .as_ref()
        .map_or(first.steps, |p| p.requested_steps);
    let base = total_steps(first_steps, &first.sampler.decl.name);
    let hires = (i > 0).then(|| total_steps(plans[i].steps, &plans[i].sampler.decl.name));
    Steps { base, hires }
}

/// Pass `i`'s negative and prompt schedules, each refused in one line naming the pass.
pub fn prompt_schedules(plans: &[PassPlan<'_>], i: usize) -> Result<(Schedule, Schedule)> {
    let plan = &plans[i];
    let steps = pass_steps(plans, i);
    let at = |what: &str, e: anyhow::Error| anyhow!("pass {} {what}: {e}", plan.number);
    let negative = schedule(&plan.negative, steps).map_err(|e| at("negative", e))?;
    let prompt = schedule(&plan.prompt, steps).map_err(|e| at("prompt", e))?;
    Ok((negative, prompt))
}

/// Every pass's schedules checked before anything loads (`check` and `generate`).
fn check_plans(plans: &[PassPlan<'_>]) -> Result<()> {
    (0..plans.len()).try_for_each(|i| prompt_schedules(plans, i).map(drop))
}
