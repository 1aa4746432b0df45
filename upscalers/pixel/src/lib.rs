//! Pixel-space upscalers, A1111's "Lanczos" and "Nearest": decode the latent with the pass's
//! VAE, resize the image as PIL would, encode it again (A1111 `processing.py` sample_hr_pass).
use host_api::tch::{Kind, Tensor};
use host_api::{Result, UpscaleCtx, Upscaler};

mod lanczos;
mod nearest;

/// One upscaler per PIL resample filter, run through the pass's VAE.
macro_rules! pixel_mode {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $alias:literal, $resize:path) => {
        $(#[$doc])*
        pub struct $ty;

        impl Upscaler for $ty {
            const NAME: &'static str = $name;
            const ALIASES: &'static [&'static str] = &[$alias];

            fn upscale(
                ctx: &mut UpscaleCtx<'_>,
                latent: Tensor,
                height: i64,
                width: i64,
            ) -> Result<Tensor> {
                through_pixels(ctx, &latent, height, width, $resize)
            }
        }
    };
}

pixel_mode!(
    /// A1111 "Lanczos": PIL's Lanczos (a = 3) resize of the decoded image.
    Lanczos, "pixel-lanczos", "Lanczos", lanczos::resize
);
pixel_mode!(
    /// A1111 "Nearest": PIL's nearest-neighbour resize of the decoded image.
    Nearest, "pixel-nearest", "Nearest", nearest::resize
);

/// Resizes `[B, C, H, W]` pixels to height × width.
type Resize = fn(&Tensor, i64, i64) -> Result<Tensor>;

/// Decode, `resize` to the target latent size times the VAE's scale factor, encode.
fn through_pixels(
    ctx: &mut UpscaleCtx<'_>,
    latent: &Tensor,
    height: i64,
    width: i64,
    resize: Resize,
) -> Result<Tensor> {
    let (_, _, h, w) = latent.size4()?;
    if height < 1 || width < 1 || h < 1 || w < 1 {
        return Err(format!("cannot upscale a {h}x{w} latent to {height}x{width}").into());
    }
    let image = ctx.vae_decode(latent)?;
    let factor = scale_factor(&image, h, w)?;
    // A1111 resizes 8-bit images, so values outside [-1, 1] are clipped on both sides.
    let pixels = image.f_to_kind(Kind::Float)?.f_clamp(-1.0, 1.0)?;
    let (ph, pw) = match (height.checked_mul(factor), width.checked_mul(factor)) {
        (Some(ph), Some(pw)) => (ph, pw),
        _ => return Err(format!("{height}x{width} latent cells is too large").into()),
    };
    let resized = resize(&pixels, ph, pw)?;
    let resized = resized.f_clamp(-1.0, 1.0)?.f_to_kind(image.kind())?;
    let upscaled = ctx.vae_encode(&resized)?;
    match upscaled.size().as_slice() {
        [_, _, uh, uw] if (*uh, *uw) == (height, width) => Ok(upscaled),
        size => {
            Err(format!("VAE encode returned {size:?}, expected a {height}x{width} latent").into())
        }
    }
}

/// Pixels per latent cell: the decoded image must be a whole multiple of the latent.
fn scale_factor(image: &Tensor, h: i64, w: i64) -> Result<i64> {
    let (_, _, ph, pw) = image.size4()?;
    let factor = ph / h;
    if factor < 1 || ph != h * factor || pw != w * factor {
        return Err(format!(
            "VAE decoded a {h}x{w} latent to {ph}x{pw} pixels, not a whole-number scale"
        )
        .into());
    }
    Ok(factor)
}

host_api::export_plugin! {
    upscalers: [Lanczos, Nearest],
}
