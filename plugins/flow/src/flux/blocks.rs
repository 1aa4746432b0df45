//! Flux's blocks under BFL names: the double-stream block (`double_blocks.N`: image and text
//! streams with their own weights, attention over both), the single-stream block
//! (`single_blocks.N`: one stream of text + image tokens, `linear1` → q, k, v and the MLP's
//! input, `linear2` over attention ⧺ MLP), and the final layer.
use tch::nn::{self, Module};
use tch::Tensor;

use super::config::FluxConfig;
use super::embeddings::apply_rope;
use super::layers::{
    attention, linear, modulation, norm_modulate, split_qkv, weight_for, Linear, Mlp, QkNorm,
};

/// One stream's weights of a double block (`img_*` or `txt_*`).
#[derive(Debug)]
struct Stream {
    modulation: Linear,
    qkv: Linear,
    norm: QkNorm,
    proj: Linear,
    mlp: Mlp,
}

impl Stream {
    fn new(p: &nn::Path, name: &str, c: &FluxConfig) -> Self {
        let (d, attn) = (c.hidden_size(), p / format!("{name}_attn"));
        Stream {
            modulation: linear(p / format!("{name}_mod") / "lin", d, 6 * d),
            qkv: linear(&attn / "qkv", d, 3 * d),
            norm: QkNorm::new(&attn / "norm", c.head_dim),
            proj: linear(&attn / "proj", d, d),
            mlp: Mlp::new(p / format!("{name}_mlp"), d, c.mlp_hidden),
        }
    }
}

/// A double-stream block (BFL `DoubleStreamBlock`, diffusers `FluxTransformerBlock`).
#[derive(Debug)]
pub struct DoubleBlock {
    img: Stream,
    txt: Stream,
    heads: i64,
}

impl DoubleBlock {
    /// The block's modules under `p` (`double_blocks.N`), parameters uninitialized.
    pub fn new(p: nn::Path, c: &FluxConfig) -> Self {
        DoubleBlock {
            img: Stream::new(&p, "img", c),
            txt: Stream::new(&p, "txt", c),
            heads: c.heads,
        }
    }

    /// `img` `[B, L, D]`, `txt` `[B, T, D]`, `vec` `[B, D]`, `pe` the RoPE of text then image
    /// ids → the new `(img, txt)`.
    pub fn forward(
        &self,
        img: &Tensor,
        txt: &Tensor,
        vec: &Tensor,
        pe: &(Tensor, Tensor),
    ) -> (Tensor, Tensor) {
        let im = modulation(&self.img.modulation, vec, 6);
        let tm = modulation(&self.txt.modulation, vec, 6);
        let qkv = |s: &Stream, x: &Tensor, m: &[Tensor]| {
            let (q, k, v) = split_qkv(&s.qkv.forward(&norm_modulate(x, &m[0], &m[1])), self.heads);
            let (q, k) = s.norm.forward(&q, &k);
            (q, k, v)
        };
        // Scoped: q, k and v are freed before the MLPs, whose hidden states are the largest.
        let out = {
            let (iq, ik, iv) = qkv(&self.img, img, &im);
            let (tq, tk, tv) = qkv(&self.txt, txt, &tm);
            let q = apply_rope(&Tensor::cat(&[tq, iq], 2), pe);
            let k = apply_rope(&Tensor::cat(&[tk, ik], 2), pe);
            let v = Tensor::cat(&[tv, iv], 2);
            attention(&q, &k, &v)
        };
        let t_len = txt.size()[1];
        let (txt_attn, img_attn) = (out.narrow(1, 0, t_len), out.narrow(1, t_len, img.size()[1]));
        let finish = |s: &Stream, x: &Tensor, a: &Tensor, m: &[Tensor]| {
            let x = x + m[2].unsqueeze(1) * s.proj.forward(a);
            let y = s.mlp.forward(&norm_modulate(&x, &m[3], &m[4]));
            &x + m[5].unsqueeze(1) * y
        };
        (
            finish(&self.img, img, &img_attn, &im),
            finish(&self.txt, txt, &txt_attn, &tm),
        )
    }
}

/// A single-stream block (BFL `SingleStreamBlock`, diffusers `FluxSingleTransformerBlock`).
#[derive(Debug)]
pub struct SingleBlock {
    modulation: Linear,
    linear1: Linear,
    norm: QkNorm,
    linear2: Linear,
    heads: i64,
    hidden: i64,
}

impl SingleBlock {
    /// The block's modules under `p` (`single_blocks.N`), parameters uninitialized.
    pub fn new(p: nn::Path, c: &FluxConfig) -> Self {
        let d = c.hidden_size();
        SingleBlock {
            modulation: linear(&p / "modulation" / "lin", d, 3 * d),
            linear1: linear(&p / "linear1", d, 3 * d + c.mlp_hidden),
            norm: QkNorm::new(&p / "norm", c.head_dim),
            linear2: linear(&p / "linear2", d + c.mlp_hidden, d),
            heads: c.heads,
            hidden: d,
        }
    }

    /// `x` `[B, T + L, D]` (text then image tokens), `vec` `[B, D]`, `pe` their RoPE → new `x`.
    ///
    /// `linear1` runs as two products over row slices of its weight (q, k, v, then the MLP's
    /// input; the same sums as the fused one, as diffusers' separate linears): its fused output
    /// (`[T + L, 3D + MLP]`) would otherwise stay alive, viewed by v and the MLP's input, until
    /// the concatenation, which made this block's peak 25 % over diffusers' (BENCHMARKS.md).
    pub fn forward(&self, x: &Tensor, vec: &Tensor, pe: &(Tensor, Tensor)) -> Tensor {
        let m = modulation(&self.modulation, vec, 3);
        let xm = norm_modulate(x, &m[0], &m[1]);
        let d = self.hidden;
        let (w, b) = (&self.linear1.ws, self.linear1.bs.as_ref());
        let rows = |start: i64, len: i64| {
            let bias = b.map(|b| b.narrow(0, start, len));
            xm.linear(&weight_for(&w.narrow(0, start, len), &xm), bias.as_ref())
        };
        let attn = {
            let (q, k, v) = split_qkv(&rows(0, 3 * d), self.heads);
            let (q, k) = self.norm.forward(&q, &k);
            attention(&apply_rope(&q, pe), &apply_rope(&k, pe), &v)
        };
        let mlp = rows(3 * d, w.size()[0] - 3 * d).gelu("tanh");
        let out = self.linear2.forward(&Tensor::cat(&[attn, mlp], -1));
        x + m[2].unsqueeze(1) * out
    }
}

/// `final_layer`: `linear((1 + scale) · LayerNorm(x) + shift)`, `(shift, scale)` in that order
/// from `adaLN_modulation.1` (BFL `LastLayer`; diffusers keeps `(scale, shift)`: the layout
/// swaps them).
#[derive(Debug)]
pub struct FinalLayer {
    modulation: Linear,
    linear: Linear,
}

impl FinalLayer {
    pub fn new(p: nn::Path, c: &FluxConfig) -> Self {
        let d = c.hidden_size();
        FinalLayer {
            modulation: linear(&p / "adaLN_modulation" / "1", d, 2 * d),
            linear: linear(&p / "linear", d, c.out_channels),
        }
    }

    pub fn forward(&self, x: &Tensor, vec: &Tensor) -> Tensor {
        let m = modulation(&self.modulation, vec, 2);
        self.linear.forward(&norm_modulate(x, &m[0], &m[1]))
    }
}
