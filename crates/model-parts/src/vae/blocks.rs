//! The VAE's building blocks (LDM `ResnetBlock`, `AttnBlock`, the mid block) and the
//! pre-activation and memory-layout helpers the encoder and decoder share.
use anyhow::Result;
use tch::nn::{self, Module};
use tch::Tensor;

use super::norm::{self, GroupNormStats};
use crate::layers::{conv2d, group_norm, Conv2d};

pub(super) const EPS: f64 = 1e-6;

/// GroupNorm (statistics as `stats` says) → SiLU, the pre-activation before most VAE convs.
pub(super) fn norm_silu(
    norm: &nn::GroupNorm,
    x: &Tensor,
    stats: &mut GroupNormStats,
) -> Result<Tensor> {
    let mut h = norm::group_norm(norm, EPS, x, stats)?;
    let _ = h.silu_();
    Ok(h)
}

/// `x` `[B, C, H, W]` laid out channels-last (NHWC strides, same shape) on the CPU; as is
/// elsewhere. libtorch's convolutions, GroupNorm, SiLU and nearest upsampling keep that
/// layout, and at the VAE's large maps (64–512 px, 128–512 channels) oneDNN runs it without
/// reordering every activation to its blocked layout and back: the SD decode at 512 px is
/// about 15 % faster (BENCHMARKS.md, `sd15-cpu`). The UNet's maps (≤ 64 px) measured no
/// faster, so it stays NCHW. Values round differently by at most ~1e-4.
pub(super) fn channels_last_on_cpu(x: &Tensor) -> Tensor {
    match x.device() == tch::Device::Cpu && x.dim() == 4 {
        true => x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
        false => x.shallow_clone(),
    }
}

/// Whether `x` `[B, C, H, W]` is laid out channels-last (and is not also NCHW-contiguous).
pub(super) fn is_channels_last(x: &Tensor) -> bool {
    let s = x.size();
    x.dim() == 4 && s[1] > 1 && x.stride()[1] == 1 && !x.is_contiguous()
}

/// LDM `ResnetBlock` without timestep embedding.
pub(super) struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: Conv2d,
    norm2: nn::GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    pub(super) fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        Self {
            norm1: group_norm(&p / "norm1", c_in, EPS),
            conv1: conv2d(&p / "conv1", c_in, c_out, 3, 1, 1),
            norm2: group_norm(&p / "norm2", c_out, EPS),
            conv2: conv2d(&p / "conv2", c_out, c_out, 3, 1, 1),
            nin_shortcut: (c_in != c_out)
                .then(|| conv2d(&p / "nin_shortcut", c_in, c_out, 1, 1, 0)),
        }
    }

    pub(super) fn forward(&self, x: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        let h = self.conv1.forward(&norm_silu(&self.norm1, x, stats)?);
        let mut h = self.conv2.forward(&norm_silu(&self.norm2, &h, stats)?);
        // The residual sum lands in place (a + b rounds as b + a): one full-size buffer less.
        Ok(match &self.nin_shortcut {
            Some(shortcut) => {
                let mut s = shortcut.forward(x);
                s += h;
                s
            }
            None => {
                h += x;
                h
            }
        })
    }
}

/// LDM `AttnBlock`: single-head attention over spatial positions, 1x1 conv projections.
pub(super) struct AttnBlock {
    norm: nn::GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    pub(super) fn new(p: nn::Path, c: i64) -> Self {
        Self {
            norm: group_norm(&p / "norm", c, EPS),
            q: conv2d(&p / "q", c, c, 1, 1, 0),
            k: conv2d(&p / "k", c, c, 1, 1, 0),
            v: conv2d(&p / "v", c, c, 1, 1, 0),
            proj_out: conv2d(&p / "proj_out", c, c, 1, 1, 0),
        }
    }

    /// Attention over the positions of `x`; its GroupNorm takes its statistics as `stats` says.
    pub(super) fn forward(&self, x: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let normed = norm::group_norm(&self.norm, EPS, x, stats)?;
        // Contiguous tokens: on a transposed view libtorch falls back to the math kernel,
        // which materialises the (h·w)² scores (16 GiB for a 256×256 latent). Channels-last
        // maps are those tokens already (a view); NCHW ones are copied (their reshape is a
        // view with the channels strided, hence the `contiguous`).
        let tokens = |conv: &Conv2d| {
            conv.forward(&normed)
                .permute([0, 2, 3, 1])
                .reshape([b, 1, h * w, c])
                .contiguous()
        };
        let out = Tensor::scaled_dot_product_attention(
            &tokens(&self.q),
            &tokens(&self.k),
            &tokens(&self.v),
            None::<Tensor>,
            0.0,
            false,
            None,
            false,
        );
        // Back to the input's layout: a view for channels-last, a copy for NCHW.
        let image = out.reshape([b, h, w, c]).permute([0, 3, 1, 2]);
        let image = match is_channels_last(x) {
            true => image,
            false => image.contiguous(),
        };
        let mut out = self.proj_out.forward(&image);
        out += x;
        Ok(out)
    }
}

/// LDM `Mid`: ResnetBlock, AttnBlock, ResnetBlock.
pub(super) struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    pub(super) fn new(p: nn::Path, c: i64) -> Self {
        Self {
            block_1: ResnetBlock::new(&p / "block_1", c, c),
            attn_1: AttnBlock::new(&p / "attn_1", c),
            block_2: ResnetBlock::new(&p / "block_2", c, c),
        }
    }

    /// The block over `x`: the whole latent (statistics `Normal`), or one tile of a latent too
    /// large for global attention, its attention over the tile's own cells and its GroupNorms
    /// on the pooled statistics of every tile (see `tiling`).
    pub(super) fn forward(&self, x: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        let h = self
            .attn_1
            .forward(&self.block_1.forward(x, stats)?, stats)?;
        self.block_2.forward(&h, stats)
    }
}
