//! Flux's hyper-parameters, read from the weights' shapes (every layout has them) plus the RoPE
//! axes, which no weight shows: a diffusers `config.json` names them, Flux.1's are
//! (16, 56, 56) at head dim 128.
use anyhow::{bail, Result};

/// Flux.1-dev (guidance-distilled: a guidance embedding) or schnell (timestep-distilled, none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Dev,
    Schnell,
}

impl Variant {
    /// The family name `info` prints.
    pub fn family(self) -> &'static str {
        match self {
            Variant::Dev => "flux-dev",
            Variant::Schnell => "flux-schnell",
        }
    }
}

/// The shape of a Flux transformer (diffusers `FluxTransformer2DModel` config; BFL
/// `FluxParams`). Patch size is 1: packing 2×2 happens outside ([`super::pack`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FluxConfig {
    /// Values per packed token in (64 = 16 latent channels × 2×2).
    pub in_channels: i64,
    /// Values per packed token out (64).
    pub out_channels: i64,
    pub num_layers: i64,
    pub num_single_layers: i64,
    pub heads: i64,
    pub head_dim: i64,
    /// Width of the blocks' MLP (4 × hidden).
    pub mlp_hidden: i64,
    /// Width of the T5 hidden states (4096).
    pub joint_attention_dim: i64,
    /// Width of the pooled CLIP-L vector (768).
    pub pooled_projection_dim: i64,
    pub guidance_embeds: bool,
    /// RoPE channels per id axis (text, row, column); they sum to `head_dim`.
    pub axes_dims_rope: [i64; 3],
    pub theta: f64,
}

/// Flux.1's RoPE axes at head dim 128 (BFL `configs`, diffusers' default).
pub const FLUX1_AXES: [i64; 3] = [16, 56, 56];

impl FluxConfig {
    /// Flux.1 dev / schnell at real size (12 B parameters).
    pub fn flux1(variant: Variant) -> Self {
        FluxConfig {
            in_channels: 64,
            out_channels: 64,
            num_layers: 19,
            num_single_layers: 38,
            heads: 24,
            head_dim: 128,
            mlp_hidden: 4 * 3072,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: variant == Variant::Dev,
            axes_dims_rope: FLUX1_AXES,
            theta: 10000.0,
        }
    }

    pub fn hidden_size(&self) -> i64 {
        self.heads * self.head_dim
    }

    pub fn variant(&self) -> Variant {
        if self.guidance_embeds {
            Variant::Dev
        } else {
            Variant::Schnell
        }
    }

    /// The RoPE axes for `head_dim`: those given, else Flux.1's at 128, else Flux.1's
    /// proportions (1/8, 7/16, 7/16) where they come out even (head dims that are multiples of
    /// 32: the tiny test models), else an error naming the fix (`what` names the file).
    pub fn axes_for(what: &str, head_dim: i64, given: Option<[i64; 3]>) -> Result<[i64; 3]> {
        let axes = match given {
            Some(a) => a,
            None if head_dim == 128 => FLUX1_AXES,
            None if head_dim > 0 && head_dim % 32 == 0 => {
                [head_dim / 8, head_dim * 7 / 16, head_dim * 7 / 16]
            }
            None => bail!(
                "{what}: a Flux transformer with head dim {head_dim} (not Flux.1's 128) has no \
                 known RoPE axes; load it from a diffusers folder whose config.json names \
                 `axes_dims_rope`"
            ),
        };
        if axes.iter().sum::<i64>() != head_dim || axes.iter().any(|a| a % 2 != 0) {
            bail!("{what}: RoPE axes {axes:?} must be even and sum to the head dim {head_dim}");
        }
        Ok(axes)
    }

    /// `axes_dims_rope` of a diffusers `config.json` text, if it names them.
    pub fn axes_from_diffusers_json(text: &str) -> Option<[i64; 3]> {
        let json: serde_json::Value = serde_json::from_str(text).ok()?;
        let a = json.get("axes_dims_rope")?.as_array()?;
        let v: Vec<i64> = a.iter().filter_map(|x| x.as_i64()).collect();
        v.try_into().ok()
    }
}
