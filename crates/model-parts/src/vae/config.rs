//! VAE hyper-parameters, read from the weights' tensor shapes.
use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::convert::VAE_PREFIX;
use crate::weights::Weights;

/// How latents relate to the posterior mean `z`: `latent = (z − shift) × scaling`, so
/// `z = latent / scaling + shift` (diffusers' `scaling_factor` and `shift_factor`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LatentScale {
    pub scaling: f64,
    pub shift: f64,
}

impl LatentScale {
    /// SD 3.x (diffusers `stabilityai/stable-diffusion-3.5-*` `vae/config.json`).
    pub const SD3: Self = Self {
        scaling: 1.5305,
        shift: 0.0609,
    };
    /// Flux (`black-forest-labs/FLUX.1-*` `vae/config.json`).
    pub const FLUX: Self = Self {
        scaling: 0.3611,
        shift: 0.1159,
    };

    /// A scaling without shift (SD 1.x/2.x 0.18215, SDXL 0.13025).
    pub fn scaling(scaling: f64) -> Self {
        Self {
            scaling,
            shift: 0.0,
        }
    }
}

/// VAE hyper-parameters (LDM `ddconfig` plus the latent scaling and shift).
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
    /// Latent channels (what the denoiser sees): after `quant_conv` where there is one (SD:
    /// 4), else `z_channels` (SD 3.x, Flux: 16).
    pub embed_dim: i64,
    /// Latents are `(posterior mean − shift_factor) × scaling_factor`.
    pub scaling_factor: f64,
    /// 0 for SD 1.x/2.x/XL; SD 3.x 0.0609, Flux 0.1159.
    pub shift_factor: f64,
    /// Whether the 1×1 `quant_conv` / `post_quant_conv` are there (SD: yes; SD 3.x and Flux
    /// have none: diffusers' `use_quant_conv = use_post_quant_conv = False`).
    pub quant_conv: bool,
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
            shift_factor: 0.0,
            quant_conv: true,
        }
    }
}

impl VaeConfig {
    /// Pixels per latent cell along each side: 2^(levels - 1).
    pub fn spatial_factor(&self) -> i64 {
        1 << self.ch_mult.len().saturating_sub(1)
    }

    /// The latent scaling and shift.
    pub fn latent_scale(&self) -> LatentScale {
        LatentScale {
            scaling: self.scaling_factor,
            shift: self.shift_factor,
        }
    }

    /// Reads the architecture from the shapes of the VAE's tensors (model keys under
    /// [`VAE_PREFIX`]); `scaling_factor` and `shift_factor` from the diffusers `vae_json`
    /// (`vae/config.json`) where it has them, else `default`'s (`shift_factor` only where
    /// `default` has a shift).
    pub fn infer(
        weights: &Weights,
        vae_json: Option<&Value>,
        default: LatentScale,
    ) -> Result<Self> {
        let key = |k: &str| format!("{VAE_PREFIX}{k}");
        let shown = weights.path().display();
        if !weights.has_prefix(&key("decoder.")) {
            bail!("{shown}: the checkpoint has no VAE (first_stage_model.*) — set model.vae in the profile");
        }
        let conv_in = weights.require_shape(&key("encoder.conv_in.weight"))?;
        let (ch, in_channels) = (conv_in[0], conv_in[1]);
        let levels = weights.count_indexed(&key("encoder.down."));
        let ch_mult = (0..levels)
            .map(|i| {
                Ok(weights
                    .require_shape(&key(&format!("encoder.down.{i}.block.0.conv2.weight")))?[0]
                    / ch)
            })
            .collect::<Result<Vec<i64>>>()?;
        let default_scaling = default.scaling;
        let scaling_factor = match vae_json.and_then(|j| j.get("scaling_factor")) {
            None => default_scaling,
            Some(value) => value
                .as_f64()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| anyhow!("{shown}: vae/config.json: scaling_factor {value} must be a positive number — fix it or remove the key (the family's default is {default_scaling})"))?,
        };
        // A family without a shift ignores the key, as diffusers' StableDiffusionPipeline and
        // A1111 do for SD 1.x/2.x/XL.
        let default_shift = default.shift;
        let stated_shift = vae_json
            .and_then(|j| j.get("shift_factor"))
            .filter(|_| default_shift != 0.0);
        let shift_factor = match stated_shift {
            None | Some(Value::Null) => default_shift,
            Some(value) => value
                .as_f64()
                .filter(|v| v.is_finite())
                .ok_or_else(|| anyhow!("{shown}: vae/config.json: shift_factor {value} must be a number — fix it or remove the key (the family's default is {default_shift})"))?,
        };
        let z_channels = weights.require_shape(&key("decoder.conv_in.weight"))?[1];
        // Either conv there means both belong there (a missing one is then named).
        let quant_conv =
            weights.has_prefix(&key("quant_conv.")) || weights.has_prefix(&key("post_quant_conv."));
        Ok(Self {
            in_channels,
            out_channels: weights.require_shape(&key("decoder.conv_out.weight"))?[0],
            ch,
            ch_mult,
            num_res_blocks: weights.count_indexed(&key("encoder.down.0.block.")),
            z_channels,
            embed_dim: match quant_conv {
                true => weights.require_shape(&key("post_quant_conv.weight"))?[1],
                false => z_channels,
            },
            scaling_factor,
            shift_factor,
            quant_conv,
        })
    }
}
