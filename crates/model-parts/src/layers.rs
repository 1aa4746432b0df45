//! Small building blocks shared by the CLIP, UNet and VAE code. Every constructor names its
//! parameters `weight` / `bias` under the given path, as PyTorch does.
//!
//! Parameters start uninitialized ([`param`]): they are always filled, from a checkpoint or by
//! the seeded init of a backend's random checkpoint writer, so building a model neither draws
//! random numbers nor writes (and faults in) its memory — a parameter that then views the
//! checkpoint file (zero-copy loading, `weights::mapped`) never had memory of its own.
use std::cell::Cell;

use tch::nn::{self, Init, Module, PaddingMode};
use tch::{Device, Kind, Tensor};

const ZERO: Init = Init::Const(0.0);

/// A trainable parameter `name` of shape `dims` under `p`, uninitialized (module docs).
fn param(p: &nn::Path, name: &str, dims: &[i64]) -> Tensor {
    p.add(name, Tensor::empty(dims, (p.kind(), p.device())), true)
}

/// Gives the variable `t` (made by a tch builder with a zero-size shape: nothing to write)
/// the shape `dims`, uninitialized; every module and the VarStore hold this same tensor.
fn reshape_uninit(t: &Tensor, dims: &[i64]) {
    let empty = Tensor::empty(dims, (t.kind(), t.device()));
    tch::no_grad(|| t.shallow_clone().set_data(&empty));
}

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
    each_image(x, |rows| layer.forward(rows))
}

/// `f` applied to each image's rows of `x` (see [`with_images`]), the results concatenated.
fn each_image(x: &Tensor, f: impl Fn(&Tensor) -> Tensor) -> Tensor {
    let images = IMAGES.with(Cell::get);
    let rows = x.size().first().copied().unwrap_or(1);
    if images <= 1 || rows % images != 0 {
        return f(x);
    }
    let each: Vec<Tensor> = x.chunk(images, 0).iter().map(f).collect();
    Tensor::cat(&each, 0)
}

/// Group count of every GroupNorm in SD (LDM `Normalize`, diffusers `norm_num_groups`).
pub const NORM_GROUPS: i64 = 32;

/// Output cells (h·w) up to which a CPU fp32 convolution runs as im2col + one matrix
/// product: SD's 8×8 and 4×4 UNet levels (1280 channels), where libtorch's direct kernel
/// reaches a third of the matmul peak and the product two thirds or more; from 16×16 on the
/// direct kernel is as fast or faster (figures: BENCHMARKS.md, "Small feature maps").
pub const MATMUL_MAX_CELLS: i64 = 64;

/// A 2-D convolution with PyTorch's parameters (`weight` `[out, in, k, k]`, `bias`), zero or
/// circular padding. On small CPU fp32 feature maps (see [`MATMUL_MAX_CELLS`]) it runs as a
/// matrix product of the weight with the unfolded input, one image's rows at a time (as
/// [`per_image`]); otherwise as libtorch's convolution.
#[derive(Debug)]
pub struct Conv2d {
    conv: nn::Conv2D,
    kernel: i64,
    stride: i64,
    padding: i64,
    circular: bool,
}

impl Conv2d {
    /// Output size along a side of `size` cells.
    fn out_side(&self, size: i64) -> i64 {
        (size + 2 * self.padding - self.kernel) / self.stride + 1
    }

    fn as_matmul(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let (n, c, h, w) = (s[0], s[1], s[2], s[3]);
        let (ho, wo) = (self.out_side(h), self.out_side(w));
        let (k, st, p) = (self.kernel, self.stride, self.padding);
        let cols = match k == 1 && st == 1 && p == 0 {
            true => x.reshape([n, c, h * w]),
            false => x.im2col([k, k], [1, 1], [p, p], [st, st]),
        };
        let out_channels = self.conv.ws.size()[0];
        let mut out = self.conv.ws.reshape([out_channels, -1]).matmul(&cols);
        if let Some(bias) = &self.conv.bs {
            out += bias.reshape([1, out_channels, 1]);
        }
        out.reshape([n, out_channels, ho, wo])
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let fits = |side: i64| side + 2 * self.padding >= self.kernel;
        let small = s.len() == 4
            && fits(s[2])
            && fits(s[3])
            && self.out_side(s[2]) * self.out_side(s[3]) <= MATMUL_MAX_CELLS;
        match small && !self.circular && x.device() == Device::Cpu && x.kind() == Kind::Float {
            true => each_image(x, |rows| self.as_matmul(rows)),
            false => self.conv.forward(x),
        }
    }
}

pub fn conv2d(
    p: nn::Path,
    c_in: i64,
    c_out: i64,
    kernel: i64,
    stride: i64,
    padding: i64,
) -> Conv2d {
    let circular = padding > 0 && CIRCULAR.with(Cell::get);
    // Built with a 0×0 kernel (a weight of no elements, a bias of `c_out` zeros), then given
    // its real shapes uninitialized.
    let conv = nn::conv2d(
        p,
        c_in,
        c_out,
        0,
        nn::ConvConfig {
            stride,
            padding,
            ws_init: ZERO,
            bs_init: ZERO,
            padding_mode: match circular {
                true => PaddingMode::Circular,
                false => PaddingMode::Zeros,
            },
            ..Default::default()
        },
    );
    reshape_uninit(&conv.ws, &[c_out, c_in, kernel, kernel]);
    if let Some(bs) = &conv.bs {
        reshape_uninit(bs, &[c_out]);
    }
    Conv2d {
        conv,
        kernel,
        stride,
        padding,
        circular,
    }
}

pub fn linear(p: nn::Path, d_in: i64, d_out: i64, bias: bool) -> nn::Linear {
    nn::Linear {
        ws: param(&p, "weight", &[d_out, d_in]),
        bs: bias.then(|| param(&p, "bias", &[d_out])),
    }
}

/// Built without parameters (`affine: false`), then given its weight and bias: the forward
/// uses them whenever they are there.
pub fn group_norm(p: nn::Path, channels: i64, eps: f64) -> nn::GroupNorm {
    let mut norm = nn::group_norm(
        &p,
        NORM_GROUPS,
        channels,
        nn::GroupNormConfig {
            eps,
            affine: false,
            ..Default::default()
        },
    );
    norm.ws = Some(param(&p, "weight", &[channels]));
    norm.bs = Some(param(&p, "bias", &[channels]));
    norm
}

/// As [`group_norm`].
pub fn layer_norm(p: nn::Path, dim: i64, eps: f64) -> nn::LayerNorm {
    let mut norm = nn::layer_norm(
        &p,
        vec![dim],
        nn::LayerNormConfig {
            eps,
            elementwise_affine: false,
            ..Default::default()
        },
    );
    norm.ws = Some(param(&p, "weight", &[dim]));
    norm.bs = Some(param(&p, "bias", &[dim]));
    norm
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

/// GroupNorm → SiLU, the pre-activation used before most convs in SD. The SiLU runs in
/// place on the norm's fresh output: one full-size buffer less, no fresh pages to fault in.
pub fn norm_silu(norm: &nn::GroupNorm, x: &Tensor) -> Tensor {
    let mut h = norm.forward(x);
    let _ = h.silu_();
    h
}

/// Built with no rows, then given its `count` rows uninitialized.
pub fn embedding(p: nn::Path, count: i64, dim: i64) -> nn::Embedding {
    let embedding = nn::embedding(
        p,
        0,
        dim,
        nn::EmbeddingConfig {
            ws_init: ZERO,
            ..Default::default()
        },
    );
    reshape_uninit(&embedding.ws, &[count, dim]);
    embedding
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::nn::VarStore;

    /// A conv of random weights: (stride, padding, kernel) as given, circular or not.
    fn random_conv(vs: &VarStore, c_in: i64, c_out: i64, k: i64, stride: i64, pad: i64) -> Conv2d {
        let conv = conv2d(
            vs.root() / format!("c{k}{stride}{pad}"),
            c_in,
            c_out,
            k,
            stride,
            pad,
        );
        tch::no_grad(|| {
            let _ = conv.conv.ws.shallow_clone().normal_(0.0, 0.1);
            let _ = conv
                .conv
                .bs
                .as_ref()
                .unwrap()
                .shallow_clone()
                .normal_(0.0, 0.1);
        });
        conv
    }

    #[test]
    fn small_maps_convolve_as_a_matrix_product_like_libtorch() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        for (k, stride, pad, side) in [
            (3, 1, 1, 8),
            (3, 2, 1, 8),
            (1, 1, 0, 4),
            (3, 1, 1, 5),
            (3, 2, 0, 9),
        ] {
            let conv = random_conv(&vs, 24, 16, k, stride, pad);
            let x = Tensor::randn([2, 24, side, side], (Kind::Float, Device::Cpu));
            let out_side = conv.out_side(side);
            assert!(out_side * out_side <= MATMUL_MAX_CELLS);
            let ours = conv.forward(&x);
            let theirs = conv.conv.forward(&x);
            assert_eq!(ours.size(), theirs.size());
            let diff = f64::try_from((&ours - &theirs).abs().max()).unwrap();
            assert!(
                diff < 1e-5,
                "k {k} stride {stride} pad {pad} side {side}: {diff}"
            );
            // One image's rows alone give that image's result exactly (batched = single run).
            let alone = with_images(1, || conv.forward(&x.narrow(0, 1, 1)));
            let batched = with_images(2, || conv.forward(&x));
            assert!(
                batched.narrow(0, 1, 1).equal(&alone),
                "k {k} stride {stride}"
            );
        }
    }

    #[test]
    fn large_maps_and_circular_padding_stay_on_libtorch_convolution() {
        tch::manual_seed(1);
        let vs = VarStore::new(Device::Cpu);
        let conv = random_conv(&vs, 8, 8, 3, 1, 1);
        let x = Tensor::randn([1, 8, 16, 16], (Kind::Float, Device::Cpu));
        assert!(conv.forward(&x).equal(&conv.conv.forward(&x)));
        let circular = with_circular_padding(true, || random_conv(&vs, 8, 8, 3, 1, 1));
        let small = Tensor::randn([1, 8, 4, 4], (Kind::Float, Device::Cpu));
        assert!(circular
            .forward(&small)
            .equal(&circular.conv.forward(&small)));
    }
}
