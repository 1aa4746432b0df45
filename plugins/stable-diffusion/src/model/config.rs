//! What a model is made of and how it was loaded, as plain data: the component configs read
//! from a checkpoint ([`ModelConfig`]), what the host needs to know about a loaded model
//! ([`ModelInfo`]), and the options of a load ([`LoadOptions`]).
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use tch::{Device, Kind};

use super::prediction::PredictionSource;
use crate::checkpoint::Checkpoint;
use crate::detect::clip::clip_config;
use crate::families::{Family, Prediction, UNET_INPUTS};
use crate::text::clip::ClipConfig;
use crate::text::tokenizer::CHUNK_TOKENS;
use crate::unet::config::UNetConfig;
use crate::vae::tiling::VaeTilingOptions;
use crate::vae::{LatentScale, VaeConfig};

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
                .map(|spec| clip_config(ckpt, spec))
                .collect::<Result<_>>()?,
            unet: UNetConfig::infer(ckpt, family.head_rule)?,
            vae: VaeConfig::infer(
                ckpt,
                ckpt.configs().vae.as_ref(),
                LatentScale::scaling(family.scaling_factor),
            )?,
        };
        cfg.validate()
            .map_err(|e| anyhow!("{}: {e}", ckpt.path().display()))?;
        Ok(cfg)
    }

    /// Channels of image conditioning the UNet takes after the latent's (`concat_channels`:
    /// 5 for an inpainting checkpoint, else 0).
    pub fn concat_channels(&self) -> i64 {
        self.unet.in_channels - self.vae.embed_dim
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
        let concat = unet.in_channels - vae.embed_dim;
        if !UNET_INPUTS
            .iter()
            .any(|i| i.supported && i.concat == concat)
        {
            bail!("the UNet takes {} input channels for a {}-channel latent; only text-to-image (4) and inpainting (9) UNets run", unet.in_channels, vae.embed_dim);
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

impl ModelInfo {
    /// The info of a model of `family` with architecture `config`, predicting `prediction`.
    pub fn new(
        family: &'static Family,
        prediction: Prediction,
        prediction_source: PredictionSource,
        config: ModelConfig,
        device: Device,
        kind: Kind,
    ) -> Self {
        Self {
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
        }
    }
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
