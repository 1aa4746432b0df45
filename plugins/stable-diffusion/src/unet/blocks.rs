//! The blocks of the LDM `UNetModel` (ldm/modules/diffusionmodules/openaimodel.py) and its
//! `SpatialTransformer` (ldm/modules/attention.py). Module paths are the LDM keys.
use anyhow::Result;
use tch::nn::{self, Module};
use tch::Tensor;

use super::config::UNetConfig;
use super::hooks::{AttentionAt, Hooks};
use crate::layers::{
    attention, conv2d, group_norm, layer_norm, linear, norm_silu, per_image, Conv2d,
};

/// LDM `ResBlock`: two GroupNorm-SiLU-conv stages with the timestep embedding added between.
pub struct ResBlock {
    in_norm: nn::GroupNorm,
    in_conv: Conv2d,
    emb_proj: nn::Linear,
    out_norm: nn::GroupNorm,
    out_conv: Conv2d,
    skip: Option<Conv2d>,
}

impl ResBlock {
    pub fn new(p: nn::Path, c_in: i64, c_out: i64, emb_dim: i64) -> Self {
        Self {
            in_norm: group_norm(&p / "in_layers" / 0, c_in, 1e-5),
            in_conv: conv2d(&p / "in_layers" / 2, c_in, c_out, 3, 1, 1),
            emb_proj: linear(&p / "emb_layers" / 1, emb_dim, c_out, true),
            out_norm: group_norm(&p / "out_layers" / 0, c_out, 1e-5),
            out_conv: conv2d(&p / "out_layers" / 3, c_out, c_out, 3, 1, 1),
            skip: (c_in != c_out).then(|| conv2d(&p / "skip_connection", c_in, c_out, 1, 1, 0)),
        }
    }

    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Tensor {
        // Sums land in place in the fresh conv outputs (a + b rounds as b + a).
        let mut h = self.in_conv.forward(&norm_silu(&self.in_norm, x));
        h += per_image(&self.emb_proj, &emb.silu())
            .unsqueeze(-1)
            .unsqueeze(-1);
        let mut h = self.out_conv.forward(&norm_silu(&self.out_norm, &h));
        match &self.skip {
            Some(skip) => {
                let mut s = skip.forward(x);
                s += h;
                s
            }
            None => {
                h += x;
                h
            }
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
            &per_image(&self.to_q, x),
            &per_image(&self.to_k, ctx),
            &per_image(&self.to_v, ctx),
            self.heads,
            false,
        );
        per_image(&self.to_out, &h)
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
    /// Its index among the UNet's transformer blocks, in forward order.
    index: u32,
}

impl TransformerBlock {
    fn new(p: nn::Path, dim: i64, context_dim: i64, heads: i64, index: u32) -> Self {
        let inner = dim * 4;
        Self {
            index,
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
        self.after_self_attention(&self.self_attention(x), context)
    }

    /// The self-attention and its residual: all that comes before the text context.
    fn self_attention(&self, x: &Tensor) -> Tensor {
        // Each residual sum lands in place in the fresh output of its branch.
        let mut a = self.attn1.forward(&self.norm1.forward(x), None);
        a += x;
        a
    }

    /// [`Self::self_attention`] with the patches' attention hooks around `attn1` (they see
    /// the block input `x` and `norm1(x)` and return the attention's output).
    fn self_attention_hooked(
        &self,
        x: &Tensor,
        hooks: &dyn Hooks,
        at: &AttentionAt,
    ) -> Result<Tensor> {
        let at = AttentionAt {
            transformer: self.index,
            ..*at
        };
        let run = |t: &Tensor| Ok(self.attn1.forward(t, None));
        let mut a = hooks.attention(&at, x, self.norm1.forward(x), &run)?;
        a += x;
        Ok(a)
    }

    /// Cross-attention to `context` and the feed-forward, after [`Self::self_attention`].
    fn after_self_attention(&self, a: &Tensor, context: &Tensor) -> Tensor {
        let mut b = self.attn2.forward(&self.norm2.forward(a), Some(context));
        b += a;
        let h = per_image(&self.ff_proj, &self.norm3.forward(&b)).chunk(2, -1);
        let mut gate = h[1].gelu("none");
        gate *= &h[0];
        let mut out = per_image(&self.ff_out, &gate);
        out += &b;
        out
    }
}

/// `proj_in` / `proj_out`: a 1x1 conv (SD 1.x) or a Linear over channels (SD 2.x).
enum Projection {
    Conv(Conv2d),
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
pub struct SpatialTransformer {
    norm: nn::GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

impl SpatialTransformer {
    /// `first`: the UNet-wide index of its first transformer block (forward order).
    pub fn new(
        p: nn::Path,
        (channels, depth, heads): (i64, usize, i64),
        cfg: &UNetConfig,
        first: u32,
    ) -> Self {
        let blocks = &p / "transformer_blocks";
        Self {
            norm: group_norm(&p / "norm", channels, 1e-6),
            proj_in: Projection::new(&p / "proj_in", channels, channels, cfg.linear_projection),
            blocks: (0..depth)
                .map(|i| {
                    let index = first + i as u32;
                    TransformerBlock::new(&blocks / i, channels, cfg.context_dim, heads, index)
                })
                .collect(),
            proj_out: Projection::new(&p / "proj_out", channels, channels, cfg.linear_projection),
        }
    }

    pub fn forward(&self, x: &Tensor, context: &Tensor) -> Tensor {
        self.forward_shared(x, context, 1)
    }

    /// [`Self::forward`] with the patches' attention hooks around every block's
    /// self-attention (`at`: where; its grid fields are filled in here).
    pub fn forward_hooked(
        &self,
        x: &Tensor,
        context: &Tensor,
        hooks: &dyn Hooks,
        at: &AttentionAt,
    ) -> Result<Tensor> {
        let s = x.size();
        let (c, h, w) = (s[1], s[2], s[3]);
        let at = AttentionAt {
            height: h as u32,
            width: w as u32,
            ..*at
        };
        let mut tokens = self.tokens_in(x);
        for block in &self.blocks {
            let a = block.self_attention_hooked(&tokens, hooks, &at)?;
            tokens = block.after_self_attention(&a, context);
        }
        let mut out = self.tokens_out(&tokens, (c, h, w));
        out += x;
        Ok(out)
    }

    /// GroupNorm and `proj_in`: `x` `[b, c, h, w]` as tokens `[b, h*w, c]`, contiguous.
    fn tokens_in(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (b, c, h, w) = (s[0], s[1], s[2], s[3]);
        let to_tokens = |t: &Tensor| t.reshape([b, c, h * w]).transpose(1, 2).contiguous();
        let normed = self.norm.forward(x);
        match &self.proj_in {
            Projection::Conv(conv) => to_tokens(&conv.forward(&normed)),
            Projection::Linear(lin) => per_image(lin, &to_tokens(&normed)),
        }
    }

    /// `proj_out` of tokens `[rows, h*w, c]` as NCHW `[rows, c, h, w]`, contiguous.
    fn tokens_out(&self, tokens: &Tensor, (c, h, w): (i64, i64, i64)) -> Tensor {
        let to_image = |t: &Tensor| t.transpose(1, 2).reshape([-1, c, h, w]).contiguous();
        match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_image(tokens)),
            Projection::Linear(lin) => to_image(&per_image(lin, tokens)),
        }
    }

    /// How many transformer blocks it has.
    pub fn depth(&self) -> u32 {
        self.blocks.len() as u32
    }

    /// [`Self::forward`] for `shared` rows of `context` per row of `x` (see
    /// [`super::UNetModel::forward_cfg`]): everything before the first cross-attention —
    /// GroupNorm, `proj_in`, the first block's self-attention — runs once per row of `x`,
    /// then each row is repeated `shared` times. Returns `x.rows × shared` rows.
    pub fn forward_shared(&self, x: &Tensor, context: &Tensor, shared: i64) -> Tensor {
        let s = x.size();
        let (c, h, w) = (s[1], s[2], s[3]);
        let repeat = |t: &Tensor| match shared {
            1 => t.shallow_clone(),
            n => t.repeat_interleave_self_int(n, 0, None),
        };
        let mut tokens = self.tokens_in(x);
        let mut blocks = self.blocks.iter();
        if let Some(first) = blocks.next() {
            tokens = first.after_self_attention(&repeat(&first.self_attention(&tokens)), context);
        }
        for block in blocks {
            tokens = block.forward(&tokens, context);
        }
        let mut out = self.tokens_out(&tokens, (c, h, w));
        out += repeat(x);
        out
    }
}
