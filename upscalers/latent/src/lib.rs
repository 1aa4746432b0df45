//! Latent upscalers: `torch.nn.functional.interpolate` with the mode and antialias arguments
//! A1111 uses for each "Latent (...)" entry (`modules/shared_items.py` latent_upscale_modes).
use host_api::tch::Tensor;
use host_api::{Result, UpscaleCtx, Upscaler};

/// A1111 "Latent": bilinear, align_corners=False, no antialias.
pub struct Bilinear;

impl Upscaler for Bilinear {
    const NAME: &'static str = "latent";
    const ALIASES: &'static [&'static str] = &["Latent", "latent-bilinear"];

    fn upscale(_: &mut UpscaleCtx<'_>, latent: Tensor, height: i64, width: i64) -> Result<Tensor> {
        Ok(latent.f_upsample_bilinear2d([height, width], false, None, None)?)
    }
}

/// A1111 "Latent (bicubic)": bicubic, align_corners=False, no antialias.
pub struct Bicubic;

impl Upscaler for Bicubic {
    const NAME: &'static str = "latent-bicubic";
    const ALIASES: &'static [&'static str] = &["Latent (bicubic)"];

    fn upscale(_: &mut UpscaleCtx<'_>, latent: Tensor, height: i64, width: i64) -> Result<Tensor> {
        Ok(latent.f_upsample_bicubic2d([height, width], false, None, None)?)
    }
}

/// A1111 "Latent (nearest-exact)": torch's pixel-centre nearest neighbour.
pub struct NearestExact;

impl Upscaler for NearestExact {
    const NAME: &'static str = "latent-nearest-exact";
    const ALIASES: &'static [&'static str] = &["Latent (nearest-exact)"];

    fn upscale(_: &mut UpscaleCtx<'_>, latent: Tensor, height: i64, width: i64) -> Result<Tensor> {
        Ok(latent.f_internal_upsample_nearest_exact2d([height, width], None, None)?)
    }
}

host_api::export_plugin! {
    upscalers: [Bilinear, Bicubic, NearestExact],
}
