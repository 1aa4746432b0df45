//! A loaded SD3 model: the text encoders, the MMDiT and the 16-channel VAE, with what the
//! host asks of a flow model — D(x, σ) = x − σ·v (the transformer called at timestep σ·1000),
//! and the VAE's `(z − shift)·scaling` latents — and the parts the host releases
//! (host-api `release` bits) freed as the UNet backend frees them: the text encoders once the
//! last pass has encoded its prompts, all but the VAE decoder before the final decodes.
use std::cell::{Cell, RefCell};

use anyhow::{anyhow, bail, Result};
use hiresfix_model_parts::convert::VAE_PREFIX;
use hiresfix_model_parts::text::clip::{Activation, ClipConfig, ClipTextTransformer};
use hiresfix_model_parts::text::clip_config::ClipSlot;
use hiresfix_model_parts::text::tokenizer::ClipTokenizer;
use hiresfix_model_parts::vae::{AutoencoderKL, LatentScale, VaeConfig};
use host_api::backend::release::{TEXT_ENCODERS, UNET, VAE_ENCODER};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use super::conditioning::{PromptEmbeds, TextEncoders};
use super::detect::Sd3Layout;
use super::files::Sd3Files;
use super::names::{CLIP_G_PREFIX, CLIP_L_PREFIX};
use crate::mmdit::LoadedMmDit;
use crate::t5::{T5Encoder, T5Tokenizer};

pub struct Sd3Model {
    /// `None` once released.
    text: RefCell<Option<TextEncoders>>,
    /// What [`Self::describe_text_encoders`] says (kept past their release).
    text_description: String,
    pub transformer: LoadedMmDit,
    pub vae: AutoencoderKL,
    /// The CLIP encoders' and the VAE's parameters.
    parts: VarStore,
    /// The parts freed so far (`host_api::backend::release` bits).
    released: Cell<u32>,
    pub layout: Sd3Layout,
    pub shift: f64,
    /// `None` with T5; else why the model runs without it.
    pub t5_absent: Option<String>,
    pub device: Device,
    pub kind: Kind,
}

/// Parameter elements each part of a loaded model holds now ([`Sd3Model::held`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub clip_l: i64,
    pub clip_g: i64,
    pub t5: i64,
    pub transformer: i64,
    pub vae_encoder: i64,
    pub vae_decoder: i64,
}

/// The VAE's variables an encode alone uses.
fn is_vae_encoder(name: &str) -> bool {
    ["encoder.", "quant_conv."]
        .iter()
        .any(|part| name.starts_with(&format!("{VAE_PREFIX}{part}")))
}

/// `a.b.c.` → the VarStore path `a / b / c`.
fn prefix_path<'a>(root: &nn::Path<'a>, prefix: &str) -> nn::Path<'a> {
    let mut parts = prefix.split('.').filter(|p| !p.is_empty());
    let first = parts.next().unwrap_or("model");
    parts.fold(root.sub(first), |p, part| p.sub(part))
}

impl Sd3Model {
    pub fn load(files: Sd3Files, device: Device, kind: Kind) -> Result<Self> {
        let weights = &files.weights;
        let mut parts = VarStore::new(device);
        let root = parts.root();
        let clip = |name, prefix, activation, json: &Option<serde_json::Value>| {
            let slot = ClipSlot {
                name,
                prefix,
                activation,
                pooled: false,
                config: json.as_ref().map(|j| (name, j)),
            };
            let mut cfg = ClipConfig::infer(weights, &slot)?;
            // CLIP-L without a projection pools unprojected: an identity projection.
            cfg.projection_dim.get_or_insert(cfg.hidden_size);
            Ok::<_, anyhow::Error>(cfg)
        };
        let l_cfg = clip(
            "CLIP-L",
            CLIP_L_PREFIX,
            Activation::QuickGelu,
            &files.clip_l_json,
        )?;
        let g_cfg = clip(
            "CLIP-G",
            CLIP_G_PREFIX,
            Activation::Gelu,
            &files.clip_g_json,
        )?;
        let clip_l = ClipTextTransformer::new(prefix_path(&root, CLIP_L_PREFIX), &l_cfg)?;
        let clip_g = ClipTextTransformer::new(prefix_path(&root, CLIP_G_PREFIX), &g_cfg)?;
        let vae_cfg = VaeConfig::infer(weights, files.vae_json.as_ref(), LatentScale::SD3)?;
        let vae = AutoencoderKL::new(prefix_path(&root, VAE_PREFIX), &vae_cfg)?;
        parts.set_kind(kind);
        for prefix in [
            format!("{CLIP_L_PREFIX}text_model."),
            CLIP_G_PREFIX.to_string(),
            VAE_PREFIX.to_string(),
        ] {
            weights.copy_into(&parts, &prefix)?;
        }
        let projection = format!("{CLIP_L_PREFIX}text_projection.weight");
        let mut vars = parts.variables();
        let var = vars
            .get_mut(&projection)
            .ok_or_else(|| anyhow!("CLIP-L has no projection variable"))?;
        tch::no_grad(|| match weights.contains(&projection) {
            true => weights.read(&projection).map(|t| {
                var.copy_(&t);
            }),
            false => {
                var.copy_(&Tensor::eye(l_cfg.hidden_size, (kind, device)));
                Ok(())
            }
        })?;
        parts.freeze();
        let transformer = files.load_transformer(device, kind)?;
        let t5_device = files.t5_placement.device(device);
        let (t5, t5_absent) = match files.t5 {
            Ok((w, tokenizer)) => {
                let encoder = T5Encoder::new(w, t5_device, kind)?;
                (Some((encoder, T5Tokenizer::from_file(&tokenizer)?)), None)
            }
            Err(why) => (None, Some(why)),
        };
        let text = TextEncoders {
            clip_l,
            clip_g,
            t5,
            tokenizer: ClipTokenizer::new(),
            joint_dim: transformer.model.config().joint_attention_dim,
            device,
            encoded: Default::default(),
        };
        Ok(Self {
            text_description: text.describe(),
            text: RefCell::new(Some(text)),
            transformer,
            vae,
            parts,
            released: Cell::new(0),
            layout: files.layout,
            shift: files.shift,
            t5_absent,
            device,
            kind,
        })
    }

    pub fn encode_prompt(&self, prompt: &str, clip_skip: usize) -> Result<PromptEmbeds> {
        let text = self.text.borrow();
        let Some(text) = text.as_ref() else {
            bail!("cannot encode a prompt: the text encoders were freed for the run's last steps");
        };
        let e = text.encode(prompt, clip_skip)?;
        Ok(PromptEmbeds {
            context: e.context.to_kind(self.kind),
            pooled: e.pooled.to_kind(self.kind),
        })
    }

    /// The velocity at `timestep` (σ·1000) for a batch.
    pub fn velocity(
        &self,
        x: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        self.check_live(UNET, "run the transformer")?;
        let run = |t: &Tensor| t.to_device(self.device).to_kind(self.kind);
        let patch = self.transformer.model.config().patch_size;
        let v = tch::no_grad(|| {
            crate::common::denoise::on_patches(&run(x), patch, |x| {
                self.transformer.model.forward(
                    x,
                    &timestep.to_device(self.device).to_kind(self.kind),
                    &run(context),
                    &run(pooled),
                )
            })
        })?;
        Ok(v.to_device(x.device()).to_kind(x.kind()))
    }

    /// D(x, σ) = x − σ·v for each conditioning `[context, pooled]`; one transformer call when
    /// their token counts agree.
    pub fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&[Tensor]]) -> Result<Vec<Tensor>> {
        let bundle = (2, "[context, pooled] (SD3)");
        crate::common::denoise::denoise(x, sigma, conds, bundle, |xs, c| {
            let t = Tensor::full([xs.size()[0]], sigma * 1000.0, (Kind::Float, xs.device()));
            self.velocity(xs, &t, &c[0], &c[1])
        })
    }

    /// Scaled latent → pixels in about [-1, 1] (raw).
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        crate::common::vae::decode(&self.vae, latent, self.device, self.kind)
    }

    /// Pixels in [-1, 1] → scaled latent (the posterior mean).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        self.check_live(VAE_ENCODER, "VAE-encode an image")?;
        crate::common::vae::encode(&self.vae, image, self.device, self.kind)
    }

    /// `CLIP-L (n layers, w) + OpenCLIP bigG (…) + T5 (…)` or `… + T5 absent`.
    pub fn describe_text_encoders(&self) -> String {
        self.text_description.clone()
    }

    /// T5's device (`None` without T5 or once released).
    pub fn t5_device(&self) -> Option<Device> {
        let text = self.text.borrow();
        text.as_ref()?.t5.as_ref().map(|(e, _)| e.device())
    }

    /// Frees `parts` (`host_api::backend::release` bits): the host will not use them again.
    /// The text encoders go whole (CLIP-L, CLIP-G and T5: a prompt encoded after this is
    /// refused); the transformer's parameters; the VAE's encoder half. The decoder stays.
    pub fn release(&self, parts: u32) {
        let freed = |name: &str| {
            let text = name.starts_with(CLIP_L_PREFIX) || name.starts_with(CLIP_G_PREFIX);
            (parts & TEXT_ENCODERS != 0 && text)
                || (parts & VAE_ENCODER != 0 && is_vae_encoder(name))
        };
        let mut vars: Vec<Tensor> = self
            .parts
            .variables()
            .into_iter()
            .filter(|(name, _)| freed(name))
            .map(|(_, v)| v)
            .collect();
        if parts & UNET != 0 {
            vars.extend(self.transformer.var_store.variables().into_values());
        }
        tch::no_grad(|| {
            for var in &mut vars {
                // Every module holding this tensor shares its storage: it goes for all.
                let _ = var.set_();
            }
        });
        if parts & TEXT_ENCODERS != 0 {
            // T5's tensors are its own: dropping it frees them.
            self.text.borrow_mut().take();
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

    /// The parameter elements each part holds now.
    pub fn held(&self) -> Held {
        let vars = self.parts.variables();
        let sum = |keep: &dyn Fn(&str) -> bool| -> i64 {
            vars.iter()
                .filter(|(name, _)| keep(name))
                .map(|(_, v)| v.numel() as i64)
                .sum()
        };
        let t5 = self
            .text
            .borrow()
            .as_ref()
            .map_or(0, |t| t.t5.as_ref().map_or(0, |(e, _)| e.parameters()));
        Held {
            clip_l: sum(&|n| n.starts_with(CLIP_L_PREFIX)),
            clip_g: sum(&|n| n.starts_with(CLIP_G_PREFIX)),
            t5,
            transformer: self
                .transformer
                .var_store
                .variables()
                .values()
                .map(|v| v.numel() as i64)
                .sum(),
            vae_encoder: sum(&|n| is_vae_encoder(n)),
            vae_decoder: sum(&|n| n.starts_with(VAE_PREFIX) && !is_vae_encoder(n)),
        }
    }
}
