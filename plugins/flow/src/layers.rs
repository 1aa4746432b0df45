//! The layers both transformers (the MMDiT and Flux) are built from, with PyTorch's parameter
//! names (`weight`, `bias`) under the path they are given, so module paths are the weight keys.
//!
//! Parameters start uninitialized: the loaders fill every one of them (a missing tensor is an
//! error), so building a model neither draws random numbers nor writes its memory.
use tch::nn;
use tch::Tensor;

/// Epsilon of every LayerNorm and RMSNorm of the MMDiT and Flux (their references and
/// diffusers: 1e-6).
pub const EPS: f64 = 1e-6;

/// A parameter `name` of shape `dims` under `p`, uninitialized (module docs).
pub fn param(p: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    p.add(name, Tensor::empty(dims, (p.kind(), p.device())), false)
}

/// `nn::Linear` `d_in → d_out` with a bias.
pub fn linear(p: nn::Path, d_in: i64, d_out: i64) -> nn::Linear {
    nn::Linear {
        ws: param(&p, "weight", &[d_out, d_in]),
        bs: Some(param(&p, "bias", &[d_out])),
    }
}

/// LayerNorm over the last dimension without affine parameters (`elementwise_affine=False`).
pub fn layer_norm(x: &Tensor) -> Tensor {
    let dim = x.size().last().copied().unwrap_or(1);
    x.layer_norm([dim], None::<Tensor>, None::<Tensor>, EPS, false)
}

/// Attention of `[B, H, L, d]` queries over keys/values (default scale `1/√d`) → `[B, L, H·d]`.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let out =
        Tensor::scaled_dot_product_attention(q, k, v, None::<Tensor>, 0.0, false, None, false);
    let s = out.size();
    out.transpose(1, 2).reshape([s[0], s[2], s[1] * s[3]])
}

/// `a.b.c.` → the VarStore path `a / b / c` (a model key prefix as a module path).
pub fn prefix_path<'a>(root: &nn::Path<'a>, prefix: &str) -> nn::Path<'a> {
    let mut parts = prefix.split('.').filter(|p| !p.is_empty());
    let first = parts.next().unwrap_or("model");
    parts.fold(root.sub(first), |p, part| p.sub(part))
}
