//! The LDM `UNetModel` (ldm/modules/diffusionmodules/openaimodel.py) with its
//! `SpatialTransformer` (ldm/modules/attention.py). Module paths are the LDM keys under
//! `model.diffusion_model.`.
use anyhow::{anyhow, bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::checkpoint::Checkpoint;
use crate::convert::UNET_PREFIX;
use crate::layers::{attention, conv2d, group_norm, layer_norm, linear, norm_silu};

/// How a family splits a transformer's width into attention heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRule {
    /// A fixed number of heads at every width (SD 1.x: 8).
    FixedHeads(i64),
    /// A fixed width per head (SD 2.x, SDXL: 64).
    FixedDim(i64),
}

impl HeadRule {
    /// `(heads, head_dim)` for a transformer `channels` wide.
    pub fn split(self, channels: i64) -> Result<(i64, i64)> {
        let (heads, dim) = match self {
            HeadRule::FixedHeads(h) if h > 0 => (h, channels / h),
            HeadRule::FixedDim(d) if d > 0 => (channels / d, d),
            _ => bail!("head rule {self:?} is not positive"),
        };
        if heads * dim != channels || heads == 0 {
            bail!("UNet width {channels} does not split into attention heads by the rule {self:?}");
        }
        Ok((heads, dim))
    }

    /// diffusers `attention_head_dim` (which, for SD 1.x, is the head count) per level.
    fn from_diffusers(json: &serde_json::Value, widths: &[i64]) -> Result<Option<Self>> {
        let value = json
            .get("num_attention_heads")
            .filter(|v| !v.is_null())
            .or_else(|| json.get("attention_head_dim"));
        let heads: Vec<i64> = match value {
            Some(serde_json::Value::Number(n)) => vec![n.as_i64().unwrap_or(0)],
            Some(serde_json::Value::Array(list)) => {
                list.iter().map(|v| v.as_i64().unwrap_or(0)).collect()
            }
            _ => return Ok(None),
        };
        if heads.iter().all(|h| *h == heads[0]) {
            return Ok(Some(HeadRule::FixedHeads(heads[0])));
        }
        let dims: Vec<i64> = widths
            .iter()
            .zip(&heads)
            .map(|(w, h)| if *h > 0 { w / h } else { 0 })
            .collect();
        if dims.iter().all(|d| *d == dims[0]) {
            return Ok(Some(HeadRule::FixedDim(dims[0])));
        }
        bail!(
            "unet/config.json: attention_head_dim {heads:?} follows no head rule this crate knows"
        )
    }
}

/// UNet hyper-parameters (LDM `UNetModel` arguments), per level from the top.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in (4; 9 for inpainting models).
    pub in_channels: i64,
    /// Channels out (the predicted noise).
    pub out_channels: i64,
    /// Width of the first level (320 for SD 1.x).
    pub model_channels: i64,
    /// Width of each level as a multiple of `model_channels`.
    pub channel_mult: Vec<i64>,
    /// ResBlocks per level on the way down (one more on the way up).
    pub num_res_blocks: Vec<usize>,
    /// Transformer blocks per SpatialTransformer at each level; 0 = no attention there.
    pub transformer_depth: Vec<usize>,
    /// Transformer blocks in the middle block's SpatialTransformer.
    pub mid_transformer_depth: usize,
    /// Width of the text conditioning (cross-attention key/value input).
    pub context_dim: i64,
    pub head_rule: HeadRule,
    /// SD 2.x style Linear `proj_in`/`proj_out` instead of 1x1 convs.
    pub linear_projection: bool,
    /// Width of the timestep embedding (4 × `model_channels` in SD).
    pub time_embed_dim: i64,
}

impl Default for UNetConfig {
    /// SD 1.x (v1-inference.yaml).
    fn default() -> Self {
        Self {
            in_channels: 4,
            out_channels: 4,
            model_channels: 320,
            channel_mult: vec![1, 2, 4, 4],
            num_res_blocks: vec![2, 2, 2, 2],
            transformer_depth: vec![1, 1, 1, 0],
            mid_transformer_depth: 1,
            context_dim: 768,
            head_rule: HeadRule::FixedHeads(8),
            linear_projection: false,
            time_embed_dim: 1280,
        }
    }
}

impl UNetConfig {
    /// Reads the architecture from tensor shapes; the head count, which shapes cannot
    /// tell, comes from `head_rule` (or a diffusers `unet/config.json`).
    pub fn infer(ckpt: &Checkpoint, head_rule: HeadRule) -> Result<Self> {
        let p = UNET_PREFIX;
        let key = |k: &str| format!("{p}{k}");
        let conv_in = ckpt.require_shape(&key("input_blocks.0.0.weight"))?;
        let (model_channels, in_channels) = (conv_in[0], conv_in[1]);
        let out_channels = ckpt.require_shape(&key("out.2.weight"))?[0];
        let time_embed_dim = ckpt.require_shape(&key("time_embed.0.weight"))?[0];
        let levels = infer_levels(ckpt, model_channels)?;
        let attn_key = ckpt
            .keys()
            .find(|k| k.starts_with(p) && k.ends_with("attn2.to_k.weight"));
        let context_dim = match attn_key {
            Some(k) => ckpt.require_shape(k)?[1],
            None => bail!(
                "{}: the UNet has no cross-attention (attn2.to_k) — not a text-to-image model",
                ckpt.path().display()
            ),
        };
        let proj_key = ckpt
            .keys()
            .find(|k| k.starts_with(p) && k.ends_with(".proj_in.weight"))
            .unwrap_or_default();
        let linear_projection = ckpt.shape(proj_key).is_some_and(|s| s.len() == 2);
        let channel_mult: Vec<i64> = levels.iter().map(|l| l.0).collect();
        let widths: Vec<i64> = channel_mult.iter().map(|m| m * model_channels).collect();
        let head_rule = match &ckpt.configs().unet {
            Some(json) => HeadRule::from_diffusers(json, &widths)?.unwrap_or(head_rule),
            None => head_rule,
        };
        Ok(Self {
            in_channels,
            out_channels,
            model_channels,
            channel_mult,
            num_res_blocks: levels.iter().map(|l| l.1).collect(),
            transformer_depth: levels.iter().map(|l| l.2).collect(),
            mid_transformer_depth: ckpt.count_indexed(&key("middle_block.1.transformer_blocks.")),
            context_dim,
            head_rule,
            linear_projection,
            time_embed_dim,
        })
    }

    /// Number of times the latent is halved on the way down.
    pub fn downsamples(&self) -> usize {
        self.channel_mult.len().saturating_sub(1)
    }
}

/// `(channel mult, res blocks, transformer depth)` per level, walking `input_blocks`.
fn infer_levels(ckpt: &Checkpoint, model_channels: i64) -> Result<Vec<(i64, usize, usize)>> {
    let p = UNET_PREFIX;
    let shown = ckpt.path().display();
    let mut levels = Vec::new();
    let mut current: Option<(i64, usize, usize)> = None;
    for i in 1..ckpt.count_indexed(&format!("{p}input_blocks.")) {
        if ckpt.contains(&format!("{p}input_blocks.{i}.0.op.weight")) {
            levels.push(current.take().ok_or_else(|| {
                anyhow!("{shown}: UNet level without ResBlocks before input_blocks.{i}")
            })?);
            continue;
        }
        let width = ckpt.require_shape(&format!("{p}input_blocks.{i}.0.out_layers.3.weight"))?[0];
        let depth = ckpt.count_indexed(&format!("{p}input_blocks.{i}.1.transformer_blocks."));
        if width % model_channels != 0 {
            bail!("{shown}: input_blocks.{i} is {width} wide, not a multiple of {model_channels}");
        }
        let level = current.get_or_insert((width / model_channels, 0, depth));
        if level.0 != width / model_channels || level.2 != depth {
            bail!("{shown}: input_blocks.{i} differs from the rest of its level (width {width}, depth {depth})");
        }
        level.1 += 1;
    }
    levels.extend(current);
    if levels.is_empty() {
        bail!("{shown}: the UNet has no input_blocks");
    }
    Ok(levels)
}

/// Sinusoidal timestep embedding, `[cos, sin]` order, max period 10000 (LDM
/// `timestep_embedding`); fractional timesteps welcome.
pub fn timestep_embedding(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let freqs =
        (Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln()) / half as f64)).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    let emb = Tensor::cat(&[args.cos(), args.sin()], -1);
    if dim % 2 == 1 {
        Tensor::cat(&[&emb, &emb.zeros_like().narrow(1, 0, 1)], -1)
    } else {
        emb
    }
}

/// LDM `ResBlock`: two GroupNorm-SiLU-conv stages with the timestep embedding added between.
struct ResBlock {
    in_norm: nn::GroupNorm,
    in_conv: nn::Conv2D,
    emb_proj: nn::Linear,
    out_norm: nn::GroupNorm,
    out_conv: nn::Conv2D,
    skip: Option<nn::Conv2D>,
}

impl ResBlock {
    fn new(p: nn::Path, c_in: i64, c_out: i64, emb_dim: i64) -> Self {
        Self {
            in_norm: group_norm(&p / "in_layers" / 0, c_in, 1e-5),
            in_conv: conv2d(&p / "in_layers" / 2, c_in, c_out, 3, 1, 1),
            emb_proj: linear(&p / "emb_layers" / 1, emb_dim, c_out, true),
            out_norm: group_norm(&p / "out_layers" / 0, c_out, 1e-5),
            out_conv: conv2d(&p / "out_layers" / 3, c_out, c_out, 3, 1, 1),
            skip: (c_in != c_out).then(|| conv2d(&p / "skip_connection", c_in, c_out, 1, 1, 0)),
        }
    }

    fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        let h = self.in_conv.forward(&norm_silu(&self.in_norm, x));
        let h = h + self
            .emb_proj
            .forward(&emb.silu())
            .unsqueeze(-1)
            .unsqueeze(-1);
        let h = self.out_conv.forward(&norm_silu(&self.out_norm, &h));
        match &self.skip {
            Some(skip) => skip.forward(x) + h,
            None => x + h,
        }
    }
}

/// LDM `CrossAttention`: self-attention when `context` is `None`.
struct CrossAttention {
    to_q: nn::Linear,
    to_k: nn::Linear,
    to_v: nn::Linear,
    to_out: nn::Linear,
    heads: i64,
}

impl CrossAttention {
    fn new(p: nn::Path, dim: i64, context_dim: i64, heads: i64) -> Self {
        Self {
            to_q: linear(&p / "to_q", dim, dim, false),
            to_k: linear(&p / "to_k", context_dim, dim, false),
            to_v: linear(&p / "to_v", context_dim, dim, false),
            to_out: linear(&p / "to_out" / 0, dim, dim, true),
            heads,
        }
    }

    fn forward(&self, x: &Tensor, context: Option<&Tensor>) -> Tensor {
        let ctx = context.unwrap_or(x);
        let h = attention(
            &self.to_q.forward(x),
            &self.to_k.forward(ctx),
            &self.to_v.forward(ctx),
            self.heads,
            false,
        );
        self.to_out.forward(&h)
    }
}

/// LDM `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward.
struct TransformerBlock {
    norm1: nn::LayerNorm,
    attn1: CrossAttention,
    norm2: nn::LayerNorm,
    attn2: CrossAttention,
    norm3: nn::LayerNorm,
    ff_proj: nn::Linear,
    ff_out: nn::Linear,
}

impl TransformerBlock {
    fn new(p: nn::Path, dim: i64, context_dim: i64, heads: i64) -> Self {
        let inner = dim * 4;
        Self {
            norm1: layer_norm(&p / "norm1", dim, 1e-5),
            attn1: CrossAttention::new(&p / "attn1", dim, dim, heads),
            norm2: layer_norm(&p / "norm2", dim, 1e-5),
            attn2: CrossAttention::new(&p / "attn2", dim, context_dim, heads),
            norm3: layer_norm(&p / "norm3", dim, 1e-5),
            ff_proj: linear(&p / "ff" / "net" / 0 / "proj", dim, inner * 2, true),
            ff_out: linear(&p / "ff" / "net" / 2, inner, dim, true),
        }
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let x = x + self.attn1.forward(&self.norm1.forward(x), None);
        let x = &x + self.attn2.forward(&self.norm2.forward(&x), Some(context));
        let h = self.ff_proj.forward(&self.norm3.forward(&x)).chunk(2, -1);
        x + self.ff_out.forward(&(&h[0] * h[1].gelu("none")))
    }
}

/// `proj_in` / `proj_out`: a 1x1 conv (SD 1.x) or a Linear over channels (SD 2.x).
enum Projection {
    Conv(nn::Conv2D),
    Linear(nn::Linear),
}

impl Projection {
    fn new(p: nn::Path, d_in: i64, d_out: i64, linear_projection: bool) -> Self {
        if linear_projection {
            Projection::Linear(linear(p, d_in, d_out, true))
        } else {
            Projection::Conv(conv2d(p, d_in, d_out, 1, 1, 0))
        }
    }
}

/// LDM `SpatialTransformer`: GroupNorm, proj_in, transformer blocks over `h*w` tokens, proj_out, residual.
struct SpatialTransformer {
    norm: nn::GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    fn new(p: nn::Path, channels: i64, depth: usize, cfg: &UNetConfig) -> Result<Self> {
        let (heads, _) = cfg.head_rule.split(channels)?;
        let blocks = &p / "transformer_blocks";
        Ok(Self {
            norm: group_norm(&p / "norm", channels, 1e-6),
            proj_in: Projection::new(&p / "proj_in", channels, channels, cfg.linear_projection),
            blocks: (0..depth)
                .map(|i| TransformerBlock::new(&blocks / i, channels, cfg.context_dim, heads))
                .collect(),
            proj_out: Projection::new(&p / "proj_out", channels, channels, cfg.linear_projection),
        })
    }

    fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let to_tokens = |t: &Tensor| t.reshape([b, c, h * w]).transpose(1, 2);
        let to_image = |t: &Tensor| t.transpose(1, 2).reshape([b, c, h, w]);
        let normed = self.norm.forward(x);
        let mut tokens = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)),
            Projection::Linear(lin) => lin.forward(&to_tokens(&normed)),
        };
        for block in &self.blocks {
            tokens = block.forward(&tokens, context);
        }
        let out = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(&tokens)),
            Projection::Linear(lin) => to_image(&lin.forward(&tokens)),
        };
        out + x
    }
}

/// One entry of an LDM `TimestepEmbedSequential`.
#[allow(clippy::large_enum_variant)] // built once per model; boxing would buy nothing
enum Layer {
    Conv(nn::Conv2D),
    Res(ResBlock),
    Attention(SpatialTransformer),
    /// Conv with stride 2, padding 1 (`op`).
    Downsample(nn::Conv2D),
    /// Nearest ×2 (or to the skip tensor's size), then conv.
    Upsample(nn::Conv2D),
}

/// LDM `TimestepEmbedSequential`: layers fed the timestep embedding and the context.
struct Block(Vec<Layer>);

impl Block {
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        skip_size: Option<(i64, i64)>,
    ) -> Tensor {
        let mut x = x.shallow_clone();
        for layer in &self.0 {
            x = match layer {
                Layer::Conv(conv) | Layer::Downsample(conv) => conv.forward(&x),
                Layer::Res(res) => res.forward(&x, emb),
                Layer::Attention(attn) => attn.forward(&x, context),
                Layer::Upsample(conv) => {
                    // Like diffusers' `forward_upsample_size`: odd skip sizes need an exact target.
                    let s = x.size();
                    let (h, w) = skip_size.unwrap_or((s[2] * 2, s[3] * 2));
                    conv.forward(&x.upsample_nearest2d([h, w], None, None))
                }
            };
        }
        x
    }
}

pub struct UNetModel {
    time_embed_1: nn::Linear,
    time_embed_2: nn::Linear,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    out_norm: nn::GroupNorm,
    out_conv: nn::Conv2D,
    config: UNetConfig,
}

impl UNetModel {
    /// `vs` is the path of `model.diffusion_model`.
    pub fn new(vs: nn::Path, cfg: &UNetConfig) -> Result<Self> {
        let levels = cfg.channel_mult.len();
        if levels == 0
            || cfg.num_res_blocks.len() != levels
            || cfg.transformer_depth.len() != levels
        {
            bail!("UNet config: channel_mult, num_res_blocks and transformer_depth need one entry per level");
        }
        let (mc, ted) = (cfg.model_channels, cfg.time_embed_dim);
        let inputs = &vs / "input_blocks";
        let mut input_blocks = vec![Block(vec![Layer::Conv(conv2d(
            &inputs / 0 / 0,
            cfg.in_channels,
            mc,
            3,
            1,
            1,
        ))])];
        let mut skip_widths = vec![mc];
        let mut ch = mc;
        for level in 0..levels {
            let width = mc * cfg.channel_mult[level];
            for _ in 0..cfg.num_res_blocks[level] {
                let p = &inputs / input_blocks.len();
                let mut layers = vec![Layer::Res(ResBlock::new(&p / 0, ch, width, ted))];
                ch = width;
                if cfg.transformer_depth[level] > 0 {
                    layers.push(Layer::Attention(SpatialTransformer::new(
                        &p / 1,
                        ch,
                        cfg.transformer_depth[level],
                        cfg,
                    )?));
                }
                input_blocks.push(Block(layers));
                skip_widths.push(ch);
            }
            if level + 1 < levels {
                let p = &inputs / input_blocks.len() / 0 / "op";
                input_blocks.push(Block(vec![Layer::Downsample(conv2d(p, ch, ch, 3, 2, 1))]));
                skip_widths.push(ch);
            }
        }
        let mid = &vs / "middle_block";
        let middle_block = Block(vec![
            Layer::Res(ResBlock::new(&mid / 0, ch, ch, ted)),
            Layer::Attention(SpatialTransformer::new(
                &mid / 1,
                ch,
                cfg.mid_transformer_depth,
                cfg,
            )?),
            Layer::Res(ResBlock::new(&mid / 2, ch, ch, ted)),
        ]);
        let outputs = &vs / "output_blocks";
        let mut output_blocks = Vec::new();
        for level in (0..levels).rev() {
            let width = mc * cfg.channel_mult[level];
            for i in 0..=cfg.num_res_blocks[level] {
                let p = &outputs / output_blocks.len();
                let skip = skip_widths
                    .pop()
                    .ok_or_else(|| anyhow!("UNet config: more output than input blocks"))?;
                let mut layers = vec![Layer::Res(ResBlock::new(&p / 0, ch + skip, width, ted))];
                ch = width;
                if cfg.transformer_depth[level] > 0 {
                    layers.push(Layer::Attention(SpatialTransformer::new(
                        &p / 1,
                        ch,
                        cfg.transformer_depth[level],
                        cfg,
                    )?));
                }
                if level > 0 && i == cfg.num_res_blocks[level] {
                    layers.push(Layer::Upsample(conv2d(
                        &p / layers.len() / "conv",
                        ch,
                        ch,
                        3,
                        1,
                        1,
                    )));
                }
                output_blocks.push(Block(layers));
            }
        }
        Ok(Self {
            time_embed_1: linear(&vs / "time_embed" / 0, mc, ted, true),
            time_embed_2: linear(&vs / "time_embed" / 2, ted, ted, true),
            input_blocks,
            middle_block,
            output_blocks,
            out_norm: group_norm(&vs / "out" / 0, ch, 1e-5),
            out_conv: conv2d(&vs / "out" / 2, ch, cfg.out_channels, 3, 1, 1),
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// Predicted noise for latent `x` `[B, C, h, w]` at timesteps `t` `[B]` (fractional
    /// allowed) with text `context` `[B, L, context_dim]`. Any `h`, `w` work.
    pub fn forward(&self, x: &Tensor, t: &Tensor, context: &Tensor) -> Tensor {
        let t_emb = timestep_embedding(t, self.config.model_channels).to_kind(x.kind());
        let emb = self
            .time_embed_2
            .forward(&self.time_embed_1.forward(&t_emb).silu());
        let mut skips = Vec::with_capacity(self.input_blocks.len());
        let mut h = x.shallow_clone();
        for block in &self.input_blocks {
            h = block.forward(&h, &emb, context, None);
            skips.push(h.shallow_clone());
        }
        h = self.middle_block.forward(&h, &emb, context, None);
        for block in &self.output_blocks {
            if let Some(skip) = skips.pop() {
                h = Tensor::cat(&[&h, &skip], 1);
            }
            let next_size = skips.last().map(|s| (s.size()[2], s.size()[3]));
            h = block.forward(&h, &emb, context, next_size);
        }
        self.out_conv.forward(&norm_silu(&self.out_norm, &h))
    }
}
