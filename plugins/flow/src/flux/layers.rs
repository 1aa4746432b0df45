//! The small layers the transformer is built from, with PyTorch's parameter names (`weight`,
//! `bias`, BFL's `scale`) under the path they are given, so module paths are the weight keys.
//!
//! Parameters start uninitialized: the loader fills every one of them (a missing tensor is an
//! error), so building a model neither draws random numbers nor writes its memory.
use tch::nn::{self, Module};
use tch::Tensor;

pub use crate::layers::{attention, layer_norm, param, EPS};

/// A linear layer whose weight may be stored narrower than the activations (fp8 weights,
/// `[model] weight_dtype = "fp8_e4m3fn"`): the weight is converted to the input's dtype for
/// each call, one layer at a time (ComfyUI's and Forge's fp8 storage); otherwise `Linear`.
#[derive(Debug)]
pub struct Linear {
    pub ws: Tensor,
    pub bs: Option<Tensor>,
}

/// [`Linear`] `d_in → d_out` with a bias (parameters `weight`, `bias` under `p`).
pub fn linear(p: nn::Path, d_in: i64, d_out: i64) -> Linear {
    let l = crate::layers::linear(p, d_in, d_out);
    Linear { ws: l.ws, bs: l.bs }
}

/// `w` in `x`'s dtype: itself, or converted (a stored fp8 weight).
pub fn weight_for(w: &Tensor, x: &Tensor) -> Tensor {
    match w.kind() == x.kind() {
        true => w.shallow_clone(),
        false => w.to_kind(x.kind()),
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&weight_for(&self.ws, x), self.bs.as_ref())
    }
}

/// `(1 + scale) · LayerNorm(x) + shift` with `[B, D]` modulation per image.
pub fn norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    layer_norm(x) * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

/// `lin(silu(vec))` cut into `n` `[B, D]` pieces (BFL `Modulation`, diffusers `AdaLayerNormZero`
/// / `AdaLayerNormZeroSingle` / `AdaLayerNormContinuous`'s linear).
pub fn modulation(lin: &Linear, vec: &Tensor, n: i64) -> Vec<Tensor> {
    lin.forward(&vec.silu()).chunk(n, -1)
}

/// BFL `QKNorm`: RMSNorm of queries and keys per head (`query_norm.scale`, `key_norm.scale`).
#[derive(Debug)]
pub struct QkNorm {
    query: Tensor,
    key: Tensor,
}

impl QkNorm {
    pub fn new(p: nn::Path, head_dim: i64) -> Self {
        QkNorm {
            query: param(&(&p / "query_norm"), "scale", &[head_dim]),
            key: param(&(&p / "key_norm"), "scale", &[head_dim]),
        }
    }

    pub fn forward(&self, q: &Tensor, k: &Tensor) -> (Tensor, Tensor) {
        (rms_norm(q, &self.query), rms_norm(k, &self.key))
    }
}

/// `x / sqrt(mean(x²) + ε) · scale` over the last dimension (`torch.nn.RMSNorm`).
fn rms_norm(x: &Tensor, scale: &Tensor) -> Tensor {
    x * (x.square().mean_dim(-1, true, None) + EPS).rsqrt() * scale
}

/// BFL `MLPEmbedder`: `out_layer(silu(in_layer(x)))` (time, guidance and pooled-text inputs).
#[derive(Debug)]
pub struct MlpEmbedder {
    in_layer: Linear,
    out_layer: Linear,
}

impl MlpEmbedder {
    pub fn new(p: nn::Path, d_in: i64, d: i64) -> Self {
        MlpEmbedder {
            in_layer: linear(&p / "in_layer", d_in, d),
            out_layer: linear(&p / "out_layer", d, d),
        }
    }
}

impl Module for MlpEmbedder {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.out_layer.forward(&self.in_layer.forward(x).silu())
    }
}

/// The blocks' feed-forward `2(gelu_tanh(0(x)))` (BFL `img_mlp.0` / `img_mlp.2`).
#[derive(Debug)]
pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn new(p: nn::Path, d: i64, hidden: i64) -> Self {
        Mlp {
            fc1: linear(&p / "0", d, hidden),
            fc2: linear(&p / "2", hidden, d),
        }
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.fc2.forward(&self.fc1.forward(x).gelu("tanh"))
    }
}

/// `[B, L, 3·H·d]` fused projections → q, k, v `[B, H, L, d]`.
pub fn split_qkv(qkv: &Tensor, heads: i64) -> (Tensor, Tensor, Tensor) {
    let s = qkv.size();
    let d = s[2] / (3 * heads);
    let t = qkv
        .reshape([s[0], s[1], 3, heads, d])
        .permute([2, 0, 3, 1, 4]);
    (t.get(0), t.get(1), t.get(2))
}
