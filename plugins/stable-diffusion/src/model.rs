//! The assembled SD 1.x model: text encoder, UNet behind k-diffusion's `CompVisDenoiser`
//! wrapper, VAE, schedule and tokenizer.
use std::cell::OnceCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::Checkpoint;
use crate::clip::{ClipConfig, ClipTextTransformer};
use crate::conditioning::{encode_chunks, pad_chunk_lists};
use crate::family::{self, Family, Prediction, SD1};
use crate::schedule::DiscreteSchedule;
use crate::tokenizer::{extract_loras, ClipTokenizer, CHUNK_TOKENS};
use crate::unet::{UNetConfig, UNetModel};
use crate::vae::{AutoencoderKL, VaeConfig, VaePass};
use crate::vae_memory::{self, AttentionMemory};
use crate::vae_tiling::{self, VaeTilingMode, VaeTilingOptions};

/// The three component configs of an SD 1.x model.
#[derive(Debug, Clone, PartialEq)]
pub struct Sd1Config {
    pub clip: ClipConfig,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
}

impl Sd1Config {
    /// Everything read from `ckpt`'s tensor shapes (and diffusers configs), checked for consistency.
    pub fn infer(ckpt: &Checkpoint, family: &Family) -> Result<Self> {
        let cfg = Self {
            clip: ClipConfig::infer(ckpt)?,
            unet: UNetConfig::infer(ckpt, family.head_rule)?,
            vae: VaeConfig::infer(ckpt, family.scaling_factor)?,
        };
        cfg.validate()
            .map_err(|e| anyhow!("{}: {e}", ckpt.path().display()))?;
        Ok(cfg)
    }

    /// The checks that keep shape errors out of the forward passes.
    pub fn validate(&self) -> Result<()> {
        let (clip, unet, vae) = (&self.clip, &self.unet, &self.vae);
        if clip.vocab_size < 49408 || clip.max_positions < CHUNK_TOKENS as i64 {
            bail!(
                "the text encoder has {} tokens and {} positions; SD 1.x needs 49408 and 77",
                clip.vocab_size,
                clip.max_positions
            );
        }
        if unet.context_dim != clip.hidden_size {
            bail!("the UNet expects {}-wide text but the text encoder gives {} — the checkpoint mixes two models", unet.context_dim, clip.hidden_size);
        }
        if unet.out_channels != vae.embed_dim {
            bail!("the UNet works on {} latent channels but the VAE has {} — use a VAE of the same family", unet.out_channels, vae.embed_dim);
        }
        if unet.in_channels != vae.embed_dim {
            bail!("the UNet takes {} input channels (an inpainting or instruct model); those are not supported yet", unet.in_channels);
        }
        let mut widths: Vec<i64> = unet
            .channel_mult
            .iter()
            .map(|m| m * unet.model_channels)
            .collect();
        widths.extend(vae.ch_mult.iter().map(|m| m * vae.ch));
        if let Some(w) = widths
            .iter()
            .find(|w| **w <= 0 || **w % crate::layers::NORM_GROUPS != 0)
        {
            bail!(
                "a block {w} channels wide does not split into {} GroupNorm groups",
                crate::layers::NORM_GROUPS
            );
        }
        Ok(())
    }
}

/// A checkpoint read from its headers only (no weights): what `hiresfix info` and family
/// detection need.
#[derive(Debug, Clone)]
pub struct Inspection {
    /// The registry entry the checkpoint matches, supported or not.
    pub family: Option<&'static Family>,
    /// The inferred architecture, for SD 1.x checkpoints.
    pub config: Option<Sd1Config>,
    /// The dtype most of its tensors are stored in (`F16`, `F32`, ...).
    pub stored_dtype: String,
}

/// Reads `checkpoint`'s headers; errors only when the file or folder itself is unreadable.
pub fn inspect(checkpoint: &Path) -> Result<Inspection> {
    let ckpt = Checkpoint::open(checkpoint)?;
    let family = family::identify(&ckpt);
    let config = match family {
        Some(f) if f.id == SD1.id => Some(Sd1Config::infer(&ckpt, f)?),
        _ => None,
    };
    Ok(Inspection {
        family,
        config,
        stored_dtype: ckpt.main_dtype(),
    })
}

/// The modules, built under their LDM key paths in one VarStore.
pub(crate) struct Sd1Modules {
    pub clip: ClipTextTransformer,
    pub unet: UNetModel,
    pub vae: AutoencoderKL,
}

impl Sd1Modules {
    pub fn new(root: nn::Path, cfg: &Sd1Config) -> Result<Self> {
        Ok(Self {
            clip: ClipTextTransformer::new(&root / "cond_stage_model" / "transformer", &cfg.clip)?,
            unet: UNetModel::new(&root / "model" / "diffusion_model", &cfg.unet)?,
            vae: AutoencoderKL::new(&root / "first_stage_model", &cfg.vae)?,
        })
    }
}

/// What the host needs to know about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    /// Family id, `sd1`.
    pub family: &'static str,
    pub prediction: Prediction,
    pub latent_channels: i64,
    /// Pixels per latent cell along each side.
    pub vae_scale_factor: i64,
    pub scaling_factor: f64,
    /// Width of the text conditioning.
    pub text_hidden_size: i64,
    /// e.g. `CLIP-L (12 layers, 768)`.
    pub text_encoders: String,
    /// The family's comfortable image side in pixels.
    pub default_size: i64,
    pub kind: Kind,
    pub device: Device,
    /// The inferred architecture.
    pub config: Sd1Config,
}

pub struct Sd1Model {
    clip: ClipTextTransformer,
    unet: UNetModel,
    vae: AutoencoderKL,
    /// An fp32 copy of the VAE, made the first time half precision decodes to NaN.
    vae_fp32: OnceCell<AutoencoderKL>,
    schedule: DiscreteSchedule,
    tokenizer: ClipTokenizer,
    vs: VarStore,
    info: ModelInfo,
    vae_tiling: VaeTilingOptions,
}

impl Sd1Model {
    /// `checkpoint`: a single-file LDM `.safetensors` or a diffusers folder (has `model_index.json`);
    /// `vae_override`: a VAE `.safetensors` or diffusers `vae` folder replacing the checkpoint's.
    /// VAE tiling is `auto` with 512 px tiles; see [`Self::load_with`].
    pub fn load(
        checkpoint: &Path,
        vae_override: Option<&Path>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let tiling = VaeTilingOptions::default();
        Self::load_with(checkpoint, vae_override, device, kind, tiling)
    }

    /// [`Self::load`] with the given VAE tiling options.
    pub fn load_with(
        checkpoint: &Path,
        vae_override: Option<&Path>,
        device: Device,
        kind: Kind,
        vae_tiling: VaeTilingOptions,
    ) -> Result<Self> {
        vae_tiling.validate()?;
        if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
            bail!("dtype {kind:?} is not supported — use fp32, fp16 or bf16");
        }
        let mut ckpt = Checkpoint::open(checkpoint)?;
        let family = family::detect(&ckpt)?;
        if family.id != SD1.id {
            bail!(
                "{}: a {} checkpoint, but this backend loads {} only",
                checkpoint.display(),
                family.name,
                SD1.name
            );
        }
        if let Some(vae) = vae_override {
            ckpt.use_vae(vae)?;
        }
        if ckpt
            .configs()
            .prediction_type()
            .is_some_and(|p| p != "epsilon")
        {
            bail!("{}: scheduler prediction_type is not epsilon; v-prediction SD 1.x models are not supported yet", checkpoint.display());
        }
        let config = Sd1Config::infer(&ckpt, family)?;
        let schedule = DiscreteSchedule::from_checkpoint(&ckpt)?;
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let modules = guarded("building the model", || Sd1Modules::new(vs.root(), &config))?;
        guarded("loading weights", || ckpt.copy_into(&vs))?;
        vs.freeze();
        let info = ModelInfo {
            family: family.id,
            prediction: family.prediction,
            latent_channels: config.vae.embed_dim,
            vae_scale_factor: config.vae.spatial_factor(),
            scaling_factor: config.vae.scaling_factor,
            text_hidden_size: config.clip.hidden_size,
            text_encoders: format!(
                "{} ({} layers, {})",
                family.text_encoder, config.clip.num_layers, config.clip.hidden_size
            ),
            default_size: family.default_size,
            kind,
            device,
            config,
        };
        let Sd1Modules { clip, unet, vae } = modules;
        Ok(Self {
            clip,
            unet,
            vae,
            vae_fp32: OnceCell::new(),
            schedule,
            tokenizer: ClipTokenizer::new(),
            vs,
            info,
            vae_tiling,
        })
    }

    pub fn vae_tiling(&self) -> &VaeTilingOptions {
        &self.vae_tiling
    }

    pub fn set_vae_tiling(&mut self, options: VaeTilingOptions) -> Result<()> {
        options.validate()?;
        self.vae_tiling = options;
        Ok(())
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Ascending model sigma table, one per training timestep.
    pub fn sigmas(&self) -> Vec<f64> {
        self.schedule.sigmas().to_vec()
    }

    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Every parameter by its LDM key (shared with the modules: patching one in place, e.g.
    /// for LoRA, changes the model).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// `[1, 77·k, hidden]` conditioning with A1111 emphasis; `<lora:…>` tags are ignored here
    /// (see [`crate::tokenizer::extract_loras`]).
    pub fn encode_prompt(&self, prompt: &str, clip_skip: usize) -> Result<Tensor> {
        let mut all = self.encode_prompts(&[prompt], clip_skip)?;
        all.pop().ok_or_else(|| anyhow!("no conditioning produced"))
    }

    /// Conditioning for each prompt, padded with empty-prompt chunks to the same length.
    pub fn encode_prompts(&self, prompts: &[&str], clip_skip: usize) -> Result<Vec<Tensor>> {
        let mut lists = prompts
            .iter()
            .map(|p| Ok(self.tokenizer.chunks(&extract_loras(p)?.0)))
            .collect::<Result<Vec<_>>>()?;
        pad_chunk_lists(&mut lists, &self.tokenizer.empty_chunk());
        guarded("encoding the prompt", || {
            tch::no_grad(|| {
                lists
                    .iter()
                    .map(|chunks| {
                        encode_chunks(
                            &self.clip,
                            chunks,
                            clip_skip,
                            self.info.device,
                            self.info.kind,
                        )
                    })
                    .collect()
            })
        })
    }

    /// `(cond, uncond)` with the same number of chunks, ready to batch for CFG.
    pub fn encode_pair(
        &self,
        cond: &str,
        uncond: &str,
        clip_skip: usize,
    ) -> Result<(Tensor, Tensor)> {
        let mut pair = self.encode_prompts(&[cond, uncond], clip_skip)?.into_iter();
        match (pair.next(), pair.next()) {
            (Some(c), Some(u)) => Ok((c, u)),
            _ => bail!("no conditioning produced"),
        }
    }

    /// The raw UNet: predicted noise for latent `x` `[B, C, h, w]` at timesteps `t` (`[B]` or
    /// a scalar, fractional allowed) with `context` `[B or 1, L, D]`. Returned in `x`'s dtype.
    pub fn eps(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Result<Tensor> {
        let (b, _) = self.check_latent(x, self.info.config.unet.in_channels, "UNet input")?;
        let t = match t.numel() {
            1 => t.reshape([1]).expand([b], false),
            n if n as i64 == b && t.dim() <= 1 => t.reshape([b]),
            n => bail!("{n} timesteps for a batch of {b} — pass one per image or a scalar"),
        };
        let context = self.check_context(context, b)?;
        guarded("running the UNet", || {
            let (device, kind) = (self.info.device, self.info.kind);
            let eps = tch::no_grad(|| {
                self.unet.forward(
                    &x.to_device(device).to_kind(kind),
                    &t.to_device(device),
                    &context.to_device(device).to_kind(kind),
                )
            });
            Ok(eps.to_kind(x.kind()))
        })
    }

    /// k-diffusion `CompVisDenoiser`: the denoised latent at `sigma`. `c_in = 1/sqrt(sigma²+1)`,
    /// `t = sigma_to_t(sigma)` unquantised, `denoised = x - eps·sigma`.
    pub fn denoise(&self, x: &Tensor, sigma: f64, context: &Tensor) -> Result<Tensor> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            bail!("sigma {sigma} is not a finite non-negative number");
        }
        let c_in = 1.0 / (sigma * sigma + 1.0).sqrt();
        let t = Tensor::from(self.schedule.sigma_to_t(sigma));
        let eps = self.eps(&(x * c_in), &t, context)?;
        Ok(x.to_device(eps.device()) - eps * sigma)
    }

    /// Scaled latent → raw pixels, about [-1, 1], unclamped. Half precision that overflows to
    /// NaN is retried in fp32. Returned in the latent's dtype. Tiled as [`Self::vae_tiling`]
    /// says (see [`crate::vae_tiling`]).
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.check_latent(latent, self.info.latent_channels, "latent")?;
        self.run_vae_planned(VaePass::Decode, latent)
    }

    /// Pixels `[B, 3, H, W]` in [-1, 1] → scaled latent (posterior mean). Returned in the
    /// image's dtype. Tiled as [`Self::vae_tiling`] says.
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let channels = self.info.config.vae.in_channels;
        self.check_latent(image, channels, "image")?;
        self.run_vae_planned(VaePass::Encode, image)
    }

    /// In one piece or tiled, by the tiling mode and, in `auto`, the full pass's memory
    /// estimate against the device's free memory; in `auto` a full pass that runs out of
    /// memory is retried tiled.
    fn run_vae_planned(&self, pass: VaePass, input: &Tensor) -> Result<Tensor> {
        let options = self.vae_tiling;
        let full = |vae: &AutoencoderKL, x: &Tensor| vae.run(pass, x);
        let tiled = |vae: &AutoencoderKL, x: &Tensor| vae_tiling::run_tiled(vae, pass, x, &options);
        let what = pass.verb();
        match options.mode {
            VaeTilingMode::Off => return self.run_vae(what, input, full),
            VaeTilingMode::On => return self.run_vae(what, input, tiled),
            VaeTilingMode::Auto => {}
        }
        let estimate = vae_memory::peak_bytes(
            &self.info.config.vae,
            pass,
            &input.size(),
            self.element_bytes(),
            AttentionMemory::on(self.info.device),
        );
        let free = vae_memory::free_bytes(self.info.device);
        let tile = vae_tiling::should_tile(options.mode, estimate, free);
        log::info!(
            "VAE {what} {:?}: {}",
            input.size(),
            self.describe_plan(estimate, free, tile)
        );
        if tile {
            return self.run_vae(what, input, tiled);
        }
        self.run_vae(what, input, full)
            .or_else(|e| match is_out_of_memory(&e) {
                true => {
                    log::warn!("VAE {what} ran out of memory in one piece; retrying tiled");
                    self.run_vae(what, input, tiled)
                }
                false => Err(e),
            })
    }

    fn element_bytes(&self) -> u64 {
        match self.info.kind {
            Kind::Half | Kind::BFloat16 => 2,
            _ => 4,
        }
    }

    fn describe_plan(&self, estimate: u64, free: Option<u64>, tile: bool) -> String {
        let gib = |b: u64| b as f64 / f64::from(1 << 30);
        let free = match free {
            Some(b) => format!("{:.2} GiB free", gib(b)),
            None => "free memory unknown".into(),
        };
        let o = &self.vae_tiling;
        let choice = match tile {
            true => format!(
                "tiled ({} px tiles, {} px overlap)",
                o.tile_px, o.overlap_px
            ),
            false => "in one piece".into(),
        };
        format!(
            "a full pass needs ~{:.2} GiB, {free} on {:?} → {choice}",
            gib(estimate),
            self.info.device
        )
    }

    fn run_vae(
        &self,
        what: &str,
        input: &Tensor,
        f: impl Fn(&AutoencoderKL, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let device = self.info.device;
        let out = guarded(what, || {
            tch::no_grad(|| f(&self.vae, &input.to_device(device).to_kind(self.info.kind)))
        })?;
        let has_nan = || bool::try_from(out.isnan().any()).unwrap_or(true);
        if self.info.kind == Kind::Float || !has_nan() {
            return Ok(out.to_kind(input.kind()));
        }
        log::warn!(
            "VAE {what} produced NaN in {:?}; retrying in fp32",
            self.info.kind
        );
        guarded(what, || {
            let vae = self.vae_fp32()?;
            let out = tch::no_grad(|| f(vae, &input.to_device(device).to_kind(Kind::Float)))?;
            Ok(out.to_kind(input.kind()))
        })
    }

    fn vae_fp32(&self) -> Result<&AutoencoderKL> {
        if let Some(vae) = self.vae_fp32.get() {
            return Ok(vae);
        }
        let vs = VarStore::new(self.info.device);
        let vae = AutoencoderKL::new(vs.root() / "first_stage_model", &self.info.config.vae)?;
        let src = self.vs.variables();
        for (key, mut var) in vs.variables() {
            let from = src
                .get(&key)
                .ok_or_else(|| anyhow!("VAE parameter `{key}` missing from the model"))?;
            tch::no_grad(|| var.f_copy_(&from.to_kind(Kind::Float)))
                .with_context(|| format!("copying `{key}` to fp32"))?;
        }
        Ok(self.vae_fp32.get_or_init(|| vae))
    }

    /// `[B, channels, h, w]` floating point, else a clear error. Returns `(B, h·w)`.
    fn check_latent(&self, x: &Tensor, channels: i64, what: &str) -> Result<(i64, i64)> {
        let size = x.size();
        if size.len() != 4 || size[1] != channels || !x.is_floating_point() || size.contains(&0) {
            bail!("{what} has shape {size:?} ({:?}); expected a floating-point [batch, {channels}, height, width]", x.kind());
        }
        Ok((size[0], size[2] * size[3]))
    }

    /// `[B or 1, L, context_dim]`, broadcast to the batch.
    fn check_context(&self, context: &Tensor, batch: i64) -> Result<Tensor> {
        let size = context.size();
        let dim = self.info.config.unet.context_dim;
        match size.as_slice() {
            [b, l, d] if *d == dim && *l > 0 && (*b == batch || *b == 1) => Ok(context.expand([batch, *l, dim], false)),
            _ => bail!("text conditioning has shape {size:?}; expected [{batch} or 1, tokens, {dim}] — encode it with this model"),
        }
    }
}

/// Whether `e` is libtorch running out of memory (CUDA or the CPU allocator).
fn is_out_of_memory(e: &anyhow::Error) -> bool {
    let message = format!("{e:#}").to_lowercase();
    message.contains("out of memory") || message.contains("not enough memory")
}

/// Runs `f`, turning a libtorch failure (which tch raises as a panic; out of memory is
/// the usual one) into an error.
pub(crate) fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            let first_line = message.lines().next().unwrap_or(message);
            bail!("libtorch failed while {what}: {first_line} — if memory ran out, try a smaller size, fp16 or another device")
        }
    }
}
