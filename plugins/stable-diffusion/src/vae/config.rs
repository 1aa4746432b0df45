//! VAE hyper-parameters, read from a checkpoint's tensor shapes.
use anyhow::{bail, Result};

use crate::checkpoint::Checkpoint;
use crate::convert::VAE_PREFIX;

/// VAE hyper-parameters (LDM `ddconfig` plus the latent scaling factor).
#[derive(Debug, Clone, PartialEq)]
pub struct VaeConfig {
    /// Image channels in (3).
    pub in_channels: i64,
    /// Image channels out (3).
    pub out_channels: i64,
    /// Width of the first level (128 for SD).
    pub ch: i64,
    /// Width of each level as a multiple of `ch`; the image is halved between levels.
    pub ch_mult: Vec<i64>,
    /// ResnetBlocks per encoder level (the decoder has one more).
    pub num_res_blocks: usize,
    /// Channels of the encoder output / decoder input (`z`).
    pub z_channels: i64,
    /// Latent channels after `quant_conv` (what the UNet sees).
    pub embed_dim: i64,
    /// Latents are `posterior mean × scaling_factor`.
    pub scaling_factor: f64,
}

impl Default for VaeConfig {
    /// The SD 1.x/2.x VAE.
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            ch: 128,
            ch_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            z_channels: 4,
            embed_dim: 4,
            scaling_factor: 0.18215,
        }
    }
}

impl VaeConfig {
    /// Pixels per latent cell along each side: 2^(levels - 1).
    pub fn spatial_factor(&self) -> i64 {
        1 << self.ch_mult.len().saturating_sub(1)
    }

    /// Reads the architecture from tensor shapes; `scaling_factor` from `vae/config.json`
    /// when the checkpoint has one, else `default_scaling`.
    pub fn infer(ckpt: &Checkpoint, default_scaling: f64) -> Result<Self> {
        let key = |k: &str| format!("{VAE_PREFIX}{k}");
        let shown = ckpt.path().display();
        if !ckpt.has_prefix(&key("decoder.")) {
            bail!("{shown}: the checkpoint has no VAE (first_stage_model.*) — set model.vae in the profile");
        }
        let conv_in = ckpt.require_shape(&key("encoder.conv_in.weight"))?;
        let (ch, in_channels) = (conv_in[0], conv_in[1]);
        let levels = ckpt.count_indexed(&key("encoder.down."));
        let ch_mult = (0..levels)
            .map(|i| {
                Ok(
                    ckpt.require_shape(&key(&format!("encoder.down.{i}.block.0.conv2.weight")))?[0]
                        / ch,
                )
            })
            .collect::<Result<Vec<i64>>>()?;
        let scaling_factor = match ckpt.configs().vae.as_ref().and_then(|j| j.get("scaling_factor")) {
            None => default_scaling,
            Some(value) => value
                .as_f64()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| anyhow::anyhow!("{shown}: vae/config.json: scaling_factor {value} must be a positive number — fix it or remove the key (the family's default is {default_scaling})"))?,
        };
        Ok(Self {
            in_channels,
            out_channels: ckpt.require_shape(&key("decoder.conv_out.weight"))?[0],
            ch,
            ch_mult,
            num_res_blocks: ckpt.count_indexed(&key("encoder.down.0.block.")),
            z_channels: ckpt.require_shape(&key("decoder.conv_in.weight"))?[1],
            embed_dim: ckpt.require_shape(&key("post_quant_conv.weight"))?[1],
            scaling_factor,
        })
    }
}
