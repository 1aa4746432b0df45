//! The small layers the transformer is built from, with PyTorch's parameter names (`weight`,
//! `bias`) under the path they are given, so module paths are the weight keys.
//!
//! Parameters start uninitialized: the loader always fills every one of them (a missing tensor
//! is an error), so building a model neither draws random numbers nor writes its memory.
use tch::nn::{self, Module};
use tch::Tensor;

pub use crate::layers::{attention, layer_norm, linear, param, EPS};

/// `x · (1 + scale) + shift`, the adaptive LayerNorm's modulation (`[B, D]` per image).
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Tensor {
    x * (scale.unsqueeze(1) + 1.0) + shift.unsqueeze(1)
}

/// RMSNorm with a learned scale (diffusers `RMSNorm`, the SD3 reference's `RMSNorm`):
/// `x / sqrt(mean(x²) + ε) · weight` over the last dimension.
#[derive(Debug)]
pub struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    pub fn new(p: nn::Path, dim: i64) -> Self {
        RmsNorm {
            weight: param(&p, "weight", &[dim]),
        }
    }
}

impl Module for RmsNorm {
    fn forward(&self, x: &Tensor) -> Tensor {
        let variance = x.square().mean_dim(-1, true, None);
        x * (variance + EPS).rsqrt() * &self.weight
    }
}

/// A two-layer perceptron `fc2(act(fc1(x)))`; the activation is the caller's.
#[derive(Debug)]
pub struct TwoLayers {
    first: nn::Linear,
    second: nn::Linear,
}

impl TwoLayers {
    /// Layers named `{first}` and `{second}` under `p` (`mlp.0`/`mlp.2`, `fc1`/`fc2`).
    pub fn new(p: &nn::Path, names: [&str; 2], dims: [i64; 3]) -> Self {
        TwoLayers {
            first: linear(p / names[0], dims[0], dims[1]),
            second: linear(p / names[1], dims[1], dims[2]),
        }
    }

    /// With SiLU between (timestep and pooled-text embedders).
    pub fn silu(&self, x: &Tensor) -> Tensor {
        self.second.forward(&self.first.forward(x).silu())
    }

    /// With tanh-approximated GELU between (the blocks' feed-forward).
    pub fn gelu_tanh(&self, x: &Tensor) -> Tensor {
        self.second.forward(&self.first.forward(x).gelu("tanh"))
    }
}
