//! ComfyUI's "bislerp" (`comfy/utils.py` bislerp), written from its definition: resize the
//! width, then the height; each output cell takes the two source cells that bilinear
//! interpolation would blend and slerps their channel vectors (direction along the great circle,
//! length linearly).
use host_api::tch::{Device, Kind, TchError, Tensor};

type Result<T> = std::result::Result<T, TchError>;

/// Resizes an `[N, C, H, W]` latent to `height` × `width`; computed in f32, returned in the
/// latent's dtype.
pub fn bislerp(latent: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    let x = latent.f_to_kind(Kind::Float)?;
    let x = resize_axis(&x, Axis::Width, width)?;
    let x = resize_axis(&x, Axis::Height, height)?;
    x.f_contiguous()?.f_to_kind(latent.kind())
}

#[derive(Clone, Copy)]
enum Axis {
    Height,
    Width,
}

/// Slerps one spatial axis of `x` to `len` cells.
fn resize_axis(x: &Tensor, axis: Axis, len: i64) -> Result<Tensor> {
    let (_, _, h, w) = x.size4()?;
    let (dim, old, ratio_shape) = match axis {
        Axis::Height => (2, h, [1, len, 1, 1]),
        Axis::Width => (3, w, [1, 1, len, 1]),
    };
    let (lo, hi, ratio) = bilinear_taps(old, len, x.device())?;
    // Channels last and contiguous, so each cell's channel vector is one row.
    let channels_last = |index: &Tensor| {
        x.f_index_select(dim, index)?
            .f_movedim_int(1, 3)?
            .f_contiguous()
    };
    let out = slerp(
        &channels_last(&lo)?,
        &channels_last(&hi)?,
        &ratio.f_reshape(ratio_shape)?,
    )?;
    out.f_movedim_int(3, 1)
}

/// For each of `new` output cells: the left and right source cells and the weight of the right
/// one, exactly as `F.interpolate(mode="bilinear")` places them (by interpolating index ramps,
/// as ComfyUI does, so rounding agrees too).
fn bilinear_taps(old: i64, new: i64, device: Device) -> Result<(Tensor, Tensor, Tensor)> {
    let along = |ramp: &Tensor| {
        ramp.f_reshape([1, 1, 1, old])?
            .f_upsample_bilinear2d([1, new], false, None, None)?
            .f_reshape([new])
    };
    let ramp = Tensor::f_arange(old, (Kind::Float, device))?;
    let position = along(&ramp)?;
    let ratio = position.f_sub(&position.f_floor()?)?;
    let right = along(&ramp.f_add_scalar(1)?.f_clamp_max(old - 1)?)?;
    Ok((
        position.f_to_kind(Kind::Int64)?,
        right.f_to_kind(Kind::Int64)?,
        ratio,
    ))
}

/// Slerp between rows `a` and `b` (`[..., C]`) by `t` (`[..., 1]`); near-parallel pairs keep
/// `a` and near-opposite pairs fall back to a lerp (ComfyUI's edge cases).
fn slerp(a: &Tensor, b: &Tensor, t: &Tensor) -> Result<Tensor> {
    let s = t.f_rsub_scalar(1.0)?;
    let (a_norm, a_unit) = norm_and_direction(a)?;
    let (b_norm, b_unit) = norm_and_direction(b)?;
    let dot = a_unit
        .f_mul(&b_unit)?
        .f_sum_dim_intlist([-1i64].as_slice(), true, None)?;
    let omega = dot.f_acos()?;
    let sin_omega = omega.f_sin()?;
    let a_weight = s.f_mul(&omega)?.f_sin()?.f_div(&sin_omega)?;
    let b_weight = t.f_mul(&omega)?.f_sin()?.f_div(&sin_omega)?;
    let direction = a_weight.f_mul(&a_unit)?.f_add(&b_weight.f_mul(&b_unit)?)?;
    let length = a_norm.f_mul(&s)?.f_add(&b_norm.f_mul(t)?)?;
    let slerped = direction.f_mul(&length)?;
    let lerped = a.f_mul(&s)?.f_add(&b.f_mul(t)?)?;
    let slerped = a.f_where_self(&dot.f_gt(1.0 - 1e-5)?, &slerped)?;
    lerped.f_where_self(&dot.f_lt(1e-5 - 1.0)?, &slerped)
}

/// Euclidean norm of each row and the row scaled to unit length (zero rows stay zero).
fn norm_and_direction(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let norm = x.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
    let unit = x.f_div(&norm)?.f_where_scalarother(&norm.f_ne(0.0)?, 0.0)?;
    Ok((norm, unit))
}
