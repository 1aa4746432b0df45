//! The LDM `UNetModel` (ldm/modules/diffusionmodules/openaimodel.py), one model for every
//! family: its shape (levels, depths, heads, projections, `label_emb`) comes from
//! [`UNetConfig`]. Module paths are the LDM keys under `model.diffusion_model.`.
mod blocks;
pub mod config;
mod hooks;
pub mod memory;

use anyhow::{anyhow, bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

pub use config::{HeadRule, UNetConfig};
pub use hooks::{AttentionAt, Hooks};

use crate::layers::{conv2d, group_norm, linear, norm_silu, per_image, Conv2d};
use blocks::{ResBlock, SpatialTransformer};

/// Sinusoidal timestep embedding, `[cos, sin]` order, max period 10000 (LDM
/// `timestep_embedding`); fractional timesteps welcome. Also SDXL's size-id embedding.
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

/// One entry of an LDM `TimestepEmbedSequential`.
#[allow(clippy::large_enum_variant)] // built once per model; boxing would buy nothing
enum Layer {
    Conv(Conv2d),
    Res(ResBlock),
    Attention(SpatialTransformer),
    /// Conv with stride 2, padding 1 (`op`).
    Downsample(Conv2d),
    /// Nearest ×2 (or to the skip tensor's size), then conv.
    Upsample(Conv2d),
}

/// LDM `TimestepEmbedSequential`: layers fed the timestep embedding and the context.
struct Block(Vec<Layer>);

impl Block {
    /// Its layers in order; `hooked`: the patches' attention hooks and where this block is.
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        skip_size: Option<(i64, i64)>,
        hooked: Option<(&dyn Hooks, &AttentionAt)>,
    ) -> Result<Tensor> {
        let mut x = x.shallow_clone();
        for layer in &self.0 {
            x = match (layer, hooked) {
                (Layer::Attention(attn), Some((hooks, at))) => {
                    attn.forward_hooked(&x, context, hooks, at)?
                }
                _ => layer.forward(&x, emb, context, skip_size),
            };
        }
        Ok(x)
    }

    /// [`Self::forward`] on one row per `shared` rows of the call (`emb_unique`: those rows'
    /// embedding), up to its first cross-attention, which repeats the rows (see
    /// [`UNetModel::forward_cfg`]); the layers after it see all rows and `emb`. Also returns
    /// whether the output is still one row per `shared` (the block had no cross-attention).
    fn forward_unique(
        &self,
        x: &Tensor,
        emb_unique: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        shared: i64,
    ) -> (Tensor, bool) {
        let mut x = x.shallow_clone();
        let mut unique = true;
        for layer in &self.0 {
            x = match layer {
                Layer::Attention(attn) if unique => {
                    unique = false;
                    attn.forward_shared(&x, context, shared)
                }
                _ if unique => layer.forward(&x, emb_unique, context, None),
                _ => layer.forward(&x, emb, context, None),
            };
        }
        (x, unique)
    }
}

impl Layer {
    fn forward(
        &self,
        x: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        skip_size: Option<(i64, i64)>,
    ) -> Tensor {
        match self {
            Layer::Conv(conv) | Layer::Downsample(conv) => conv.forward(x),
            Layer::Res(res) => res.forward(x, emb),
            Layer::Attention(attn) => attn.forward(x, context),
            Layer::Upsample(conv) => {
                // Like diffusers' `forward_upsample_size`: odd skip sizes need an exact target.
                let s = x.size();
                let (h, w) = skip_size.unwrap_or((s[2] * 2, s[3] * 2));
                conv.forward(&x.upsample_nearest2d([h, w], None, None))
            }
        }
    }
}

/// LDM `label_emb`: Linear → SiLU → Linear from the vector conditioning `y` (SDXL).
struct LabelEmbedding {
    first: nn::Linear,
    second: nn::Linear,
}

pub struct UNetModel {
    time_embed_1: nn::Linear,
    time_embed_2: nn::Linear,
    label_emb: Option<LabelEmbedding>,
    input_blocks: Vec<Block>,
    middle_block: Block,
    output_blocks: Vec<Block>,
    /// The resolution level of each input block's output and of each output block's input.
    input_levels: Vec<usize>,
    output_levels: Vec<usize>,
    out_norm: nn::GroupNorm,
    out_conv: Conv2d,
    config: UNetConfig,
}

impl UNetModel {
    /// `vs` is the path of `model.diffusion_model`.
    pub fn new(vs: nn::Path, cfg: &UNetConfig) -> Result<Self> {
        cfg.validate()?;
        let levels = cfg.channel_mult.len();
        let (mc, ted) = (cfg.model_channels, cfg.time_embed_dim);
        // Transformer blocks are numbered in forward order, as they are built.
        let transformers = std::cell::Cell::new(0u32);
        let attention = |p: nn::Path, ch: i64, depth: usize, heads: i64| {
            (depth > 0).then(|| {
                let first = transformers.get();
                let t = SpatialTransformer::new(p, (ch, depth, heads), cfg, first);
                transformers.set(first + t.depth());
                Layer::Attention(t)
            })
        };
        // A ResBlock to `level`'s width and, where the level has attention, a transformer.
        let res_attention = |p: nn::Path, c_in: i64, level: usize| {
            let width = mc * cfg.channel_mult[level];
            let mut layers = vec![Layer::Res(ResBlock::new(&p / 0, c_in, width, ted))];
            let depth = cfg.transformer_depth[level];
            layers.extend(attention(&p / 1, width, depth, cfg.heads[level]));
            layers
        };
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
        let mut input_levels = vec![0];
        let mut ch = mc;
        for level in 0..levels {
            for _ in 0..cfg.num_res_blocks[level] {
                let layers = res_attention(&inputs / input_blocks.len(), ch, level);
                ch = mc * cfg.channel_mult[level];
                input_blocks.push(Block(layers));
                skip_widths.push(ch);
                input_levels.push(level);
            }
            if level + 1 < levels {
                let p = &inputs / input_blocks.len() / 0 / "op";
                input_blocks.push(Block(vec![Layer::Downsample(conv2d(p, ch, ch, 3, 2, 1))]));
                skip_widths.push(ch);
                input_levels.push(level + 1);
            }
        }
        let mid = &vs / "middle_block";
        let mut middle = vec![Layer::Res(ResBlock::new(&mid / 0, ch, ch, ted))];
        middle.extend(attention(
            &mid / 1,
            ch,
            cfg.mid_transformer_depth,
            cfg.mid_heads,
        ));
        middle.push(Layer::Res(ResBlock::new(&mid / 2, ch, ch, ted)));
        let outputs = &vs / "output_blocks";
        let mut output_blocks = Vec::new();
        let mut output_levels = Vec::new();
        for level in (0..levels).rev() {
            for i in 0..=cfg.num_res_blocks[level] {
                let p = &outputs / output_blocks.len();
                let skip = skip_widths
                    .pop()
                    .ok_or_else(|| anyhow!("UNet config: more output than input blocks"))?;
                let mut layers = res_attention(&outputs / output_blocks.len(), ch + skip, level);
                ch = mc * cfg.channel_mult[level];
                if level > 0 && i == cfg.num_res_blocks[level] {
                    let conv = conv2d(&p / layers.len() / "conv", ch, ch, 3, 1, 1);
                    layers.push(Layer::Upsample(conv));
                }
                output_blocks.push(Block(layers));
                output_levels.push(level);
            }
        }
        let label_emb = cfg.adm_in_channels.map(|adm| {
            let p = &vs / "label_emb" / 0;
            LabelEmbedding {
                first: linear(&p / 0, adm, ted, true),
                second: linear(&p / 2, ted, ted, true),
            }
        });
        Ok(Self {
            time_embed_1: linear(&vs / "time_embed" / 0, mc, ted, true),
            time_embed_2: linear(&vs / "time_embed" / 2, ted, ted, true),
            label_emb,
            input_blocks,
            middle_block: Block(middle),
            output_blocks,
            input_levels,
            output_levels,
            out_norm: group_norm(&vs / "out" / 0, ch, 1e-5),
            out_conv: conv2d(&vs / "out" / 2, ch, cfg.out_channels, 3, 1, 1),
            config: cfg.clone(),
        })
    }

    /// How many resolution levels the UNet has.
    pub fn levels(&self) -> usize {
        self.config.channel_mult.len()
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// The model output (noise or velocity) for latent `x` `[B, C, h, w]` at timesteps `t`
    /// `[B]` (fractional allowed) with text `context` `[B, L, context_dim]` and, for models
    /// with `label_emb`, the vector conditioning `y` `[B, adm_in_channels]`. Any `h`, `w` work.
    pub fn forward(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.forward_hooked(x, t, context, y, None)
    }

    /// [`forward`](Self::forward) with UNet patches' hooks called at their points.
    pub fn forward_hooked(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
        hooks: Option<&dyn Hooks>,
    ) -> Result<Tensor> {
        self.forward_cfg(x, t, context, y, hooks, 1)
    }

    /// [`forward_hooked`](Self::forward_hooked) for a call whose rows come in groups of
    /// `shared` (one image's CFG rows) with the same latent and timestep that differ only in
    /// the text `context`. Everything before the first cross-attention — `conv_in`, the
    /// first ResBlock, the first transformer's self-attention — runs once per group (at a
    /// 64×64 SD 1.x latent that saves 2.6 % of a two-row CFG call's FLOPs, more of its time:
    /// 4096-token self-attention is its slowest kernel). Models with vector
    /// conditioning (SDXL: the embedding differs per row) and patched calls run every row.
    pub fn forward_cfg(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        y: Option<&Tensor>,
        hooks: Option<&dyn Hooks>,
        shared: i64,
    ) -> Result<Tensor> {
        let rows = x.size().first().copied().unwrap_or(0);
        let sharing = shared > 1 && rows >= shared && rows % shared == 0;
        let shared = match sharing && hooks.is_none() && self.label_emb.is_none() {
            true => shared,
            false => 1,
        };
        let t_emb = timestep_embedding(t, self.config.model_channels).to_kind(x.kind());
        let mut emb = per_image(
            &self.time_embed_2,
            &per_image(&self.time_embed_1, &t_emb).silu(),
        );
        match (&self.label_emb, y) {
            (Some(label), Some(y)) => {
                emb += per_image(&label.second, &per_image(&label.first, y).silu());
            }
            (None, None) => {}
            (Some(_), None) => bail!("this UNet needs vector conditioning (pooled text and size ids) — encode the prompt with this model"),
            (None, Some(_)) => bail!("this UNet takes no vector conditioning"),
        }
        let (mut h, mut skips, shared_blocks) = match shared > 1 {
            true => self.shared_prefix(x, &emb, context, shared),
            false => (x.shallow_clone(), Vec::new(), 0),
        };
        let xs = x.size();
        let base = AttentionAt {
            part: 0,
            block: 0,
            level: 0,
            transformer: 0,
            height: 0,
            width: 0,
            latent_height: xs[2] as u32,
            latent_width: xs[3] as u32,
            model_channels: self.config.model_channels as u32,
        };
        let wrapping = hooks.filter(|h| h.wraps_attention());
        let at = |part: u32, block: usize, level: usize| AttentionAt {
            part,
            block: block as u32,
            level: level as u32,
            ..base
        };
        for (i, block) in self.input_blocks.iter().enumerate().skip(shared_blocks) {
            let here = at(0, i, self.input_levels[i]);
            h = block.forward(&h, &emb, context, None, wrapping.map(|w| (w, &here)))?;
            if let Some(hooks) = hooks {
                h = hooks.input(i, self.input_levels[i], false, h)?;
            }
            skips.push(h.shallow_clone());
            if let Some(hooks) = hooks {
                h = hooks.input(i, self.input_levels[i], true, h)?;
            }
        }
        let here = at(1, 0, self.levels() - 1);
        h = self
            .middle_block
            .forward(&h, &emb, context, None, wrapping.map(|w| (w, &here)))?;
        for (i, block) in self.output_blocks.iter().enumerate() {
            if let Some(mut skip) = skips.pop() {
                if let Some(hooks) = hooks {
                    (h, skip) = hooks.output(i, self.output_levels[i], h, skip)?;
                }
                h = Tensor::cat(&[&h, &skip], 1);
            }
            let next_size = skips.last().map(|s| (s.size()[2], s.size()[3]));
            let here = at(2, i, self.output_levels[i]);
            h = block.forward(&h, &emb, context, next_size, wrapping.map(|w| (w, &here)))?;
        }
        Ok(self.out_conv.forward(&norm_silu(&self.out_norm, &h)))
    }

    /// The input blocks of [`Self::forward_cfg`] up to and through the first cross-attention,
    /// for rows in groups of `shared` with the same latent: each image on its own, what comes
    /// before its text once, then its rows repeated. One image at a time, so the kernels see
    /// the batch sizes of the image's single run (CPU convolutions pick their algorithm, and
    /// so their rounding, by batch size): a batched image stays bit-identical to its single
    /// run. Returns `h`, the skips, and how many input blocks ran.
    fn shared_prefix(
        &self,
        x: &Tensor,
        emb: &Tensor,
        context: &Tensor,
        shared: i64,
    ) -> (Tensor, Vec<Tensor>, usize) {
        let repeat = |t: &Tensor| t.repeat_interleave_self_int(shared, 0, None);
        let images = x.size()[0] / shared;
        let mut blocks = 0;
        let each: Vec<(Tensor, Vec<Tensor>)> = (0..images)
            .map(|j| {
                let rows = |t: &Tensor| t.narrow(0, j * shared, shared);
                let (emb, context) = (rows(emb), rows(context));
                let emb_unique = emb.narrow(0, 0, 1);
                let mut h = x.narrow(0, j * shared, 1);
                let mut skips = Vec::new();
                let mut unique = true;
                crate::layers::with_images(1, || {
                    for block in &self.input_blocks {
                        if !unique {
                            break;
                        }
                        (h, unique) = block.forward_unique(&h, &emb_unique, &emb, &context, shared);
                        skips.push(match unique {
                            true => repeat(&h),
                            false => h.shallow_clone(),
                        });
                    }
                });
                if unique {
                    h = repeat(&h);
                }
                blocks = skips.len();
                (h, skips)
            })
            .collect();
        let cat = |parts: Vec<&Tensor>| Tensor::cat(&parts, 0);
        let h = cat(each.iter().map(|(h, _)| h).collect());
        let skips = (0..blocks)
            .map(|k| cat(each.iter().map(|(_, s)| &s[k]).collect()))
            .collect();
        (h, skips, blocks)
    }
}
