//! A third-party upscaler: bicubic resize, then an unsharp mask in latent space, registered as
//! `example_sharp_bicubic`. Build: `cargo build --release`, copy the .so into a plugin folder,
//! then `upscaler = "example_sharp_bicubic"` in a profile's hires pass.
//!
//! An upscaler that works on pixels would call `ctx.vae_decode(&latent)`, resize the
//! `[B, 3, H, W]` image in [-1, 1], and return `ctx.vae_encode(&image)`.
use host_api::tch::Tensor;
use host_api::{Result, UpscaleCtx, Upscaler};

/// How much of the detail (the latent minus its blur) is added back.
const AMOUNT: f64 = 0.5;

pub struct SharpBicubic;

impl Upscaler for SharpBicubic {
    const NAME: &'static str = "example_sharp_bicubic";
    const ALIASES: &'static [&'static str] = &["Example Sharp Bicubic"];

    fn upscale(_: &mut UpscaleCtx<'_>, latent: Tensor, height: i64, width: i64) -> Result<Tensor> {
        let resized = latent.f_upsample_bicubic2d([height, width], false, None, None)?;
        let detail = resized.f_sub(&blur(&resized)?)?;
        Ok(resized.f_add(&detail.f_mul_scalar(AMOUNT)?)?)
    }
}

/// 3×3 binomial blur of each channel on its own, edges replicated.
fn blur(x: &Tensor) -> Result<Tensor> {
    let (_, channels, _, _) = x.size4()?;
    let kernel = Tensor::f_from_slice(&[1.0f32, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0])?
        .f_div_scalar(16.0)?
        .f_reshape([1, 1, 3, 3])?
        .f_repeat([channels, 1, 1, 1])?
        .f_to_device(x.device())?
        .f_to_kind(x.kind())?;
    let padded = x.f_replication_pad2d([1, 1, 1, 1])?;
    Ok(padded.f_conv2d(&kernel, None::<Tensor>, [1, 1], [0, 0], [1, 1], channels)?)
}

host_api::export_plugin! {
    upscalers: [SharpBicubic],
}
