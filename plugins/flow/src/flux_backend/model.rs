//! A loaded Flux model: CLIP-L, T5, the transformer and the 16-channel VAE, with what the host
//! asks of a flow model — D(x, σ) = x − σ·v (the transformer called on the 2×2-packed latent at
//! timestep σ, dev with its distilled guidance) and the VAE's `(z − shift)·scaling` latents,
//! and the pass's LoRA set merged into the transformer (`crate::lora::FluxLoras`).
use std::cell::{Cell, RefCell};
use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use hiresfix_model_parts::convert::VAE_PREFIX;
use hiresfix_model_parts::text::clip::{Activation, ClipConfig, ClipTextTransformer};
use hiresfix_model_parts::text::clip_config::ClipSlot;
use hiresfix_model_parts::text::tokenizer::ClipTokenizer;
use hiresfix_model_parts::vae::{AutoencoderKL, LatentScale, VaeConfig};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::conditioning::{PromptEmbeds, TextEncoders};
use super::detect::FluxLayout;
use super::files::FluxFiles;
use super::names::CLIP_L_PREFIX;
use super::shift::ShiftRule;
use crate::flux::{image_ids, pack, text_ids, unpack, LoadedFlux, Variant};
use crate::layers::prefix_path;
use crate::lora::{FluxLoras, LoraFile};
use crate::t5::{T5Encoder, T5Tokenizer, FLUX_DEV_MAX_LENGTH, FLUX_SCHNELL_MAX_LENGTH};

pub struct FluxModel {
    /// `None` once released (host-api `release`: T5's weights freed after the last encode).
    pub text: RefCell<Option<TextEncoders>>,
    pub transformer: LoadedFlux,
    /// The transformer's parameters (shared with its modules: a LoRA merged here is the
    /// model's) and the LoRA set merged into them.
    transformer_vars: HashMap<String, Tensor>,
    loras: RefCell<FluxLoras>,
    /// Whether the transformer's parameters were freed (host-api `release` `UNET`).
    transformer_freed: Cell<bool>,
    pub vae: AutoencoderKL,
    /// CLIP-L's and the VAE's parameters.
    _parts: VarStore,
    pub layout: FluxLayout,
    pub variant: Variant,
    pub shift: ShiftRule,
    pub device: Device,
    pub kind: Kind,
}

impl FluxModel {
    pub fn load(files: FluxFiles, device: Device, kind: Kind) -> Result<Self> {
        let weights = &files.weights;
        let mut parts = VarStore::new(device);
        let root = parts.root();
        let slot = ClipSlot {
            name: "CLIP-L",
            prefix: CLIP_L_PREFIX,
            activation: Activation::QuickGelu,
            pooled: false,
            config: files.clip_l_json.as_ref().map(|j| ("text_encoder", j)),
        };
        let mut clip_cfg = ClipConfig::infer(weights, &slot)?;
        // Pooled unprojected: an identity projection.
        clip_cfg.projection_dim = Some(clip_cfg.hidden_size);
        let clip_l = ClipTextTransformer::new(prefix_path(&root, CLIP_L_PREFIX), &clip_cfg)?;
        let vae_cfg = VaeConfig::infer(weights, files.vae_json.as_ref(), LatentScale::FLUX)?;
        let vae = AutoencoderKL::new(prefix_path(&root, VAE_PREFIX), &vae_cfg)?;
        parts.set_kind(kind);
        weights.copy_into(&parts, &format!("{CLIP_L_PREFIX}text_model."))?;
        weights.copy_into(&parts, VAE_PREFIX)?;
        let projection = format!("{CLIP_L_PREFIX}text_projection.weight");
        let mut vars = parts.variables();
        let var = vars
            .get_mut(&projection)
            .ok_or_else(|| anyhow!("CLIP-L has no projection variable"))?;
        tch::no_grad(|| var.copy_(&Tensor::eye(clip_cfg.hidden_size, (kind, device))));
        parts.freeze();
        // `weight_dtype = "fp8_e4m3fn"`: the linear weights made and filled in fp8.
        let linear_kind = match files.fp8_weights {
            true => Kind::Float8e4m3fn,
            false => kind,
        };
        let transformer = crate::flux::load_held(&files.path, None, device, (kind, linear_kind))?;
        let transformer_vars = transformer.vs.variables();
        let name = match files.variant {
            Variant::Dev => "Flux.1-dev",
            Variant::Schnell => "Flux.1-schnell",
        };
        let loras = FluxLoras::new(&transformer_vars, name);
        let config = transformer.config();
        if config.variant() != files.variant {
            bail!(
                "{}: the transformer is {} but the checkpoint reads as {}",
                files.path.display(),
                config.variant().family(),
                files.variant.family()
            );
        }
        let (t5_weights, tokenizer) = files.t5;
        let t5_device = files.t5_placement.device(device);
        let text = TextEncoders {
            clip_l,
            t5: T5Encoder::new(t5_weights, t5_device, kind)?,
            t5_tokenizer: T5Tokenizer::from_file(&tokenizer)?,
            tokenizer: ClipTokenizer::new(),
            max_length: match files.variant {
                Variant::Dev => FLUX_DEV_MAX_LENGTH,
                Variant::Schnell => FLUX_SCHNELL_MAX_LENGTH,
            },
            joint_dim: config.joint_attention_dim,
            pooled_dim: config.pooled_projection_dim,
            device,
            encoded: Default::default(),
        };
        Ok(Self {
            text: RefCell::new(Some(text)),
            transformer,
            transformer_vars,
            loras: RefCell::new(loras),
            transformer_freed: Cell::new(false),
            vae,
            _parts: parts,
            layout: files.layout,
            variant: files.variant,
            shift: files.shift,
            device,
            kind,
        })
    }

    pub fn encode_prompt(&self, prompt: &str) -> Result<PromptEmbeds> {
        let text = self.text.borrow();
        let Some(text) = text.as_ref() else {
            bail!("Flux: the text encoders were released (no prompt is encoded after the last pass's)");
        };
        let e = text.encode(prompt)?;
        Ok(PromptEmbeds {
            context: e.context.to_kind(self.kind),
            pooled: e.pooled.to_kind(self.kind),
        })
    }

    /// The velocity of latents `x` `[B, 16, h, w]` at `sigma` `[B]` with `guidance` `[B]`
    /// (dev), T5 states `context` and `pooled` CLIP-L.
    pub fn velocity(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        guidance: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        if self.transformer_freed.get() {
            bail!("cannot run the transformer: it was freed for the run's last decodes");
        }
        let run = |t: &Tensor| t.to_device(self.device).to_kind(self.kind);
        let v = tch::no_grad(|| {
            crate::common::denoise::on_patches(&run(x), 2, |x| {
                let (h, w) = (x.size()[2], x.size()[3]);
                let v = self.transformer.model.forward(
                    &pack(x)?,
                    &run(sigma),
                    Some(&run(guidance)),
                    &run(context),
                    &run(pooled),
                    &image_ids(h, w, self.device),
                    &text_ids(context.size()[1], self.device),
                )?;
                unpack(&v, h, w)
            })
        })?;
        Ok(v.to_device(x.device()).to_kind(x.kind()))
    }

    /// D(x, σ) = x − σ·v for each conditioning `[context, pooled, guidance]`; one transformer
    /// call when their token counts agree.
    pub fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&[Tensor]]) -> Result<Vec<Tensor>> {
        let bundle = (3, "[context, pooled, guidance] (Flux)");
        crate::common::denoise::denoise(x, sigma, conds, bundle, |xs, c| {
            let t = Tensor::full([xs.size()[0]], sigma, (Kind::Float, xs.device()));
            self.velocity(xs, &t, &c[2], &c[0], &c[1])
        })
    }

    /// Scaled latent → pixels in about [-1, 1] (raw).
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        crate::common::vae::decode(&self.vae, latent, self.device, self.kind)
    }

    /// Pixels in [-1, 1] → scaled latent (the posterior mean).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        crate::common::vae::encode(&self.vae, image, self.device, self.kind)
    }

    /// Makes `set` the LoRA set merged into the transformer (empty: the base weights, bit for
    /// bit); returns warnings (layers skipped). A refused LoRA leaves the base weights.
    pub fn set_loras(&self, set: &[LoraFile]) -> Result<Vec<String>> {
        self.loras.borrow_mut().apply(&self.transformer_vars, set)
    }

    /// Frees the transformer's parameters (the host denoises no more) and the base weights the
    /// LoRA state kept for them.
    pub fn release_transformer(&self) {
        self.loras.borrow_mut().forget();
        tch::no_grad(|| {
            for var in self.transformer_vars.values() {
                // The modules hold this tensor's storage too: it goes for all.
                let _ = var.shallow_clone().set_();
            }
        });
        self.transformer_freed.set(true);
    }

    /// T5's device (`None` once released): the run's, or the CPU with `t5 = "cpu"`.
    pub fn t5_device(&self) -> Option<Device> {
        self.text.borrow().as_ref().map(|t| t.t5.device())
    }

    /// Frees T5 (its own tensors) and drops CLIP-L's module (its weights stay with the VAE's).
    pub fn release_text_encoders(&self) {
        self.text.borrow_mut().take();
    }

    /// `CLIP-L (n layers, w, pooled) + T5 (n layers, w)`, or `released`.
    pub fn describe_text_encoders(&self) -> String {
        let text = self.text.borrow();
        let Some(text) = text.as_ref() else {
            return "released".into();
        };
        let c = text.clip_l.config();
        let t = text.t5.config();
        format!(
            "CLIP-L ({} layers, {}, pooled only) + T5 ({} layers, {})",
            c.num_layers, c.hidden_size, t.num_layers, t.d_model
        )
    }
}
