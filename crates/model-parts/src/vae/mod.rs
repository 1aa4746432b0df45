//! The LDM `AutoencoderKL` (ldm/models/autoencoder.py, ldm/modules/diffusionmodules/model.py):
//! encoder to a diagonal Gaussian posterior, decoder back to pixels. Module paths are the LDM
//! keys under `first_stage_model.`. Two forms: SD's (4 latent channels through the 1×1
//! `quant_conv` / `post_quant_conv`, latents `z × scaling`) and SD 3.x / Flux's (16 channels,
//! no quant convs, latents `(z − shift) × scaling`), told apart by the weights
//! ([`VaeConfig::infer`]).
mod blocks;
mod config;
pub mod files;
pub mod memory;
pub mod norm;
pub mod runner;
pub mod tiling;

use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::Tensor;

use crate::layers::{conv2d, group_norm, Conv2d};
use blocks::{channels_last_on_cpu, norm_silu, Mid, ResnetBlock, EPS};
pub use config::{LatentScale, VaeConfig};
use norm::GroupNormStats;

struct Encoder {
    conv_in: Conv2d,
    /// Per level: its blocks and, except at the bottom, a stride-2 downsample conv.
    down: Vec<(Vec<ResnetBlock>, Option<Conv2d>)>,
    mid: Mid,
    norm_out: nn::GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(p: nn::Path, cfg: &VaeConfig) -> Self {
        let levels = cfg.ch_mult.len();
        let mut c = cfg.ch;
        let down = (0..levels)
            .map(|i| {
                let level = &p / "down" / i;
                let width = cfg.ch * cfg.ch_mult[i];
                let blocks = (0..cfg.num_res_blocks)
                    .map(|j| {
                        let block = ResnetBlock::new(&level / "block" / j, c, width);
                        c = width;
                        block
                    })
                    .collect();
                let downsample =
                    (i + 1 < levels).then(|| conv2d(&level / "downsample" / "conv", c, c, 3, 2, 0));
                (blocks, downsample)
            })
            .collect();
        Self {
            conv_in: conv2d(&p / "conv_in", cfg.in_channels, cfg.ch, 3, 1, 1),
            down,
            mid: Mid::new(&p / "mid", c),
            norm_out: group_norm(&p / "norm_out", c, EPS),
            conv_out: conv2d(&p / "conv_out", c, 2 * cfg.z_channels, 3, 1, 1),
        }
    }

    /// conv_in and the down path, image → latent resolution: the part worth tiling.
    fn forward_down(&self, x: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x);
        for (blocks, downsample) in &self.down {
            for block in blocks {
                h = block.forward(&h, stats)?;
            }
            if let Some(conv) = downsample {
                // LDM pads right and bottom only, then convolves without padding.
                h = conv.forward(&h.constant_pad_nd([0, 1, 0, 1]));
            }
        }
        Ok(h)
    }

    /// norm_out and conv_out after the mid block, at latent resolution.
    fn forward_out(&self, h: &Tensor) -> Result<Tensor> {
        let h = norm_silu(&self.norm_out, h, &mut GroupNormStats::Normal)?;
        Ok(self.conv_out.forward(&h))
    }
}

struct Decoder {
    conv_in: Conv2d,
    mid: Mid,
    /// Per level from the top (LDM `up.i`): its blocks and, except at the top, an upsample conv.
    up: Vec<(Vec<ResnetBlock>, Option<Conv2d>)>,
    norm_out: nn::GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(p: nn::Path, cfg: &VaeConfig) -> Self {
        let levels = cfg.ch_mult.len();
        let mut c = cfg.ch * cfg.ch_mult[levels - 1];
        let conv_in = conv2d(&p / "conv_in", cfg.z_channels, c, 3, 1, 1);
        let mid = Mid::new(&p / "mid", c);
        let mut up: Vec<_> = (0..levels)
            .rev()
            .map(|i| {
                let level = &p / "up" / i;
                let width = cfg.ch * cfg.ch_mult[i];
                let blocks = (0..=cfg.num_res_blocks)
                    .map(|j| {
                        let block = ResnetBlock::new(&level / "block" / j, c, width);
                        c = width;
                        block
                    })
                    .collect();
                let upsample = (i > 0).then(|| conv2d(&level / "upsample" / "conv", c, c, 3, 1, 1));
                (blocks, upsample)
            })
            .collect();
        up.reverse();
        Self {
            conv_in,
            mid,
            up,
            norm_out: group_norm(&p / "norm_out", c, EPS),
            conv_out: conv2d(&p / "conv_out", c, cfg.out_channels, 3, 1, 1),
        }
    }

    /// conv_in and the mid block (global attention), at latent resolution.
    fn forward_mid(&self, z: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        self.mid.forward(&self.conv_in.forward(z), stats)
    }

    /// The up path, norm_out and conv_out, latent → image resolution: the part worth tiling.
    fn forward_up(&self, h: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        let mut h = h.shallow_clone();
        for (blocks, upsample) in self.up.iter().rev() {
            for block in blocks {
                h = block.forward(&h, stats)?;
            }
            if let Some(conv) = upsample {
                let s = h.size();
                h = conv.forward(&h.upsample_nearest2d([s[2] * 2, s[3] * 2], None, None));
            }
        }
        Ok(self
            .conv_out
            .forward(&norm_silu(&self.norm_out, &h, stats)?))
    }
}

/// Which way a VAE pass maps: decode multiplies the sides by the spatial factor, encode
/// divides them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaePass {
    Decode,
    Encode,
}

impl VaePass {
    /// `decoding` or `encoding`, for messages.
    pub fn verb(self) -> &'static str {
        match self {
            Self::Decode => "decoding",
            Self::Encode => "encoding",
        }
    }

    /// Latent cells `(h, w)` of a `[B, C, H, W]` input to this pass with spatial factor `f`.
    pub fn latent_size(self, input_size: &[i64], f: i64) -> (i64, i64) {
        let (h, w) = match input_size {
            [.., h, w] => (*h, *w),
            _ => (0, 0),
        };
        match self {
            Self::Decode => (h, w),
            Self::Encode => (h / f.max(1), w / f.max(1)),
        }
    }
}

pub struct AutoencoderKL {
    encoder: Encoder,
    decoder: Decoder,
    /// SD's 1×1 convs around the latent; none in SD 3.x / Flux.
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    config: VaeConfig,
}

impl AutoencoderKL {
    /// `vs` is the path of `first_stage_model`.
    pub fn new(vs: nn::Path, cfg: &VaeConfig) -> Result<Self> {
        if cfg.ch_mult.is_empty() || cfg.num_res_blocks == 0 {
            bail!("VAE config: ch_mult and num_res_blocks must not be empty");
        }
        if !cfg.quant_conv && cfg.embed_dim != cfg.z_channels {
            bail!(
                "VAE config: without quant convs the latent has z_channels ({}), not {}",
                cfg.z_channels,
                cfg.embed_dim
            );
        }
        Ok(Self {
            encoder: Encoder::new(&vs / "encoder", cfg),
            decoder: Decoder::new(&vs / "decoder", cfg),
            quant_conv: cfg.quant_conv.then(|| {
                conv2d(
                    &vs / "quant_conv",
                    2 * cfg.z_channels,
                    2 * cfg.embed_dim,
                    1,
                    1,
                    0,
                )
            }),
            post_quant_conv: cfg.quant_conv.then(|| {
                conv2d(
                    &vs / "post_quant_conv",
                    cfg.embed_dim,
                    cfg.z_channels,
                    1,
                    1,
                    0,
                )
            }),
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

    /// Scaled latent `[B, embed_dim, h, w]` → raw pixels `[B, 3, h·f, w·f]`, about [-1, 1], unclamped.
    /// On the CPU the whole pass runs channels-last (see [`channels_last_on_cpu`]).
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let latent = channels_last_on_cpu(latent);
        let out = self.decode_up(&self.decode_mid(&latent)?, &mut GroupNormStats::Normal)?;
        Ok(out.contiguous())
    }

    /// Pixels in [-1, 1] → (posterior mean − shift_factor) × scaling_factor. Sides not divisible by the
    /// spatial factor are handled as LDM does (the bottom/right remainder is dropped).
    /// On the CPU the whole pass runs channels-last (see [`channels_last_on_cpu`]).
    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let image = channels_last_on_cpu(image);
        let out = self.encode_mid(&self.encode_down(&image, &mut GroupNormStats::Normal)?)?;
        Ok(out.contiguous())
    }

    /// [`Self::decode`] or [`Self::encode`].
    pub fn run(&self, pass: VaePass, input: &Tensor) -> Result<Tensor> {
        match pass {
            VaePass::Decode => self.decode(input),
            VaePass::Encode => self.encode(input),
        }
    }

    /// The scaled latent unscaled, through post_quant_conv: decode's pointwise start.
    pub fn decode_in(&self, latent: &Tensor) -> Tensor {
        let mut z = latent * (1.0 / self.config.scaling_factor);
        if self.config.shift_factor != 0.0 {
            z += self.config.shift_factor;
        }
        match &self.post_quant_conv {
            Some(conv) => conv.forward(&z),
            None => z,
        }
    }

    /// Decode up to and through the mid block (global attention), at latent resolution:
    /// what tiled decode runs on the whole latent while that attention stays cheap.
    pub fn decode_mid(&self, latent: &Tensor) -> Result<Tensor> {
        self.decoder
            .forward_mid(&self.decode_in(latent), &mut GroupNormStats::Normal)
    }

    /// The rest of decode after [`Self::decode_mid`]: the up path, the part worth tiling.
    pub fn decode_up(&self, h: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        self.decoder.forward_up(h, stats)
    }

    /// Decode after [`Self::decode_in`], mid block included, with `stats`: one tile of a
    /// latent too large for the mid block's global attention.
    pub fn decode_mid_up(&self, z: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        self.decoder
            .forward_up(&self.decoder.forward_mid(z, stats)?, stats)
    }

    /// Encode up to the mid block, image → latent resolution: the part worth tiling.
    pub fn encode_down(&self, image: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        self.encoder.forward_down(image, stats)
    }

    /// [`Self::encode_down`] and the mid block, with `stats`: one tile of an image whose
    /// latent is too large for the mid block's global attention.
    pub fn encode_down_mid(&self, image: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        let h = self.encoder.forward_down(image, stats)?;
        self.encoder.mid.forward(&h, stats)
    }

    /// The rest of encode after [`Self::encode_down`]: the mid block (global attention) to
    /// the scaled posterior mean, at latent resolution.
    pub fn encode_mid(&self, h: &Tensor) -> Result<Tensor> {
        let h = self.encoder.mid.forward(h, &mut GroupNormStats::Normal)?;
        self.encode_out(&h)
    }

    /// The rest of encode after the mid block: norm_out, conv_out and quant_conv to the
    /// scaled posterior mean.
    pub fn encode_out(&self, h: &Tensor) -> Result<Tensor> {
        let mut moments = self.encoder.forward_out(h)?;
        if let Some(conv) = &self.quant_conv {
            moments = conv.forward(&moments);
        }
        let mean = moments.narrow(1, 0, self.config.embed_dim);
        let shift = self.config.shift_factor;
        Ok(match shift != 0.0 {
            true => (mean - shift) * self.config.scaling_factor,
            false => mean * self.config.scaling_factor,
        })
    }
}
