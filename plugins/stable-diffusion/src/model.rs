//! The assembled model of any family: the conditioner (text encoders), the UNet behind the
//! eps / v denoiser wrapper, the VAE, the noise schedule.
use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{Checkpoint, Format};
use crate::denoiser::{self, PROBE_LATENT, PROBE_TIMESTEP, PROBE_VALUE};
use crate::families::{Family, Prediction, PredictionRule};
use crate::guard::guarded;
use crate::health;
use crate::layers::with_circular_padding;
use crate::lora::{LoraSpec, LoraState};
use crate::patches::PatchSet;
use crate::schedule::DiscreteSchedule;
use crate::text::clip::{ClipConfig, ClipTextTransformer};
use crate::text::conditioner::{Conditioner, Conditioning, PromptInput, TextEncoder};
use crate::text::tokenizer::CHUNK_TOKENS;
use crate::unet::{UNetConfig, UNetModel};
use crate::vae::runner::Vae;
use crate::vae::tiling::{VaeTilingMode, VaeTilingOptions};
use crate::vae::{AutoencoderKL, VaeConfig, VaePass};

/// The component configs of a model, read from its checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// One per text encoder of the family, in its order.
    pub encoders: Vec<ClipConfig>,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
}

impl ModelConfig {
    /// Everything read from `ckpt`'s tensor shapes (and diffusers configs), checked for consistency.
    pub fn infer(ckpt: &Checkpoint, family: &Family) -> Result<Self> {
        let cfg = Self {
            encoders: family
                .encoders
                .iter()
                .map(|spec| ClipConfig::infer(ckpt, spec))
                .collect::<Result<_>>()?,
            unet: UNetConfig::infer(ckpt, family.head_rule)?,
            vae: VaeConfig::infer(ckpt, family.scaling_factor)?,
        };
        cfg.validate()
            .map_err(|e| anyhow!("{}: {e}", ckpt.path().display()))?;
        Ok(cfg)
    }

    /// The checks that keep shape errors out of the forward passes.
    pub fn validate(&self) -> Result<()> {
        let (unet, vae) = (&self.unet, &self.vae);
        for clip in &self.encoders {
            if clip.vocab_size < 49408 || clip.max_positions < CHUNK_TOKENS as i64 {
                bail!(
                    "a text encoder has {} tokens and {} positions; CLIP needs 49408 and 77",
                    clip.vocab_size,
                    clip.max_positions
                );
            }
        }
        let text_width: i64 = self.encoders.iter().map(|c| c.hidden_size).sum();
        if unet.context_dim != text_width {
            bail!("the UNet expects {}-wide text but the text encoders give {text_width} — the checkpoint mixes two models", unet.context_dim);
        }
        if unet.out_channels != vae.embed_dim {
            bail!("the UNet works on {} latent channels but the VAE has {} — use a VAE of the same family", unet.out_channels, vae.embed_dim);
        }
        if unet.in_channels != vae.embed_dim {
            bail!("the UNet takes {} input channels (an inpainting or instruct model); those are not supported yet", unet.in_channels);
        }
        unet.validate()?;
        if let Some(w) = vae
            .ch_mult
            .iter()
            .map(|m| m * vae.ch)
            .find(|w| *w <= 0 || *w % crate::layers::NORM_GROUPS != 0)
        {
            bail!(
                "a VAE block {w} channels wide does not split into {} GroupNorm groups",
                crate::layers::NORM_GROUPS
            );
        }
        Ok(())
    }
}

/// The parameter prefixes the VAE's decoder reads.
fn decoder_prefixes() -> [String; 2] {
    let vae = crate::convert::VAE_PREFIX;
    [format!("{vae}decoder."), format!("{vae}post_quant_conv.")]
}

/// The modules, built under their model key paths in one VarStore.
pub(crate) struct Modules {
    pub encoders: Vec<ClipTextTransformer>,
    pub unet: UNetModel,
    pub vae: AutoencoderKL,
}

impl Modules {
    pub fn new(root: nn::Path, family: &Family, cfg: &ModelConfig) -> Result<Self> {
        let encoders = family
            .encoders
            .iter()
            .zip(&cfg.encoders)
            .map(|(spec, clip)| ClipTextTransformer::new(prefix_path(&root, spec.ldm_prefix), clip))
            .collect::<Result<_>>()?;
        Ok(Self {
            encoders,
            unet: unet_module(&root, &cfg.unet)?,
            vae: AutoencoderKL::new(&root / "first_stage_model", &cfg.vae)?,
        })
    }
}

/// The UNet alone under `model.diffusion_model`.
pub(crate) fn unet_module(root: &nn::Path, cfg: &UNetConfig) -> Result<UNetModel> {
    UNetModel::new(root / "model" / "diffusion_model", cfg)
}

/// `a.b.c.` → the VarStore path `a / b / c`.
fn prefix_path<'a>(root: &nn::Path<'a>, prefix: &str) -> nn::Path<'a> {
    let mut parts = prefix.split('.').filter(|p| !p.is_empty());
    let first = parts.next().unwrap_or("text_encoder");
    parts.fold(root.sub(first), |p, part| p.sub(part))
}

/// Where the prediction type came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionSource {
    Profile,
    VPredKey,
    SchedulerConfig,
    UNetProbe,
    FamilyDefault,
}

impl PredictionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionSource::Profile => "profile",
            PredictionSource::VPredKey => "v_pred key",
            PredictionSource::SchedulerConfig => "scheduler config",
            PredictionSource::UNetProbe => "UNet probe (A1111)",
            PredictionSource::FamilyDefault => "family default",
        }
    }
}

/// The prediction type `ckpt`'s files state, or `None` when the UNet must be probed.
pub fn stated_prediction(
    ckpt: &Checkpoint,
    family: &Family,
    wanted: Option<Prediction>,
) -> Result<Option<(Prediction, PredictionSource)>> {
    if let Some(p) = wanted {
        return Ok(Some((p, PredictionSource::Profile)));
    }
    if ckpt.raw_contains("v_pred") {
        return Ok(Some((Prediction::V, PredictionSource::VPredKey)));
    }
    if let Some(p) = ckpt.configs().prediction_type() {
        let p = Prediction::parse(&p)
            .map_err(|e| anyhow!("{}: scheduler prediction_type: {e}", ckpt.path().display()))?;
        return Ok(Some((p, PredictionSource::SchedulerConfig)));
    }
    let probe = family.prediction == PredictionRule::ProbeSingleFiles
        && ckpt.format() == Format::SingleFile;
    Ok((!probe).then_some((Prediction::Eps, PredictionSource::FamilyDefault)))
}

/// A checkpoint to merge into a model of `family`.
fn merge_input(path: &Path, family: &Family) -> Result<Checkpoint> {
    let ckpt = Checkpoint::open(path)?;
    let other = ckpt.family()?;
    if other.id != family.id {
        bail!(
            "merge: {} is {} but the first checkpoint is {} — only checkpoints of one family merge",
            path.display(),
            other.name,
            family.name
        );
    }
    Ok(ckpt)
}

/// A1111's probe for SD 2.x single files (`is_using_v_parameterization_for_sd2`): the mean of
/// `unet(0.5, t = 999, context = 0.5) - 0.5`.
pub fn probe_mean(unet: &UNetModel, device: Device, kind: Kind) -> Result<f64> {
    let cfg = unet.config();
    let opts = (kind, device);
    let x = Tensor::full(
        [1, cfg.in_channels, PROBE_LATENT, PROBE_LATENT],
        PROBE_VALUE,
        opts,
    );
    let t = Tensor::full([1], PROBE_TIMESTEP, (Kind::Float, device));
    let context = Tensor::full([1, 2, cfg.context_dim], PROBE_VALUE, opts);
    let y = cfg.adm_in_channels.map(|a| Tensor::zeros([1, a], opts));
    let out = tch::no_grad(|| unet.forward(&x, &t, &context, y.as_ref()))?;
    Ok(f64::try_from(
        (out - x).to_kind(Kind::Double).mean(Kind::Double),
    )?)
}

/// What the host needs to know about a loaded model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub family: &'static Family,
    pub prediction: Prediction,
    pub prediction_source: PredictionSource,
    pub latent_channels: i64,
    /// Pixels per latent cell along each side.
    pub vae_scale_factor: i64,
    pub scaling_factor: f64,
    /// e.g. `CLIP-L (12 layers, 768)`.
    pub text_encoders: String,
    /// The family's comfortable image side in pixels.
    pub default_size: i64,
    pub kind: Kind,
    pub device: Device,
    /// The inferred architecture.
    pub config: ModelConfig,
}

/// `CLIP-L (12 layers, 768) + OpenCLIP ViT-bigG (32 layers, 1280)`.
pub fn describe_encoders(family: &Family, configs: &[ClipConfig]) -> String {
    let parts: Vec<String> = family
        .encoders
        .iter()
        .zip(configs)
        .map(|(spec, c)| format!("{} ({} layers, {})", spec.name, c.num_layers, c.hidden_size))
        .collect();
    parts.join(" + ")
}

/// How to load a model besides the checkpoint path.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// A VAE `.safetensors` or diffusers `vae` folder replacing the checkpoint's.
    pub vae: Option<PathBuf>,
    pub device: Device,
    pub kind: Kind,
    pub vae_tiling: VaeTilingOptions,
    /// Overrides the detected prediction type.
    pub prediction: Option<Prediction>,
    /// A weighted-sum merge (checkpoint, weight) loaded instead of the checkpoint alone; its
    /// first entry is the checkpoint.
    pub merge: Vec<(PathBuf, f64)>,
    /// Seamless output: circular padding in every convolution of the UNet and the VAE.
    pub seamless: bool,
}

impl LoadOptions {
    pub fn new(device: Device, kind: Kind) -> Self {
        Self {
            vae: None,
            device,
            kind,
            vae_tiling: VaeTilingOptions::default(),
            prediction: None,
            merge: Vec::new(),
            seamless: false,
        }
    }
}

/// Conditioning rows built for a batch, and the tensors they were built from. Holding those
/// keeps their storage alive, so no other tensor can have their address while they are here:
/// the address, shape and type name them.
struct Prepared {
    inputs: Vec<Tensor>,
    batch: i64,
    context: Tensor,
    vector: Option<Tensor>,
}

impl Prepared {
    fn same_inputs(&self, inputs: &[&Tensor]) -> bool {
        self.inputs.len() == inputs.len()
            && self.inputs.iter().zip(inputs).all(|(a, b)| {
                a.data_ptr() == b.data_ptr()
                    && a.size() == b.size()
                    && a.stride() == b.stride()
                    && a.kind() == b.kind()
                    && a.device() == b.device()
            })
    }
}

/// Where a loaded model's weights came from (for a VAE swap).
struct Origin {
    checkpoint: PathBuf,
    merged: bool,
    /// The VAE override now in the model (`None`: the checkpoint's).
    vae: RefCell<Option<PathBuf>>,
}

pub struct SdModel {
    origin: Origin,
    conditioner: Conditioner,
    lora: RefCell<LoraState>,
    /// The last conditioning rows built for the UNet (see `conditioning_rows`).
    prepared: RefCell<Option<Prepared>>,
    /// The UNet patches of the current pass.
    patches: RefCell<PatchSet>,
    unet: UNetModel,
    vae: Vae,
    schedule: DiscreteSchedule,
    vs: VarStore,
    info: ModelInfo,
    /// The parts freed by [`SdModel::release`] (`host_api::backend::release` bits).
    released: Cell<u32>,
}

impl SdModel {
    /// `checkpoint`: a single-file LDM `.safetensors` or a diffusers folder;
    /// `vae_override`: a VAE file or folder replacing the checkpoint's. VAE tiling `auto`.
    pub fn load(
        checkpoint: &Path,
        vae_override: Option<&Path>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let mut options = LoadOptions::new(device, kind);
        options.vae = vae_override.map(Path::to_path_buf);
        Self::load_with(checkpoint, &options)
    }

    pub fn load_with(checkpoint: &Path, options: &LoadOptions) -> Result<Self> {
        options.vae_tiling.validate()?;
        let (device, kind) = (options.device, options.kind);
        if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
            bail!("dtype {kind:?} is not supported — use fp32, fp16 or bf16");
        }
        let mut ckpt = Checkpoint::open(checkpoint)?;
        let family = ckpt.family()?;
        if let Some(vae) = &options.vae {
            ckpt.use_vae(vae)?;
        }
        let config = ModelConfig::infer(&ckpt, family)?;
        let schedule = DiscreteSchedule::from_checkpoint(&ckpt)?;
        let stated = stated_prediction(&ckpt, family, options.prediction)?;
        let mut vs = VarStore::new(device);
        vs.set_kind(kind);
        let modules = guarded("building the model", || {
            with_circular_padding(options.seamless, || {
                Modules::new(vs.root(), family, &config)
            })
        })?;
        let others = options
            .merge
            .iter()
            .skip(1)
            .map(|(path, weight)| Ok((merge_input(path, family)?, *weight)))
            .collect::<Result<Vec<_>>>()?;
        guarded("loading weights", || match options.merge.first() {
            None => ckpt.copy_into(&vs, ""),
            Some((_, first)) => {
                let mut sources = vec![(&ckpt, *first)];
                sources.extend(others.iter().map(|(c, w)| (c, *w)));
                Checkpoint::copy_weighted_into(&sources, &vs, "")
            }
        })?;
        vs.freeze();
        let Modules {
            encoders,
            unet,
            vae,
        } = modules;
        let (prediction, prediction_source) = match stated {
            Some(found) => found,
            None => {
                let mean = guarded("probing the UNet", || probe_mean(&unet, device, kind))?;
                let p = match denoiser::probe_says_v(mean) {
                    true => Prediction::V,
                    false => Prediction::Eps,
                };
                log::info!(
                    "{}: UNet probe mean {mean:.4} → {}-prediction",
                    checkpoint.display(),
                    p.as_str()
                );
                (p, PredictionSource::UNetProbe)
            }
        };
        let encoders = family
            .encoders
            .iter()
            .zip(encoders)
            .map(|(spec, model)| TextEncoder { spec, model })
            .collect();
        let conditioner =
            Conditioner::new(encoders, family, config.unet.adm_in_channels, device, kind)?;
        let mut tiling = options.vae_tiling;
        if options.seamless {
            // Tiles would decode each part on its own and break the wrap-around.
            match tiling.mode {
                VaeTilingMode::On => bail!(
                    "seamless output cannot use VAE tiling; set vae_tiling = \"auto\" or \"off\""
                ),
                _ => tiling.mode = VaeTilingMode::Off,
            }
        }
        let vae = Vae::new(vae, &vs, tiling, device, kind)?;
        let info = ModelInfo {
            family,
            prediction,
            prediction_source,
            latent_channels: config.vae.embed_dim,
            vae_scale_factor: config.vae.spatial_factor(),
            scaling_factor: config.vae.scaling_factor,
            text_encoders: describe_encoders(family, &config.encoders),
            default_size: family.default_size(prediction),
            kind,
            device,
            config,
        };
        let lora = RefCell::new(LoraState::new(
            family,
            &info.config.unet,
            vs.variables().keys().map(String::as_str),
        ));
        Ok(Self {
            origin: Origin {
                checkpoint: checkpoint.to_path_buf(),
                merged: !options.merge.is_empty(),
                vae: RefCell::new(options.vae.clone()),
            },
            conditioner,
            lora,
            prepared: RefCell::new(None),
            patches: RefCell::new(PatchSet::default()),
            unet,
            vae,
            schedule,
            vs,
            info,
            released: Cell::new(0),
        })
    }

    /// Frees the parameters of `parts` ([`host_api::backend::release`] bits: text encoders,
    /// UNet, the VAE's encoder) — the host will not use them again (a one-shot run's last
    /// pass, then its final decodes, which then peak on the VAE decoder alone). With the UNet
    /// go the LoRA originals and the cached conditioning rows. A later call that needs a
    /// released part fails with a message.
    pub fn release(&self, parts: u32) {
        use host_api::backend::release::{TEXT_ENCODERS, UNET, VAE_ENCODER};
        let vae = crate::convert::VAE_PREFIX;
        let decoder = decoder_prefixes();
        let text: Vec<&str> = self
            .info
            .family
            .encoders
            .iter()
            .map(|e| e.ldm_prefix)
            .collect();
        let freed = |name: &str| {
            let is_text = text.iter().any(|prefix| name.starts_with(prefix));
            let is_vae = name.starts_with(vae);
            let is_decoder = decoder
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()));
            (parts & TEXT_ENCODERS != 0 && is_text)
                || (parts & VAE_ENCODER != 0 && is_vae && !is_decoder)
                || (parts & UNET != 0 && !is_text && !is_vae)
        };
        tch::no_grad(|| {
            for (name, mut var) in self.vs.variables() {
                if freed(&name) {
                    // Every module holds this same tensor: the storage goes for all of them.
                    let _ = var.set_();
                }
            }
        });
        if parts & UNET != 0 {
            self.lora.borrow_mut().forget();
            *self.prepared.borrow_mut() = None;
        }
        if parts & VAE_ENCODER != 0 {
            self.vae.encoder_released();
        }
        self.released.set(self.released.get() | parts);
    }

    /// An error when any of `parts` was released.
    fn check_live(&self, parts: u32, what: &str) -> Result<()> {
        match self.released.get() & parts {
            0 => Ok(()),
            _ => bail!("cannot {what}: that part of this model was freed for the run's last steps"),
        }
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn vae_tiling(&self) -> &VaeTilingOptions {
        self.vae.tiling()
    }

    /// Replaces the VAE's weights in place with those of `vae` (a file or diffusers folder),
    /// or with the checkpoint's own for `None`: a per-pass VAE without loading the checkpoint
    /// again. The VAE must have the loaded one's architecture; a merged model keeps its VAE.
    pub fn set_vae(&self, vae: Option<&Path>) -> Result<()> {
        if self.origin.vae.borrow().as_deref() == vae {
            return Ok(());
        }
        if self.origin.merged {
            bail!("a model merged at load time keeps the VAE it was loaded with");
        }
        let mut ckpt = Checkpoint::open(&self.origin.checkpoint)?;
        if let Some(vae) = vae {
            ckpt.use_vae(vae)?;
        }
        let config = VaeConfig::infer(&ckpt, self.info.family.scaling_factor)?;
        if config != self.info.config.vae {
            bail!(
                "{}: this VAE's architecture differs from the loaded model's — use a VAE of the same family",
                vae.map_or_else(|| self.origin.checkpoint.display().to_string(), |v| v.display().to_string())
            );
        }
        let encoder_released = self.released.get() & host_api::backend::release::VAE_ENCODER != 0;
        guarded("loading the VAE", || match encoder_released {
            false => ckpt.copy_into(&self.vs, crate::convert::VAE_PREFIX),
            true => decoder_prefixes()
                .iter()
                .try_for_each(|prefix| ckpt.copy_into(&self.vs, prefix)),
        })?;
        self.vae.parameters_changed()?;
        *self.origin.vae.borrow_mut() = vae.map(Path::to_path_buf);
        Ok(())
    }

    pub fn set_vae_tiling(&mut self, options: VaeTilingOptions) -> Result<()> {
        self.vae.set_tiling(options)
    }

    /// Ascending model sigma table, one per training timestep.
    pub fn sigmas(&self) -> Vec<f64> {
        self.schedule.sigmas().to_vec()
    }

    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    pub fn conditioner(&self) -> &Conditioner {
        &self.conditioner
    }

    /// Every parameter by its model key (shared with the modules: patching one in place, e.g.
    /// for LoRA, changes the model).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The conditioning of one prompt (`<lora:…>` tags are removed, not applied here).
    pub fn encode(&self, input: &PromptInput<'_>) -> Result<Conditioning> {
        self.check_live(host_api::backend::release::TEXT_ENCODERS, "encode a prompt")?;
        let cond = guarded("encoding the prompt", || {
            tch::no_grad(|| self.conditioner.encode(input))
        })?;
        let finite =
            health::is_finite(&cond.context) && cond.vector.as_ref().is_none_or(health::is_finite);
        if !finite {
            let vars = self.vs.variables();
            let bad = self
                .info
                .family
                .encoders
                .iter()
                .find_map(|e| health::first_nonfinite(&vars, e.ldm_prefix));
            bail!(
                "the text encoder produced NaN or inf for the prompt — {}",
                health::cause(bad, self.info.kind)
            );
        }
        Ok(cond)
    }

    /// Makes `set` the LoRA set the model runs with (empty: the base weights, bit for bit).
    /// Returns warnings for the user.
    pub fn set_loras(&self, set: &[LoraSpec]) -> Result<Vec<String>> {
        use host_api::backend::release::{TEXT_ENCODERS, UNET};
        self.check_live(UNET, "apply LoRA")?;
        if set != self.lora.borrow().current() {
            // Restoring or adding touches the text encoders' weights too.
            self.check_live(TEXT_ENCODERS, "change the LoRA set")?;
        }
        let vars = self.vs.variables();
        guarded("applying LoRA", || self.lora.borrow_mut().apply(&vars, set))
    }

    /// Makes `patches` the UNet patches every following UNet call runs with (empty: the plain
    /// UNet); `pass` is the sigma range of the pass they run in.
    pub fn set_patches(&self, patches: Vec<host_api::PatchBox>, pass: host_api::PassSigmas) {
        *self.patches.borrow_mut() = PatchSet::new(patches, pass);
    }

    /// The first parameter under `prefix` (all with "") holding NaN or inf.
    pub fn nonfinite_weight(&self, prefix: &str) -> Option<String> {
        health::first_nonfinite(&self.vs.variables(), prefix)
    }

    /// A positive prompt's conditioning at the family's default size; for tests and tools.
    pub fn encode_prompt(&self, prompt: &str, clip_skip: usize) -> Result<Conditioning> {
        let size = self.info.default_size;
        self.encode(&PromptInput {
            text: prompt,
            negative: false,
            clip_skip,
            width: size,
            height: size,
        })
    }

    /// The raw UNet output (noise or velocity) for latent `x` `[B, C, h, w]` at timesteps
    /// `t` (`[B]` or a scalar, fractional allowed) with `context` `[B or 1, L, D]` and, for
    /// SDXL, `vector` `[B or 1, adm]`. Returned in `x`'s dtype.
    pub fn unet_output(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        vector: Option<&Tensor>,
    ) -> Result<Tensor> {
        // Patches see the call's sigma: the timestep's, on the model's schedule.
        let sigma = match self.patches.borrow().is_empty() {
            true => 0.0,
            false => self
                .schedule
                .t_to_sigma(f64::try_from(t.flatten(0, -1).get(0))?),
        };
        self.unet_call(x, t, sigma, context, vector, 1)
    }

    /// [`unet_output`](Self::unet_output) at `sigma` (timestep `sigma_to_t(sigma)`), as the
    /// denoiser calls it.
    pub fn unet_output_at_sigma(
        &self,
        x: &Tensor,
        sigma: f64,
        context: &Tensor,
        vector: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.unet_at_sigma(x, sigma, context, vector, 1)
    }

    /// [`unet_output_at_sigma`](Self::unet_output_at_sigma) for rows in groups of `shared`
    /// with the same latent (see `UNetModel::forward_cfg`).
    fn unet_at_sigma(
        &self,
        x: &Tensor,
        sigma: f64,
        context: &Tensor,
        vector: Option<&Tensor>,
        shared: i64,
    ) -> Result<Tensor> {
        // Made on the device: no copy from the host (and no wait for it) per call.
        let t = Tensor::full(
            [1],
            self.schedule.sigma_to_t(sigma),
            (Kind::Float, self.info.device),
        );
        self.unet_call(x, &t, sigma, context, vector, shared)
    }

    /// The UNet call; `sigma` is what the pass's patches see; rows come in groups of
    /// `shared` with the same latent and timestep.
    fn unet_call(
        &self,
        x: &Tensor,
        t: &Tensor,
        sigma: f64,
        context: &Tensor,
        vector: Option<&Tensor>,
        shared: i64,
    ) -> Result<Tensor> {
        // Every UNet path (denoise, unet_output, unet_output_at_sigma) comes through here.
        self.check_live(host_api::backend::release::UNET, "run the UNet")?;
        let b = self.check_latent(x, self.info.config.unet.in_channels, "UNet input")?;
        let t = match t.numel() {
            1 => t.reshape([1]).expand([b], false),
            n if n as i64 == b && t.dim() <= 1 => t.reshape([b]),
            n => bail!("{n} timesteps for a batch of {b} — pass one per image or a scalar"),
        };
        let context = self.check_context(context, b)?;
        let vector = vector.map(|v| self.check_vector(v, b)).transpose()?;
        let patches = self.patches.borrow();
        let hooks = patches.at(sigma, self.unet.levels());
        guarded("running the UNet", || {
            let (device, kind) = (self.info.device, self.info.kind);
            let on = |t: &Tensor| t.to_device(device).to_kind(kind);
            let out = tch::no_grad(|| {
                self.unet.forward_cfg(
                    &on(x),
                    &t.to_device(device),
                    &on(&context),
                    vector.as_ref().map(on).as_ref(),
                    hooks.as_ref().map(|h| h as &dyn crate::unet::Hooks),
                    shared,
                )
            })?;
            Ok(out.to_kind(x.kind()))
        })
    }

    /// The denoised latent at `sigma` for each conditioning, in one batched UNet call: k-diffusion
    /// `CompVisDenoiser` (eps) or `CompVisVDenoiser` (v) with `t = sigma_to_t(sigma)`
    /// unquantised. Contexts of different lengths (prompts of different chunk counts) are
    /// repeated to a common length, which leaves cross-attention unchanged (ComfyUI's
    /// `CONDCrossAttn.concat`); when that would more than quadruple one, they run apart, as
    /// A1111 does.
    pub fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&Conditioning]) -> Result<Vec<Tensor>> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            bail!("sigma {sigma} is not a finite non-negative number");
        }
        if conds.is_empty() {
            bail!("no conditioning to denoise with");
        }
        let batch = x.size()[0];
        if conds.len() == 1 && batch > 1 {
            // One row per image: a batched call would run the convolutions at another batch
            // size than the image's single run (batch 1), where the CPU kernels pick another
            // algorithm and round differently. Image by image keeps each bit-identical.
            let each = (0..batch)
                .map(|i| Ok(self.denoise(&x.narrow(0, i, 1), sigma, conds)?.remove(0)))
                .collect::<Result<Vec<_>>>()?;
            return Ok(vec![Tensor::f_cat(&each, 0)?]);
        }
        let lengths: Vec<i64> = conds.iter().map(|c| c.context.size()[1]).collect();
        let common = lengths.iter().fold(1, |a, b| lcm(a, *b));
        if lengths.iter().any(|l| common / l > 4) {
            return conds
                .iter()
                .map(|c| Ok(self.denoise(x, sigma, &[c])?.remove(0)))
                .collect();
        }
        let n = conds.len() as i64;
        let (context, vector) = self.conditioning_rows(conds, batch, common)?;
        let xs = x.repeat_interleave_self_int(n, 0, None);
        let out = crate::layers::with_images(batch, || {
            // Each image's n rows share its latent: the UNet runs what comes before the
            // text context once per image.
            self.unet_at_sigma(
                &(&xs * denoiser::input_scale(sigma)),
                sigma,
                &context,
                vector.as_ref(),
                n,
            )
        })?;
        let (c_skip, c_out) = denoiser::output_scales(self.info.prediction, sigma);
        let denoised = xs.to_device(out.device()) * c_skip + out * c_out;
        let mut rows = vec![batch, n];
        rows.extend_from_slice(&denoised.size()[1..]);
        let denoised = denoised.view(rows.as_slice());
        Ok((0..n).map(|j| denoised.select(1, j)).collect())
    }

    /// The UNet's text and vector conditioning for `batch` images, image-major (image i's rows
    /// are its conditionings in order, so each image's part of the call has the shapes of its
    /// single run: see `layers::per_image`), on the device. A pass passes the same tensors at
    /// every step, so the rows are built once and reused while the inputs are the same.
    fn conditioning_rows(
        &self,
        conds: &[&Conditioning],
        batch: i64,
        common: i64,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let inputs: Vec<&Tensor> = conds
            .iter()
            .flat_map(|c| std::iter::once(&c.context).chain(c.vector.as_ref()))
            .collect();
        if let Some(p) = self.prepared.borrow().as_ref() {
            if p.batch == batch && p.same_inputs(&inputs) {
                return Ok((
                    p.context.shallow_clone(),
                    p.vector.as_ref().map(Tensor::shallow_clone),
                ));
            }
        }
        let (device, kind) = (self.info.device, self.info.kind);
        let all_images = |ts: Vec<Tensor>| -> Result<Tensor> {
            let one = Tensor::f_cat(&ts, 0)?;
            let mut shape = vec![batch];
            shape.extend(std::iter::repeat_n(1, one.dim() - 1));
            Ok(one.repeat(shape.as_slice()).to_device(device).to_kind(kind))
        };
        let context = all_images(
            conds
                .iter()
                .map(|c| c.context.repeat([1, common / c.context.size()[1], 1]))
                .collect(),
        )?;
        let vector = match conds
            .iter()
            .map(|c| c.vector.as_ref())
            .collect::<Option<Vec<_>>>()
        {
            Some(v) => Some(all_images(v.iter().map(|t| t.shallow_clone()).collect())?),
            None => None,
        };
        *self.prepared.borrow_mut() = Some(Prepared {
            inputs: inputs.iter().map(|t| t.shallow_clone()).collect(),
            batch,
            context: context.shallow_clone(),
            vector: vector.as_ref().map(Tensor::shallow_clone),
        });
        Ok((context, vector))
    }

    /// Scaled latent → raw pixels, about [-1, 1], unclamped; in the latent's dtype. Tiled as
    /// [`Self::vae_tiling`] says; half precision that overflows is retried in fp32.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.check_latent(latent, self.info.latent_channels, "latent")?;
        self.vae.run(VaePass::Decode, latent)
    }

    /// Pixels `[B, 3, H, W]` in [-1, 1] → scaled latent (posterior mean), in the image's dtype.
    pub fn encode_image(&self, image: &Tensor) -> Result<Tensor> {
        self.check_live(
            host_api::backend::release::VAE_ENCODER,
            "VAE-encode an image",
        )?;
        let channels = self.info.config.vae.in_channels;
        self.check_latent(image, channels, "image")?;
        self.vae.run(VaePass::Encode, image)
    }

    /// A1111's v-prediction probe on this model's UNet (see [`probe_mean`]).
    pub fn probe_mean(&self) -> Result<f64> {
        guarded("probing the UNet", || {
            probe_mean(&self.unet, self.info.device, self.info.kind)
        })
    }

    /// `[B, channels, h, w]` floating point, else a clear error. Returns `B`.
    fn check_latent(&self, x: &Tensor, channels: i64, what: &str) -> Result<i64> {
        let size = x.size();
        if size.len() != 4 || size[1] != channels || !x.is_floating_point() || size.contains(&0) {
            bail!("{what} has shape {size:?} ({:?}); expected a floating-point [batch, {channels}, height, width]", x.kind());
        }
        Ok(size[0])
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

    /// `[B or 1, adm]`, broadcast to the batch.
    fn check_vector(&self, vector: &Tensor, batch: i64) -> Result<Tensor> {
        let size = vector.size();
        let dim = self.info.config.unet.adm_in_channels.unwrap_or(0);
        match size.as_slice() {
            [b, d] if *d == dim && (*b == batch || *b == 1) => Ok(vector.expand([batch, dim], false)),
            _ => bail!("vector conditioning has shape {size:?}; expected [{batch} or 1, {dim}] — encode it with this model"),
        }
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: i64, b: i64) -> i64 {
    a / gcd(a, b) * b
}
