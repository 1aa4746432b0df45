//! A loaded SD3 model: the text encoders, the MMDiT and the 16-channel VAE, with what the
//! host asks of a flow model — D(x, σ) = x − σ·v (the transformer called at timestep σ·1000),
//! and the VAE's `(z − shift)·scaling` latents.
use anyhow::{anyhow, Result};
use hiresfix_model_parts::convert::VAE_PREFIX;
use hiresfix_model_parts::text::clip::{Activation, ClipConfig, ClipTextTransformer};
use hiresfix_model_parts::text::clip_config::ClipSlot;
use hiresfix_model_parts::text::tokenizer::ClipTokenizer;
use hiresfix_model_parts::vae::{AutoencoderKL, LatentScale, VaeConfig};
use tch::nn::{self, VarStore};
use tch::{Device, Kind, Tensor};

use super::conditioning::{PromptEmbeds, TextEncoders};
use super::detect::Sd3Layout;
use super::files::Sd3Files;
use super::names::{CLIP_G_PREFIX, CLIP_L_PREFIX};
use crate::mmdit::LoadedMmDit;
use crate::t5::{T5Encoder, T5Tokenizer};

pub struct Sd3Model {
    pub text: TextEncoders,
    pub transformer: LoadedMmDit,
    pub vae: AutoencoderKL,
    /// The text encoders' and the VAE's parameters.
    _parts: VarStore,
    pub layout: Sd3Layout,
    pub shift: f64,
    /// `None` with T5; else why the model runs without it.
    pub t5_absent: Option<String>,
    pub device: Device,
    pub kind: Kind,
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
        let (t5, t5_absent) = match files.t5 {
            Ok((w, tokenizer)) => {
                let encoder = T5Encoder::new(w, device, kind)?;
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
        };
        Ok(Self {
            text,
            transformer,
            vae,
            _parts: parts,
            layout: files.layout,
            shift: files.shift,
            t5_absent,
            device,
            kind,
        })
    }

    pub fn encode_prompt(&self, prompt: &str, clip_skip: usize) -> Result<PromptEmbeds> {
        let e = self.text.encode(prompt, clip_skip)?;
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
        let run = |t: &Tensor| t.to_device(self.device).to_kind(self.kind);
        let v = tch::no_grad(|| {
            self.transformer.model.forward(
                &run(x),
                &timestep.to_device(self.device).to_kind(self.kind),
                &run(context),
                &run(pooled),
            )
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
        crate::common::vae::encode(&self.vae, image, self.device, self.kind)
    }

    /// `CLIP-L (n layers, w) + OpenCLIP bigG (…) + T5 (…)` or `… + T5 absent`.
    pub fn describe_text_encoders(&self) -> String {
        let clip = |name: &str, c: &ClipConfig| {
            format!("{name} ({} layers, {})", c.num_layers, c.hidden_size)
        };
        let t5 = match &self.text.t5 {
            Some((e, _)) => format!(
                "T5 ({} layers, {})",
                e.config().num_layers,
                e.config().d_model
            ),
            None => "T5 absent".to_string(),
        };
        format!(
            "{} + {} + {t5}",
            clip("CLIP-L", self.text.clip_l.config()),
            clip("OpenCLIP bigG", self.text.clip_g.config())
        )
    }
}
