//! The joint blocks: each stream (image `x_block`, text `context_block`) is modulated by the
//! conditioning vector (adaLN-Zero), both attend together over the concatenated tokens, and
//! each goes through its own feed-forward. The last block's text stream is "pre-only": it
//! feeds the joint attention and stops there.
//!
//! Names and modulation order follow SD3's `mmditx.py` (`DismantledBlock`, `JointBlock`,
//! `FinalLayer`), the layout of the single files people download; diffusers'
//! `JointTransformerBlock` (attention.py) computes the same thing, and its SD 3.5 medium
//! `attn2` (`SD35AdaLayerNormZeroX`) is the reference's `x_block_self_attn`.
use tch::nn::{self, Module};
use tch::Tensor;

use super::config::MmDitConfig;
use super::layers::{attention, layer_norm, linear, modulate, RmsNorm, TwoLayers};

/// `qkv` (one fused projection), optional per-head RMSNorm of q and k (`ln_q`, `ln_k`: SD 3.5),
/// and the output projection `proj` (absent on a pre-only stream).
#[derive(Debug)]
pub struct Attention {
    qkv: nn::Linear,
    ln_q: Option<RmsNorm>,
    ln_k: Option<RmsNorm>,
    proj: Option<nn::Linear>,
    heads: i64,
}

impl Attention {
    fn new(p: nn::Path, cfg: &MmDitConfig, pre_only: bool) -> Self {
        let (d, head_dim) = (cfg.hidden_size(), cfg.attention_head_dim);
        let norm = |name: &str| cfg.qk_norm.then(|| RmsNorm::new(&p / name, head_dim));
        Attention {
            qkv: linear(&p / "qkv", d, 3 * d),
            ln_q: norm("ln_q"),
            ln_k: norm("ln_k"),
            proj: (!pre_only).then(|| linear(&p / "proj", d, d)),
            heads: cfg.num_attention_heads,
        }
    }

    /// `[B, L, D]` → q, k, v as contiguous `[B, H, L, d]`, q and k normalized per head. The
    /// one copy into head-major order pays for itself: the norms and libtorch's CPU attention
    /// on the strided views of the fused product took 1.4× as long (4096 tokens, 24 heads).
    fn qkv(&self, x: &Tensor) -> [Tensor; 3] {
        let s = x.size();
        let qkv = self
            .qkv
            .forward(x)
            .reshape([s[0], s[1], 3, self.heads, -1])
            .permute([2, 0, 3, 1, 4])
            .contiguous();
        let part = |i: i64| qkv.get(i);
        let norm = |t: Tensor, n: &Option<RmsNorm>| match n {
            Some(n) => n.forward(&t),
            None => t,
        };
        [
            norm(part(0), &self.ln_q),
            norm(part(1), &self.ln_k),
            part(2),
        ]
    }

    fn project(&self, x: &Tensor) -> Option<Tensor> {
        self.proj.as_ref().map(|p| p.forward(x))
    }

    /// Plain self-attention (SD 3.5 medium's `attn2` on the image tokens).
    fn self_attention(&self, x: &Tensor) -> Tensor {
        let [q, k, v] = self.qkv(x);
        let out = attention(&q, &k, &v);
        self.project(&out).unwrap_or(out)
    }
}

/// One stream of a joint block (`x_block` or `context_block`).
#[derive(Debug)]
pub struct DismantledBlock {
    /// `adaLN_modulation.1`: 2 (pre-only), 6, or 9 (with `attn2`) chunks of `D`.
    modulation: nn::Linear,
    attn: Attention,
    attn2: Option<Attention>,
    mlp: Option<TwoLayers>,
}

/// A stream's input to the joint attention, and what it needs to finish after it.
struct Prepared {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    chunks: Vec<Tensor>,
    /// The normalized input modulated for `attn2`.
    x2: Option<Tensor>,
}

impl DismantledBlock {
    fn new(p: nn::Path, cfg: &MmDitConfig, pre_only: bool, dual: bool) -> Self {
        let d = cfg.hidden_size();
        let chunks = match (pre_only, dual) {
            (true, _) => 2,
            (false, false) => 6,
            (false, true) => 9,
        };
        DismantledBlock {
            modulation: linear(&p / "adaLN_modulation" / "1", d, chunks * d),
            attn: Attention::new(&p / "attn", cfg, pre_only),
            attn2: dual.then(|| Attention::new(&p / "attn2", cfg, false)),
            mlp: (!pre_only).then(|| TwoLayers::new(&(&p / "mlp"), ["fc1", "fc2"], [d, 4 * d, d])),
        }
    }

    /// Chunks in the reference's order: shift, scale, gate (attention), shift, scale, gate
    /// (feed-forward), then shift, scale, gate of `attn2`.
    fn prepare(&self, x: &Tensor, c: &Tensor) -> Prepared {
        let count = self.modulation.ws.size()[0] / self.modulation.ws.size()[1];
        let chunks = self.modulation.forward(&c.silu()).chunk(count, 1);
        let normed = layer_norm(x);
        let [q, k, v] = self.attn.qkv(&modulate(&normed, &chunks[0], &chunks[1]));
        let x2 = (chunks.len() == 9).then(|| modulate(&normed, &chunks[6], &chunks[7]));
        Prepared {
            q,
            k,
            v,
            chunks,
            x2,
        }
    }

    /// The stream after the joint attention's output `attn` for its tokens (`None` when
    /// pre-only).
    fn finish(&self, x: &Tensor, attn: &Tensor, prep: &Prepared) -> Option<Tensor> {
        let (mlp, out) = (self.mlp.as_ref()?, self.attn.project(attn)?);
        let ch = &prep.chunks;
        let mut x = x + ch[2].unsqueeze(1) * out;
        if let (Some(attn2), Some(x2)) = (&self.attn2, &prep.x2) {
            x += ch[8].unsqueeze(1) * attn2.self_attention(x2);
        }
        let h = mlp.gelu_tanh(&modulate(&layer_norm(&x), &ch[3], &ch[4]));
        Some(x + ch[5].unsqueeze(1) * h)
    }
}

/// `joint_blocks.N`: the text and image streams attending together.
#[derive(Debug)]
pub struct JointBlock {
    context_block: DismantledBlock,
    x_block: DismantledBlock,
}

impl JointBlock {
    pub fn new(p: nn::Path, cfg: &MmDitConfig, index: usize) -> Self {
        let pre_only = index + 1 == cfg.num_layers;
        let dual = cfg.dual_attention_layers.contains(&index);
        JointBlock {
            context_block: DismantledBlock::new(&p / "context_block", cfg, pre_only, false),
            x_block: DismantledBlock::new(&p / "x_block", cfg, false, dual),
        }
    }

    /// `(context [B, T, D], x [B, N, D], c [B, D])` → (context, or `None` after the last
    /// block; x). Image tokens come first in the joint sequence, as in diffusers.
    pub fn forward(&self, context: &Tensor, x: &Tensor, c: &Tensor) -> (Option<Tensor>, Tensor) {
        let ctx = self.context_block.prepare(context, c);
        let img = self.x_block.prepare(x, c);
        let joint = |a: &Tensor, b: &Tensor| Tensor::cat(&[a, b], 2);
        let out = attention(
            &joint(&img.q, &ctx.q),
            &joint(&img.k, &ctx.k),
            &joint(&img.v, &ctx.v),
        );
        let n = x.size()[1];
        let (x_out, ctx_out) = (out.narrow(1, 0, n), out.narrow(1, n, out.size()[1] - n));
        let context = self.context_block.finish(context, &ctx_out, &ctx);
        // The image stream is never pre-only: `finish` always gives it back.
        let x = self.x_block.finish(x, &x_out, &img);
        (context, x.unwrap_or(x_out))
    }
}

/// `final_layer`: adaLN (shift, scale) then `linear` to `p·p·C_out` per token.
#[derive(Debug)]
pub struct FinalLayer {
    modulation: nn::Linear,
    linear: nn::Linear,
}

impl FinalLayer {
    pub fn new(p: nn::Path, cfg: &MmDitConfig) -> Self {
        let d = cfg.hidden_size();
        let out = cfg.patch_size * cfg.patch_size * cfg.out_channels;
        FinalLayer {
            modulation: linear(&p / "adaLN_modulation" / "1", d, 2 * d),
            linear: linear(&p / "linear", d, out),
        }
    }

    pub fn forward(&self, x: &Tensor, c: &Tensor) -> Tensor {
        let chunks = self.modulation.forward(&c.silu()).chunk(2, 1);
        self.linear
            .forward(&modulate(&layer_norm(x), &chunks[0], &chunks[1]))
    }
}
