//! The LDM `AutoencoderKL` (ldm/models/autoencoder.py, ldm/modules/diffusionmodules/model.py):
//! encoder to a diagonal Gaussian posterior, decoder back to pixels. Module paths are the LDM
//! keys under `first_stage_model.`.
pub mod memory;
pub mod norm;
pub mod runner;
pub mod tiling;

use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::Tensor;

use crate::checkpoint::Checkpoint;
use crate::convert::VAE_PREFIX;
use crate::layers::{conv2d, group_norm, Conv2d};
use norm::GroupNormStats;

const EPS: f64 = 1e-6;

/// GroupNorm (statistics as `stats` says) → SiLU, the pre-activation before most VAE convs.
fn norm_silu(norm: &nn::GroupNorm, x: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
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
fn channels_last_on_cpu(x: &Tensor) -> Tensor {
    match x.device() == tch::Device::Cpu && x.dim() == 4 {
        true => x.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]),
        false => x.shallow_clone(),
    }
}

/// Whether `x` `[B, C, H, W]` is laid out channels-last (and is not also NCHW-contiguous).
fn is_channels_last(x: &Tensor) -> bool {
    let s = x.size();
    x.dim() == 4 && s[1] > 1 && x.stride()[1] == 1 && !x.is_contiguous()
}

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

/// LDM `ResnetBlock` without timestep embedding.
struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: Conv2d,
    norm2: nn::GroupNorm,
    conv2: Conv2d,
    nin_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64) -> Self {
        Self {
            norm1: group_norm(&p / "norm1", c_in, EPS),
            conv1: conv2d(&p / "conv1", c_in, c_out, 3, 1, 1),
            norm2: group_norm(&p / "norm2", c_out, EPS),
            conv2: conv2d(&p / "conv2", c_out, c_out, 3, 1, 1),
            nin_shortcut: (c_in != c_out)
                .then(|| conv2d(&p / "nin_shortcut", c_in, c_out, 1, 1, 0)),
        }
    }

    fn forward(&self, x: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
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
struct AttnBlock {
    norm: nn::GroupNorm,
    q: Conv2d,
    k: Conv2d,
    v: Conv2d,
    proj_out: Conv2d,
}

impl AttnBlock {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            norm: group_norm(&p / "norm", c, EPS),
            q: conv2d(&p / "q", c, c, 1, 1, 0),
            k: conv2d(&p / "k", c, c, 1, 1, 0),
            v: conv2d(&p / "v", c, c, 1, 1, 0),
            proj_out: conv2d(&p / "proj_out", c, c, 1, 1, 0),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let normed = self.norm.forward(x);
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
        out
    }
}

/// LDM `Mid`: ResnetBlock, AttnBlock, ResnetBlock.
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(p: nn::Path, c: i64) -> Self {
        Self {
            block_1: ResnetBlock::new(&p / "block_1", c, c),
            attn_1: AttnBlock::new(&p / "attn_1", c),
            block_2: ResnetBlock::new(&p / "block_2", c, c),
        }
    }

    /// Always with each layer's own statistics: the mid block runs whole, never tiled.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let own = &mut GroupNormStats::Normal;
        let h = self.attn_1.forward(&self.block_1.forward(x, own)?);
        self.block_2.forward(&h, own)
    }
}

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

    /// The mid block (global attention), norm_out and conv_out, at latent resolution.
    fn forward_mid(&self, h: &Tensor) -> Result<Tensor> {
        let h = norm_silu(
            &self.norm_out,
            &self.mid.forward(h)?,
            &mut GroupNormStats::Normal,
        )?;
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
    fn forward_mid(&self, z: &Tensor) -> Result<Tensor> {
        self.mid.forward(&self.conv_in.forward(z))
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
    quant_conv: Conv2d,
    post_quant_conv: Conv2d,
    config: VaeConfig,
}

impl AutoencoderKL {
    /// `vs` is the path of `first_stage_model`.
    pub fn new(vs: nn::Path, cfg: &VaeConfig) -> Result<Self> {
        if cfg.ch_mult.is_empty() || cfg.num_res_blocks == 0 {
            bail!("VAE config: ch_mult and num_res_blocks must not be empty");
        }
        Ok(Self {
            encoder: Encoder::new(&vs / "encoder", cfg),
            decoder: Decoder::new(&vs / "decoder", cfg),
            quant_conv: conv2d(
                &vs / "quant_conv",
                2 * cfg.z_channels,
                2 * cfg.embed_dim,
                1,
                1,
                0,
            ),
            post_quant_conv: conv2d(
                &vs / "post_quant_conv",
                cfg.embed_dim,
                cfg.z_channels,
                1,
                1,
                0,
            ),
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

    /// Pixels in [-1, 1] → posterior mean × scaling_factor. Sides not divisible by the
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

    /// Decode up to and through the mid block (global attention), at latent resolution:
    /// cheap, so tiled decode runs it on the whole latent.
    pub fn decode_mid(&self, latent: &Tensor) -> Result<Tensor> {
        let z = self
            .post_quant_conv
            .forward(&(latent * (1.0 / self.config.scaling_factor)));
        self.decoder.forward_mid(&z)
    }

    /// The rest of decode after [`Self::decode_mid`]: the up path, the part worth tiling.
    pub fn decode_up(&self, h: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        self.decoder.forward_up(h, stats)
    }

    /// Encode up to the mid block, image → latent resolution: the part worth tiling.
    pub fn encode_down(&self, image: &Tensor, stats: &mut GroupNormStats) -> Result<Tensor> {
        self.encoder.forward_down(image, stats)
    }

    /// The rest of encode after [`Self::encode_down`]: the mid block (global attention) to
    /// the scaled posterior mean, at latent resolution.
    pub fn encode_mid(&self, h: &Tensor) -> Result<Tensor> {
        let moments = self.quant_conv.forward(&self.encoder.forward_mid(h)?);
        Ok(moments.narrow(1, 0, self.config.embed_dim) * self.config.scaling_factor)
    }
}
