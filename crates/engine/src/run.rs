//! Running the passes of one image: pass 1 from seeded noise, every later pass from the
//! upscaled latent of the one before plus its own noise, each with its LoRA set, conditioning
//! and sampler; CFG around the backend's denoiser, and the caller's observer told of every
//! step (which may stop the run).
use std::path::Path;
use std::rc::Rc;

use anyhow::{anyhow, bail, Context, Result};
use host_api::tch::{Device, Kind, Tensor};
use host_api::{
    EncodeRequest, ModelBox, ModelInfo, ModelSampling, PassSigmas, PatchModel, SamplerCallbacks,
    VaeCallbacks,
};

use crate::models::{LoadSettings, Models};
use crate::noise::{batch_noise, ImageSeeds, NoiseSettings, StepNoise};
use crate::observer::{timed, Observer};
use crate::plan::{pass_sigmas, PassPlan, PassSize};
use crate::prompt_schedule::Schedule;
use crate::seamless::wrapped_upscale;
use crate::tiled::Tiler;

/// CFG over the backend's predictions, the image's step noise, and the observer's steps.
struct Guidance<'a> {
    model: &'a ModelBox,
    conds: PassConds<'a>,
    /// The pass's refiner, until it takes over (then `model` and `conds` are its own).
    refiner: Option<Handover<'a>>,
    cfg: f64,
    noise: StepNoise,
    observer: &'a dyn Observer,
    /// The pass's live previews and the last denoised prediction (the prompt's).
    preview: crate::live_preview::PassPreview<'a>,
    last: Option<Tensor>,
    /// What the last call returned (after CFG and the mask blend): the image as far as it
    /// got when the run is stopped (A1111's `sampler.last_latent`).
    denoised: Option<Tensor>,
    /// Inpainting: the init latent and the latent mask (1 repaints); each denoised result is
    /// `init * (1 - nmask) + nmask * denoised` (A1111 `sd_samplers_cfg_denoiser`).
    blend: Option<&'a (Tensor, Tensor)>,
    /// Tiled diffusion: the model runs over these tiles of the latent.
    tiler: Option<crate::tiled::Tiler>,
    /// The model's sampling at this pass's size (discrete, or flow with its shift).
    sampling: &'a ModelSampling,
}

/// A1111's latent mask blend: the init latent where `nmask` is 0.
fn blend((init, nmask): &(Tensor, Tensor), denoised: &Tensor) -> Tensor {
    init * (1.0 - nmask) + nmask * denoised
}

/// A pass's refiner and what it needs to take over: its model, its conditionings (the same
/// texts in the same order as the pass's), the pass model's sigma table, and `switch_at`.
struct Handover<'a> {
    model: &'a ModelBox,
    conds: &'a [Vec<Tensor>],
    table: &'a [f64],
    switch_at: f64,
}

impl Guidance<'_> {
    /// The model's denoised predictions, over the pass's tiles when it has them.
    fn model_denoise(
        &self,
        x: &Tensor,
        sigma: f64,
        conds: &[&[Tensor]],
    ) -> host_api::Result<Vec<Tensor>> {
        match &self.tiler {
            Some(t) => t.denoise(self.model, x, sigma, conds),
            None => self.model.denoise(x, sigma, conds),
        }
    }
}

impl SamplerCallbacks for Guidance<'_> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> host_api::Result<Tensor> {
        // A stop takes effect before the next UNet call, not only between steps (a step of a
        // second-order sampler makes two; A1111's `CFGDenoiser.forward` checks here too).
        if self.observer.stopped() {
            return Err(host_api::Error::new(STOPPED));
        }
        // A1111 `apply_refiner`, checked at every denoiser call as there.
        if let Some(h) = &self.refiner {
            if crate::refiner::hands_over(h.table, sigma, h.switch_at) {
                self.model = h.model;
                self.conds.all = h.conds;
                self.refiner = None;
            }
        }
        let (uncond, cond) = self.conds.next();
        let denoised = if self.cfg == 1.0 {
            let out = self.model_denoise(x, sigma, &[cond])?.remove(0);
            self.last = Some(out.shallow_clone());
            out
        } else {
            let out = self.model_denoise(x, sigma, &[uncond, cond])?;
            // A1111's default live preview subject ("Prompt") is the prompt's prediction.
            self.last = Some(out[1].shallow_clone());
            &out[0] + (&out[1] - &out[0]) * self.cfg
        };
        let denoised = match self.blend {
            Some(b) => blend(b, &denoised),
            None => denoised,
        };
        self.denoised = Some(denoised.shallow_clone());
        Ok(denoised)
    }

    fn noise_like(&mut self, x: &Tensor) -> host_api::Result<Tensor> {
        Ok(self.noise.next_like(x))
    }

    fn step(&mut self, i: usize, _total: usize) -> bool {
        self.preview.offer(self.observer, i, self.last.as_ref());
        self.observer.step(i)
    }

    fn model_sampling(&mut self) -> host_api::Result<ModelSampling> {
        Ok(self.sampling.clone())
    }
}

/// A pass's conditionings: the negative and the prompt, or with prompt editing or alternation
/// each distinct text once and, per schedule, which one each denoiser call takes — indexed,
/// as A1111's `CFGDenoiser.step`, by the count of calls (a second-order sampler makes two a
/// step), never by the sampler's step.
struct PassConds<'a> {
    all: &'a [Vec<Tensor>],
    /// (negative, prompt): the schedule and where its texts start in `all`.
    schedules: Option<[(Schedule, usize); 2]>,
    calls: usize,
}

impl<'a> PassConds<'a> {
    /// The (uncond, cond) of the next denoiser call.
    fn next(&mut self) -> (&'a [Tensor], &'a [Tensor]) {
        let all = self.all;
        let pick = |(s, offset): &(Schedule, usize)| -> &'a [Tensor] {
            &all[offset + s.index_at(self.calls)]
        };
        let pair = match &self.schedules {
            None => (&all[0][..], &all[1][..]),
            Some([negative, prompt]) => (pick(negative), pick(prompt)),
        };
        self.calls += 1;
        pair
    }
}

/// The encode request of a pass's prompts: today's pair when neither is scheduled, else every
/// distinct text of the negative's schedule, then the prompt's, each encoded once.
fn encode_request(
    (clip_skip, width, height): (usize, u32, u32),
    (negative, prompt): &(Schedule, Schedule),
) -> (EncodeRequest, bool) {
    let pair = |n: &str, p: &str| EncodeRequest::pair(n, p, clip_skip, width, height);
    if negative.texts.len() == 1 && prompt.texts.len() == 1 {
        return (pair(&negative.texts[0], &prompt.texts[0]), false);
    }
    let mut request = pair("", "");
    // SDXL's zero conditioning of an empty negative is A1111's `force_zero_negative_prompt`:
    // only when every text of the negative's schedule is empty (one batch of them all).
    let zero_empty = negative.texts.len() == 1;
    request.prompts = negative
        .texts
        .iter()
        .map(|t| (t, zero_empty))
        .chain(prompt.texts.iter().map(|t| (t, false)))
        .map(|(text, negative)| host_api::PromptSpec {
            text: text.as_str().into(),
            negative,
        })
        .collect();
    (request, true)
}

/// The VAEs for pixel upscalers: the earlier pass's model decodes its latent, this pass's
/// encodes the resized image (the same model unless the pass switches checkpoints; another
/// family's latent space is crossed this way). A batch is decoded and encoded one image at a
/// time, so its memory stays that of one image (and each image's pixels those of its single
/// run).
struct Vae<'a> {
    decoder: &'a ModelBox,
    encoder: &'a ModelBox,
}

impl VaeCallbacks for Vae<'_> {
    fn decode(&mut self, latent: &Tensor) -> host_api::Result<Tensor> {
        each_image(latent, |one| self.decoder.decode(one))
    }
    fn encode(&mut self, image: &Tensor) -> host_api::Result<Tensor> {
        each_image(image, |one| self.encoder.encode(one))
    }
}

fn each_image(
    x: &Tensor,
    mut f: impl FnMut(&Tensor) -> host_api::Result<Tensor>,
) -> host_api::Result<Tensor> {
    let n = x.size().first().copied().unwrap_or(1);
    if n <= 1 {
        return f(x);
    }
    let each = (0..n)
        .map(|i| f(&x.narrow(0, i, 1)))
        .collect::<host_api::Result<Vec<_>>>()?;
    Ok(Tensor::cat(&each, 0))
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
    /// Pass `first`'s latent, then each later pass's.
    pub latents: Vec<Tensor>,
    /// The (1-based) pass of `latents[0]`.
    pub first: usize,
    /// img2img with a mask: what the decoded images are composited with (A1111's overlay).
    pub overlay: Option<std::sync::Arc<crate::img2img::composite::Overlay>>,
    /// A 9-channel inpainting checkpoint ran pass 1 with this mask weight (A1111's
    /// "Conditional mask weight").
    pub mask_weight: Option<f64>,
    /// The run was stopped (`/interrupt`) and the last latent is the denoised prediction of
    /// the last UNet call of the pass it stopped in (or the pass before, when that pass had
    /// made none); no later pass ran.
    pub interrupted: bool,
    /// A pass's refiner took over (A1111 writes its infotext fields only then).
    pub refined: bool,
}

/// What the denoiser answers a sampler once the run is stopped.
const STOPPED: &str = "stopped";

/// A run resumed after pass `after_pass` from its latent (`hiresfix finish`).
pub struct Resume {
    pub after_pass: usize,
    pub latent: Tensor,
}

/// The passes of a job and how its models load.
pub type Passes<'a, 'r> = (&'a [PassPlan<'r>], &'a [PassSize], &'a LoadSettings);

/// Runs every pass for one image (after `resume`'s pass when given).
pub fn run_image(
    passes: Passes<'_, '_>,
    models: &mut Models<'_>,
    seeds: ImageSeeds,
    noise: &NoiseSettings,
    resume: Option<&Resume>,
) -> Result<ImageResult> {
    let mut results = run_batch(passes, models, &[seeds], noise, resume)?;
    Ok(results.remove(0))
}

/// Runs every pass for the images with `seeds` as one latent batch: one UNet call denoises
/// all of them, and image i keeps its own initial and step noise (its `seeds[i]`), so each
/// equals its single run. `resume` (one image only) starts after its pass.
pub fn run_batch(
    (plans, sizes, settings): Passes<'_, '_>,
    models: &mut Models<'_>,
    seeds: &[ImageSeeds],
    noise_settings: &NoiseSettings,
    resume: Option<&Resume>,
) -> Result<Vec<ImageResult>> {
    let observer = models.observer;
    if seeds.is_empty() || (resume.is_some() && seeds.len() != 1) {
        bail!("a batch needs at least one image and resumes one image at a time");
    }
    let start = resume.map_or(0, |r| r.after_pass);
    let mut latents: Vec<Tensor> = resume.iter().map(|r| r.latent.shallow_clone()).collect();
    // The pass before's model and family: a pixel upscaler decodes with its VAE (as A1111
    // decodes pass 1's samples before loading the hires checkpoint), and the family rule.
    let mut previous: Option<(Rc<ModelBox>, String)> = None;
    let mut overlay = None;
    let mut mask_weight = None;
    let mut interrupted = false;
    let mut refined = false;
    for (i, (plan, size)) in plans.iter().zip(sizes).enumerate().skip(start) {
        let (model, info) = models.for_pass(settings, plan)?;
        let new_family = match &previous {
            Some((_, family)) => {
                crate::switch::hand_off(plan, &info.family, &plans[i - 1], family)?;
                *family != info.family.as_str()
            }
            None => true,
        };
        if new_family {
            // The patches of every pass of this family against this model's facts, before
            // its first step.
            for later in plans.iter().skip(i) {
                if models.backend(&later.checkpoint)?.decl.family != info.family.as_str() {
                    break;
                }
                make_patches(&info, later, seeds)?;
            }
        }
        // The model's sampling at this pass's size (a flow model's shift may depend on it).
        let sampling = model
            .model_sampling(size.width, size.height)
            .map_err(|e| anyhow!("pass {}: model sampling: {e}", plan.number))?;
        let table = sampling
            .model_sigmas()
            .map_err(|e| anyhow!("pass {}: model sampling: {e}", plan.number))?;
        if new_family {
            // Every pass of this family's sampler serves the model's sampling, before a step.
            for later in plans.iter().skip(i) {
                if models.backend(&later.checkpoint)?.decl.family != info.family.as_str() {
                    break;
                }
                crate::plan::check_sampler_serves(later, &sampling, info.family.as_str())?;
            }
        }
        let device = latent_device(&info);
        let sigmas = pass_sigmas(plan, &table)?;
        let shape = [info.latent_channels as i64, size.latent_h, size.latent_w];
        // Every pass's noise as A1111's hires pass makes its own: the same seeds and variation.
        let noise = batch_noise(seeds, &noise_settings.variation, &shape).to_device(device);
        // A pass from pure noise (not from an earlier pass's latent nor an init image).
        let from_noise = latents.is_empty() && plan.img2img.is_none();
        let takes_concat = crate::img2img::concat::takes_concat(&info);
        let mut i2i = None;
        let x = match latents.last() {
            None => match &plan.img2img {
                Some(i2i_plan) => {
                    let s = crate::img2img::start(
                        i2i_plan,
                        &model,
                        size,
                        &noise,
                        takes_concat,
                        device,
                    )?;
                    models.warn_once(s.notes.clone());
                    let x = sampling.noise_latent(sigmas[0], &noise, &s.init_latent);
                    i2i = Some(s);
                    x
                }
                None => sampling.noise_only(sigmas[0], &noise),
            },
            Some(prev) => {
                let prev = &prev.to_device(device);
                let upscaler = plan
                    .upscaler
                    .ok_or_else(|| anyhow!("pass {} has no upscaler", plan.number))?;
                let decoder = match &previous {
                    Some((m, _)) => m.clone(),
                    // Resumed after pass i: its latent is the earlier checkpoint's.
                    None if upscaler.decl.works_in_pixels
                        && plans[i - 1].checkpoint != plan.checkpoint =>
                    {
                        models.for_pass(settings, &plans[i - 1])?.0
                    }
                    None => model.clone(),
                };
                let mut vae = Vae {
                    decoder: &decoder,
                    encoder: &model,
                };
                let mut run =
                    |x: &Tensor, h, w| upscaler.decl.run(&mut vae, &plan.upscaler_options, x, h, w);
                let up = timed(observer, "upscale", || match settings.seamless {
                    // A crop would cut the tile: a pass of another aspect is stretched.
                    true => wrapped_upscale(prev, size.latent_h, size.latent_w, run),
                    false => run(prev, size.cover_h, size.cover_w)
                        .map(|up| centre_crop(&up, size.latent_h, size.latent_w)),
                })
                .map_err(|e| {
                    let (name, file) = (&upscaler.decl.name, &upscaler.file);
                    plugin_error(observer, plan.number, size, "upscaler", name, file, e)
                })?;
                check_finite(&up, &model, plan.number, "the upscaled latent")?;
                // A1111 / Forge: the upscaled latent noised to the pass's first sigma.
                sampling.noise_latent(sigmas[0], &noise, &up)
            }
        };
        previous = Some((model.clone(), info.family.to_string()));
        let blend_with = i2i.as_ref().and_then(|s| {
            s.nmask
                .as_ref()
                .map(|n| (s.init_latent.shallow_clone(), n.shallow_clone()))
        });
        if let Some(s) = &mut i2i {
            overlay = s.overlay.take().map(std::sync::Arc::new);
        }
        if plan.denoise == 0.0 || plan.steps == 0 {
            // Upscale only (denoise 0), or img2img of no step: `x` plus noise × 0.
            latents.push(match &blend_with {
                Some(b) => blend(b, &x),
                None => x,
            });
            continue;
        }
        if takes_concat && i == 0 {
            mask_weight = Some(plan.img2img.as_ref().map_or(1.0, |p| p.mask_weight));
        }
        if takes_concat && plan.tiled.is_some() {
            bail!(crate::tiled::inpainting_refusal(plan.number));
        }
        if takes_concat {
            // A 9-channel inpainting checkpoint: pass 1's image conditioning, else A1111's
            // txt2img one (a blank image behind a mask of ones).
            let concat = match i2i.as_mut().and_then(|s| s.concat.take()) {
                Some(c) => c,
                None => crate::img2img::concat::txt2img(
                    &model,
                    device,
                    seeds.len() as i64,
                    (i64::from(size.height), i64::from(size.width)),
                    (size.latent_h, size.latent_w),
                )
                .map_err(|e| anyhow!("pass {}: {e}", plan.number))?,
            };
            model
                .set_concat(Some(&concat))
                .map_err(|e| anyhow!("pass {}: {e}", plan.number))?;
        }
        let specs: Vec<host_api::LoraSpec> = plan.loras.iter().map(|l| l.spec()).collect();
        let warnings = model
            .set_loras(&specs)
            .map_err(|e| anyhow!("pass {}: {e}", plan.number))?;
        models.warn_once(warnings);
        set_patches(&model, &info, plan, &sigmas, seeds)?;
        // Each pass conditions on its own size (SDXL's size ids, as A1111's hires pass).
        let schedules = crate::plan::prompt_schedules(plans, i)?;
        let at = (plan.clip_skip, size.width, size.height);
        let (mut request, scheduled) = encode_request(at, &schedules);
        if let Some(g) = plan.guidance {
            request.options.push(host_api::OptionEntry {
                key: host_api::options::keys::GUIDANCE.into(),
                value: host_api::OptionValue::Number(g),
            });
        }
        set_embeddings(models, &model, plan, &request)?;
        let conds = encode(models, &model, plans, plan, &specs, &request)?;
        let negatives = schedules.0.texts.len();
        let refiner = load_refiner(
            models,
            settings,
            plan,
            (&info, &sigmas),
            (&request, negatives),
        )?;
        if models.final_image && i + 1 == plans.len() {
            // Nothing encodes after this: a batch that runs out of memory and runs its images
            // one at a time again finds every pass's conditionings in `Models`' cache.
            if let Err(e) = model.release(host_api::backend::release::TEXT_ENCODERS) {
                log::debug!("text encoders kept: {e}");
            }
            crate::models::return_free_pages();
        }
        let label = match seeds.len() {
            1 => format!("pass {}", plan.number),
            n => format!("pass {} ×{n}", plan.number),
        };
        observer.pass_started(plan.number, plan.steps, &label);
        let preview_dirs = models.preview_dirs.clone();
        let mut guidance = Guidance {
            model: &model,
            refiner: refiner.as_ref().map(|(model, conds)| Handover {
                model,
                conds,
                table: &sampling.sigmas,
                switch_at: plan.refiner.as_ref().map_or(1.0, |r| r.switch_at),
            }),
            conds: PassConds {
                all: &conds,
                schedules: scheduled.then(|| {
                    let (negative, prompt) = schedules;
                    let offset = negative.texts.len();
                    [(negative, 0), (prompt, offset)]
                }),
                calls: 0,
            },
            cfg: plan.cfg,
            noise: StepNoise::new(seeds, noise_settings.delta, &shape, plan.steps + 1),
            observer,
            preview: crate::live_preview::PassPreview::new(info.family.as_str(), &preview_dirs),
            last: None,
            denoised: None,
            blend: blend_with.as_ref(),
            tiler: plan
                .tiled
                .map(|t| Tiler::wrapping(&t, size.latent_h, size.latent_w, settings.seamless)),
            sampling: &sampling,
        };
        let phase = format!("pass {}", plan.number);
        let options = sampler_options(plan, from_noise);
        let out = timed(observer, &phase, || {
            plan.sampler.decl.run(&mut guidance, &options, x, &sigmas)
        });
        observer.pass_ended();
        refined |= plan.refiner.is_some() && guidance.refiner.is_none();
        // Stopped by a caller that keeps the image as far as it got: the last prediction.
        let partial = match &out {
            Err(_) if observer.stopped() && observer.keeps_partial() => {
                Some(guidance.denoised.take())
            }
            _ => None,
        };
        if takes_concat {
            model
                .set_concat(None)
                .map_err(|e| anyhow!("pass {}: {e}", plan.number))?;
        }
        let out = out.map(|o| match &blend_with {
            // A1111 `sample`: `samples * nmask + init_latent * mask` once more at the end.
            Some(b) => blend(b, &o),
            None => o,
        });
        match partial {
            Some(Some(last)) => {
                check_finite(&last, &model, plan.number, "the UNet's result")?;
                latents.push(last);
                interrupted = true;
                break;
            }
            Some(None) if latents.len() > usize::from(resume.is_some()) => {
                interrupted = true; // no UNet call yet: the pass before is the image
                break;
            }
            _ => {}
        }
        let out = out.map_err(|e| {
            let (name, file) = (&plan.sampler.decl.name, &plan.sampler.file);
            plugin_error(observer, plan.number, size, "sampler", name, file, e)
        })?;
        check_finite(&out, &model, plan.number, "the UNet's result")?;
        latents.push(out);
    }
    if resume.is_some() {
        drop(latents.remove(0));
    }
    Ok((0..seeds.len() as i64)
        .map(|i| ImageResult {
            latents: latents.iter().map(|l| l.narrow(0, i, 1)).collect(),
            first: start + 1,
            overlay: overlay.clone(),
            mask_weight,
            interrupted,
            refined,
        })
        .collect())
}

/// A pass's refiner model and its conditionings.
type LoadedRefiner = (std::rc::Rc<ModelBox>, std::rc::Rc<Vec<Vec<Tensor>>>);

/// The pass's refiner, loaded, checked against the pass model's family, made ready (no LoRAs,
/// no patches: A1111 reloads the bare refiner) and its prompts encoded — the pass's texts, the
/// first `negatives` of them flagged negative (the refiner's aesthetic score; `request` flags
/// a scheduled negative's texts only for SDXL's zeroing of an all-empty negative).
fn load_refiner(
    models: &mut Models<'_>,
    settings: &LoadSettings,
    plan: &PassPlan<'_>,
    (info, sigmas): (&ModelInfo, &[f64]),
    (request, negatives): (&EncodeRequest, usize),
) -> Result<Option<LoadedRefiner>> {
    let Some(refiner) = &plan.refiner else {
        return Ok(None);
    };
    let at = |e: host_api::Error| anyhow!("pass {} (refiner): {e}", plan.number);
    let (model, refiner_info) = models.get(settings, &refiner.checkpoint, None, &[])?;
    crate::switch::refiner_family(plan, &refiner_info.family, &info.family)?;
    if latent_device(&refiner_info) != latent_device(info) {
        bail!(
            "pass {}: the refiner loaded on {} but the pass's model on {} — set one device",
            plan.number,
            refiner_info.device,
            info.device
        );
    }
    models.warn_once(model.set_loras(&[]).map_err(at)?);
    let range = PassSigmas {
        max: sigmas.first().copied().unwrap_or(0.0),
        min: sigmas.last().copied().unwrap_or(0.0),
    };
    model.set_patches(Vec::new(), range).map_err(at)?;
    let mut request = request.clone();
    for spec in request.prompts.iter_mut().take(negatives) {
        spec.negative = true;
    }
    // The pass's embedding files are the refiner's too (an SDXL file's `clip_g` part).
    set_embeddings(models, &model, plan, &request)?;
    let conds = models.encode(&model, &[], &request).map_err(at)?;
    Ok(Some((model, conds)))
}

/// Makes the pass's embedding files the model's; a prompt naming one the model skipped (another
/// family's) is a warning naming the file, once per run.
fn set_embeddings(
    models: &mut Models<'_>,
    model: &std::rc::Rc<ModelBox>,
    plan: &PassPlan<'_>,
    request: &EncodeRequest,
) -> Result<()> {
    let at = |e: host_api::Error| anyhow!("pass {}: embeddings: {e}", plan.number);
    let states = models.set_embeddings(model, &plan.embeddings).map_err(at)?;
    if states.iter().all(|s| s.loaded) {
        return Ok(());
    }
    let texts: Vec<&str> = request.prompts.iter().map(|p| p.text.as_str()).collect();
    let used = match model.takes_embeddings() {
        true => model.used_embeddings(&texts).map_err(at)?,
        // A plugin older than host-api 1.3 cannot say: the names the prompts hold.
        false => {
            let text = texts.join("\n").to_lowercase();
            let named = |s: &&host_api::EmbeddingState| text.contains(&s.name.to_lowercase());
            states
                .iter()
                .filter(named)
                .map(|s| s.name.to_string())
                .collect()
        }
    };
    let warnings = states
        .iter()
        .filter(|s| !s.loaded && used.iter().any(|u| u == s.name.as_str()))
        .map(crate::embeddings::skipped_warning)
        .collect();
    models.warn_once(warnings);
    Ok(())
}

/// The loaded embedding files the passes' prompts use, each once: every pass's prompt texts,
/// then its negative's (A1111's `TI hashes` lists the prompt's before the negative's).
pub fn used_embeddings(
    models: &mut Models<'_>,
    settings: &LoadSettings,
    plans: &[PassPlan<'_>],
) -> Result<Vec<host_api::EmbeddingSpec>> {
    let mut used: Vec<host_api::EmbeddingSpec> = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        // CLIP reads lowercased text: a name the prompts do not hold is not used (and no model
        // loads to say so, as `finish` would for pass 1's).
        let text = format!("{}\n{}", plan.prompt, plan.negative).to_lowercase();
        let named = |e: &host_api::EmbeddingSpec| text.contains(&e.name.to_lowercase());
        if !plan.embeddings.iter().any(named) {
            continue;
        }
        let (model, _) = models.for_pass(settings, plan)?;
        let states = models
            .set_embeddings(&model, &plan.embeddings)
            .map_err(|e| anyhow!("{e}"))?;
        let (negative, prompt) = crate::plan::prompt_schedules(plans, i)?;
        let texts: Vec<&str> = prompt
            .texts
            .iter()
            .chain(&negative.texts)
            .map(String::as_str)
            .collect();
        for name in model.used_embeddings(&texts).map_err(|e| anyhow!("{e}"))? {
            let loaded = states.iter().any(|s| s.loaded && s.name.as_str() == name);
            let spec = plan.embeddings.iter().find(|e| e.name.as_str() == name);
            if let Some(spec) = spec.filter(|_| loaded) {
                if !used.contains(spec) {
                    used.push(spec.clone());
                }
            }
        }
    }
    Ok(used)
}

/// The pass's prompts encoded with its LoRA set — or, with A1111's
/// `hires_fix_use_firstpass_conds`, with pass 1's set on the text encoders and the pass's own
/// set back before its first UNet call.
fn encode(
    models: &mut Models<'_>,
    model: &Rc<ModelBox>,
    plans: &[PassPlan<'_>],
    plan: &PassPlan<'_>,
    specs: &[host_api::LoraSpec],
    request: &EncodeRequest,
) -> Result<Rc<Vec<Vec<Tensor>>>> {
    let at = |e: host_api::Error| anyhow!("pass {}: encoding the prompt: {e}", plan.number);
    let first: Vec<host_api::LoraSpec> = plans[0].loras.iter().map(|l| l.spec()).collect();
    if !plan.firstpass_conds || first == specs {
        return models.encode(model, specs, request).map_err(at);
    }
    let set = |models: &mut Models<'_>, specs: &[host_api::LoraSpec]| -> Result<()> {
        let warnings = model
            .set_loras(specs)
            .map_err(|e| anyhow!("pass {}: {e}", plan.number))?;
        models.warn_once(warnings);
        Ok(())
    };
    set(models, &first)?;
    let conds = models.encode(model, &first, request).map_err(at);
    set(models, specs)?;
    conds
}

/// The option the host adds for a pass that starts from pure noise (no image under it):
/// `from_noise = true`, for samplers that start such a pass otherwise (PLMS, as A1111's
/// CompVis samplers, from the unscaled noise). A profile cannot set it: no sampler lists it.
pub const FROM_NOISE: &str = "from_noise";

fn sampler_options(plan: &PassPlan<'_>, from_noise: bool) -> Vec<host_api::OptionEntry> {
    let mut options = plan.options.clone();
    if from_noise {
        options.push(host_api::OptionEntry {
            key: FROM_NOISE.into(),
            value: host_api::OptionValue::Flag(true),
        });
    }
    options
}

/// Makes the pass's UNet patches (none: the plain UNet) the model's, made for this model.
fn set_patches(
    model: &ModelBox,
    info: &ModelInfo,
    plan: &PassPlan<'_>,
    sigmas: &[f64],
    seeds: &[ImageSeeds],
) -> Result<()> {
    let patches = make_patches(info, plan, seeds)?;
    let range = PassSigmas {
        max: sigmas.first().copied().unwrap_or(0.0),
        min: sigmas.last().copied().unwrap_or(0.0),
    };
    model
        .set_patches(patches, range)
        .map_err(|e| anyhow!("pass {}: {e}", plan.number))
}

/// Every pass's patches made for pass 1's checkpoint as its headers describe it (`check`, and
/// `generate` before any model loads): a patch option the model cannot take is one line here.
/// Passes on another checkpoint are checked again when their model loads.
pub fn patches_fit(plans: &[PassPlan<'_>], info: &host_api::CheckpointInfo) -> Result<()> {
    let target = PatchModel {
        family: info.family.clone(),
        sigmas: Default::default(),
        extra: info.extra.clone(),
    };
    for plan in plans.iter().filter(|p| p.checkpoint == plans[0].checkpoint) {
        for p in &plan.patches {
            p.entry.decl.create(&p.options, &target).map_err(|e| {
                let (name, file) = (&p.entry.decl.name, p.entry.file.display());
                anyhow!("pass {}: patch `{name}` ({file}): {e}", plan.number)
            })?;
        }
    }
    Ok(())
}

/// Every tiled pass's checkpoint as its headers describe it, before anything loads or runs
/// (`check`, and `generate` before pass 1): an inpainting checkpoint is refused here, not
/// after the passes before it ran.
pub fn tiled_fit(plans: &[PassPlan<'_>], models: &Models<'_>) -> Result<()> {
    for plan in plans.iter().filter(|p| p.tiled.is_some()) {
        if inpainting_checkpoint(plan, models)? {
            bail!(crate::tiled::inpainting_refusal(plan.number));
        }
    }
    Ok(())
}

/// Whether `plan`'s checkpoint is a 9-channel inpainting one, read from its headers (`false`
/// for a backend without tools: its facts are known once it loads, and refused then).
pub fn inpainting_checkpoint(plan: &PassPlan<'_>, models: &Models<'_>) -> Result<bool> {
    let backend = models.backend(&plan.checkpoint)?;
    if !backend.decl.has_tools() {
        return Ok(false);
    }
    let info = backend
        .decl
        .run_inspect(&plan.checkpoint, false)
        .map_err(|e| anyhow!("{e}"))?;
    Ok(info.extra.iter().any(|e| {
        e.key.as_str() == host_api::keys::CONCAT_CHANNELS
            && matches!(e.value, host_api::OptionValue::Number(n) if n == 5.0)
    }))
}

/// The pass's patches made for the model `info` describes: an option the model cannot take
/// (a block past its UNet's) is refused here, never ignored.
fn make_patches(
    info: &ModelInfo,
    plan: &PassPlan<'_>,
    seeds: &[ImageSeeds],
) -> Result<Vec<host_api::PatchBox>> {
    // The model's facts added in 1.x (e.g. `unet_input_blocks`) reach the patches as given,
    // with the images' seeds (1.4: random choices of HyperTile and ToMe come from them).
    let mut extra = info.extra.clone();
    let list: Vec<String> = seeds.iter().map(|s| s.seed.to_string()).collect();
    extra.push(host_api::OptionEntry {
        key: host_api::keys::SEEDS.into(),
        value: host_api::OptionValue::Text(list.join(",").into()),
    });
    let target = PatchModel {
        family: info.family.clone(),
        sigmas: info.sigmas.clone(),
        extra,
    };
    plan.patches
        .iter()
        .map(|p| {
            p.entry.decl.create(&p.options, &target).map_err(|e| {
                let (name, file) = (&p.entry.decl.name, p.entry.file.display());
                anyhow!("pass {}: patch `{name}` ({file}): {e}", plan.number)
            })
        })
        .collect::<Result<Vec<_>>>()
}

fn plugin_error(
    observer: &dyn Observer,
    pass: usize,
    size: &PassSize,
    kind: &str,
    name: &str,
    file: &Path,
    e: host_api::Error,
) -> anyhow::Error {
    if observer.stopped() {
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
pub(crate) fn out_of_memory(pass: usize, size: &PassSize, message: &str) -> Option<anyhow::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::prompt_schedule::{schedule, Steps};

    fn request(negative: &str, prompt: &str) -> (Vec<(String, bool)>, bool) {
        let steps = Steps {
            base: 10,
            hires: None,
        };
        let s = (
            schedule(negative, steps).unwrap(),
            schedule(prompt, steps).unwrap(),
        );
        let (r, scheduled) = encode_request((1, 64, 64), &s);
        let specs = r.prompts.iter().map(|p| (p.text.to_string(), p.negative));
        (specs.collect(), scheduled)
    }

    #[test]
    fn each_distinct_text_is_encoded_once_and_plain_prompts_as_a_pair() {
        let owned = |v: &[(&str, bool)]| -> Vec<(String, bool)> {
            v.iter().map(|(t, n)| (t.to_string(), *n)).collect()
        };
        assert_eq!(
            request("", "a (cat:1.2) [dog]"),
            (owned(&[("", true), ("a (cat:1.2) [dog]", false)]), false)
        );
        // `[a|b]` over 10 steps: 10 segments, 2 texts; the negative's "" keeps SDXL's zeros.
        assert_eq!(
            request("", "[a|b] c"),
            (owned(&[("", true), ("a c", false), ("b c", false)]), true)
        );
        // An empty segment among others is text, as A1111 zeroes only an all-empty batch.
        assert_eq!(
            request("[ugly::0.5]", "x"),
            (owned(&[("ugly", false), ("", false), ("x", false)]), true)
        );
    }
}
