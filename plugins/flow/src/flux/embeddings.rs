//! What the transformer sees besides weights: sinusoidal timestep features, the 2×2 packing of
//! the latent into tokens, the position ids of image and text tokens, and the rotary embedding
//! built from those ids (diffusers `FluxPosEmbed`, `get_1d_rotary_pos_embed`,
//! `apply_rotary_emb`; BFL `EmbedND`, `rope`, `apply_rope`).
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// Sinusoidal features `[cos(t·f), sin(t·f)]` with `f_i = 10000^(−i/half)` → `[B, dim]`
/// (diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`, BFL
/// `timestep_embedding`). `t` in the model's units (σ·1000), fp32 as diffusers computes them.
pub fn timestep_features(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, t.device())) * -(10000f64.ln()) / half as f64;
    let args = t.to_kind(Kind::Float).unsqueeze(1) * exponent.exp().unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], -1)
}

/// `[B, C, H, W]` → `[B, H/2·W/2, 4C]` (FluxPipeline `_pack_latents`; H and W even).
pub fn pack(latent: &Tensor) -> Result<Tensor> {
    let s = latent.size();
    let [b, c, h, w] = s[..] else {
        bail!("Flux: the latent must be [batch, channels, height, width], not {s:?}");
    };
    if h % 2 != 0 || w % 2 != 0 {
        bail!("Flux: a {h}×{w} latent does not pack into 2×2 patches: sides must be even (images multiples of 16 px)");
    }
    Ok(latent
        .reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4]))
}

/// `[B, H/2·W/2, 4C]` → `[B, C, H, W]`, the inverse of [`pack`] (FluxPipeline `_unpack_latents`).
pub fn unpack(tokens: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    let s = tokens.size();
    match s[..] {
        [b, l, n]
            if l == (height / 2) * (width / 2)
                && n % 4 == 0
                && height % 2 == 0
                && width % 2 == 0 =>
        {
            Ok(tokens
                .reshape([b, height / 2, width / 2, n / 4, 2, 2])
                .permute([0, 3, 1, 4, 2, 5])
                .reshape([b, n / 4, height, width]))
        }
        _ => {
            bail!("Flux: tokens {s:?} are not the packed 2×2 patches of a {height}×{width} latent")
        }
    }
}

/// Ids `(0, row, column)` of the packed tokens of an `height × width` latent, row-major →
/// `[H/2·W/2, 3]` (FluxPipeline `_prepare_latent_image_ids` of the packed grid).
pub fn image_ids(height: i64, width: i64, device: Device) -> Tensor {
    let (h, w) = (height / 2, width / 2);
    let opts = (Kind::Float, device);
    let rows = Tensor::arange(h, opts).unsqueeze(1).expand([h, w], false);
    let cols = Tensor::arange(w, opts).unsqueeze(0).expand([h, w], false);
    Tensor::stack(&[Tensor::zeros([h, w], opts), rows, cols], -1).reshape([h * w, 3])
}

/// Ids of `tokens` text tokens: all zeros → `[tokens, 3]` (FluxPipeline's `text_ids`).
pub fn text_ids(tokens: i64, device: Device) -> Tensor {
    Tensor::zeros([tokens, 3], (Kind::Float, device))
}

/// The rotary embedding of `ids` `[S, axes]`: `(cos, sin)`, each `[S, Σ axes_dim]`, every
/// frequency repeated for its pair of channels. Angles in float64 as diffusers computes them
/// (`theta^(−2i/d)` per axis, `theta` 10000), then fp32.
pub fn rope(ids: &Tensor, axes_dim: &[i64], theta: f64) -> (Tensor, Tensor) {
    let pos = ids.to_kind(Kind::Float).to_kind(Kind::Double);
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for (i, &d) in axes_dim.iter().enumerate() {
        let steps = Tensor::arange_start_step(0, d, 2, (Kind::Double, ids.device())) / d as f64;
        let freqs = Tensor::from(theta).pow(&steps).reciprocal();
        let angles = pos.select(1, i as i64).outer(&freqs);
        cos.push(
            angles
                .cos()
                .repeat_interleave_self_int(2, 1, None)
                .to_kind(Kind::Float),
        );
        sin.push(
            angles
                .sin()
                .repeat_interleave_self_int(2, 1, None)
                .to_kind(Kind::Float),
        );
    }
    (Tensor::cat(&cos, -1), Tensor::cat(&sin, -1))
}

/// Rotates `x` `[B, H, S, d]` by `(cos, sin)` `[S, d]`: each pair `(a, b)` of channels becomes
/// `(a·cos − b·sin, b·cos + a·sin)`.
pub fn apply_rope(x: &Tensor, rope: &(Tensor, Tensor)) -> Tensor {
    let s = x.size();
    let pairs = x.reshape([s[0], s[1], s[2], s[3] / 2, 2]);
    let (a, b) = (pairs.select(-1, 0), pairs.select(-1, 1));
    let rotated = Tensor::stack(&[-b, a], -1).reshape(s.as_slice());
    x * &rope.0 + rotated * &rope.1
}
