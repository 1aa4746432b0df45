//! Small building blocks shared by the CLIP, UNet and VAE code. Every constructor names its
//! parameters `weight` / `bias` under the given path, as PyTorch does.
//!
//! Parameters start at zero: they are always overwritten, by a checkpoint or by the seeded
//! init of `tiny::write_random_checkpoint`, and zeros cost no random draws at load time.
use std::cell::Cell;

use tch::nn::{self, Init, Module, PaddingMode};
use tch::Tensor;

const ZERO: Init = Init::Const(0.0);

thread_local! {
    /// Set while a seamless model is built: padded convolutions pad circularly.
    static CIRCULAR: Cell<bool> = const { Cell::new(false) };
}

/// Runs `build` with every padded [`conv2d`] made circular when `on` (seamless, tileable
/// output: A1111's "Tiling" sets `padding_mode = "circular"` on every Conv2d of the model).
pub fn with_circular_padding<T>(on: bool, build: impl FnOnce() -> T) -> T {
    let before = CIRCULAR.with(|c| c.replace(on));
    let out = build();
    CIRCULAR.with(|c| c.set(before));
    out
}

thread_local! {
    /// Images in the UNet call now running (see [`per_image`]).
    static IMAGES: Cell<i64> = const { Cell::new(1) };
}

/// Runs `f` (a UNet call over `images` images, image-major: each image's CFG rows together)
/// with every [`per_image`] linear layer applied one image at a time.
pub fn with_images<T>(images: i64, f: impl FnOnce() -> T) -> T {
    let before = IMAGES.with(|c| c.replace(images.max(1)));
    let out = f();
    IMAGES.with(|c| c.set(before));
    out
}

/// A UNet linear layer whose result for an image does not depend on the other images of the
/// batch. Matrix products pick their blocking (hence the order of their sums) by the row
/// count, so one product over several images rounds differently from an image's own run;
/// convolutions, GroupNorm and attention here are per image already. Applying the layer to
/// each image's rows (the shapes of its single run) keeps a batched image bit-identical to
/// that run, for a few more, still large, products.
pub fn per_image(layer: &nn::Linear, x: &Tensor) -> Tensor {
    let images = IMAGES.with(Cell::get);
    let rows = x.size().first().copied().unwrap_or(1);
    if images <= 1 || rows % images != 0 {
        return layer.forward(x);
    }
    let each: Vec<Tensor> = x
        .chunk(images, 0)
        .iter()
        .map(|c| layer.forward(c))
        .collect();
    Tensor::cat(&each, 0)
}

/// Group count of every GroupNorm in SD (LDM `Normalize`, diffusers `norm_num_groups`).
pub const NORM_GROUPS: i64 = 32;

pub fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
    nn::conv2d(
        p,
        c_in,
        c_out,
        kernel,
        nn::ConvConfig {
            stride,
            padding,
            ws_init: ZERO,
            bs_init: ZERO,
            padding_mode: match padding > 0 && CIRCULAR.with(Cell::get) {
                true => PaddingMode::Circular,
                false => PaddingMode::Zeros,
            },
            ..Default::default()
        },
    )
}

pub fn linear(p: nn::Path, d_in: i64, d_out: i64, bias: bool) -> nn::Linear {
    nn::linear(
        p,
        d_in,
        d_out,
        nn::LinearConfig {
            bias,
            ws_init: ZERO,
            bs_init: Some(ZERO),
        },
    )
}

pub fn group_norm(p: nn::Path, channels: i64, eps: f64) -> nn::GroupNorm {
    nn::group_norm(
        p,
        NORM_GROUPS,
        channels,
        nn::GroupNormConfig {
            eps,
            ws_init: ZERO,
            bs_init: ZERO,
            ..Default::default()
        },
    )
}

pub fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    nn::layer_norm(
        p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            ws_init: ZERO,
            bs_init: ZERO,
            ..Default::default()
        },
    )
}

/// `[B, L, heads*d]` queries/keys/values → attention output `[B, L, heads*d]`, through
/// `scaled_dot_product_attention` (default scale 1/sqrt(d)).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: i64, causal: bool) -> Tensor {
    let split = |x: &Tensor| {
        let s = x.size();
        x.reshape([s[0], s[1], heads, s[2] / heads]).transpose(1, 2)
    };
    let out = Tensor::scaled_dot_product_attention(
        &split(q),
        &split(k),
        &split(v),
        None::<Tensor>,
        0.0,
        causal,
        None,
        false,
    );
    let s = q.size();
    out.transpose(1, 2).reshape([s[0], s[1], s[2]])
}

/// GroupNorm → SiLU, the pre-activation used before most convs in SD.
pub fn norm_silu(norm: &nn::GroupNorm, x: &Tensor) -> Tensor {
    norm.forward(x).silu()
}

pub fn embedding(p: nn::Path, count: i64, dim: i64) -> nn::Embedding {
    nn::embedding(
        p,
        count,
        dim,
        nn::EmbeddingConfig {
            ws_init: ZERO,
            ..Default::default()
        },
    )
}
