//! Latent upscalers: `torch.nn.functional.interpolate` with the mode and antialias arguments
//! A1111 uses for each "Latent (...)" entry (`modules/shared.py` latent_upscale_modes; always
//! `size=`, never `scale_factor=`, and align_corners False), plus ComfyUI's "area" and
//! "bislerp" (`comfy/utils.py` common_upscale).
use host_api::tch::{TchError, Tensor};
use host_api::{Result, UpscaleCtx, Upscaler};

mod bislerp;

/// A resize to `[height, width]` as one fallible tch call.
type Resize = fn(&Tensor, [i64; 2]) -> std::result::Result<Tensor, TchError>;

/// One upscaler per interpolate mode: `$resize` is the ATen call `F.interpolate` makes for it.
macro_rules! interpolate_mode {
    ($(#[$doc:meta])* $ty:ident, $name:literal, [$($alias:literal),*], $resize:expr) => {
        $(#[$doc])*
        pub struct $ty;

        impl Upscaler for $ty {
            const NAME: &'static str = $name;
            const ALIASES: &'static [&'static str] = &[$($alias),*];

            fn upscale(
                _: &mut UpscaleCtx<'_>,
                latent: Tensor,
                height: i64,
                width: i64,
            ) -> Result<Tensor> {
                let resize: Resize = $resize;
                Ok(resize(&latent, [height, width])?)
            }
        }
    };
}

interpolate_mode!(
    /// A1111 "Latent": bilinear, no antialias.
    Bilinear, "latent", ["Latent", "latent-bilinear"],
    |x, size| x.f_upsample_bilinear2d(size, false, None, None)
);
interpolate_mode!(
    /// A1111 "Latent (antialiased)": bilinear with antialias (a triangle filter widened when
    /// shrinking).
    BilinearAntialiased, "latent-antialiased", ["Latent (antialiased)"],
    |x, size| x.f_internal_upsample_bilinear2d_aa(size, false, None, None)
);
interpolate_mode!(
    /// A1111 "Latent (bicubic)": bicubic (a = -0.75), no antialias.
    Bicubic, "latent-bicubic", ["Latent (bicubic)"],
    |x, size| x.f_upsample_bicubic2d(size, false, None, None)
);
interpolate_mode!(
    /// A1111 "Latent (bicubic antialiased)": torch's antialiased bicubic (PIL's a = -0.5 kernel).
    BicubicAntialiased, "latent-bicubic-antialiased", ["Latent (bicubic antialiased)"],
    |x, size| x.f_internal_upsample_bicubic2d_aa(size, false, None, None)
);
interpolate_mode!(
    /// A1111 "Latent (nearest)": torch's legacy nearest, `floor(i * in / out)`.
    Nearest, "latent-nearest", ["Latent (nearest)"],
    |x, size| x.f_upsample_nearest2d(size, None, None)
);
interpolate_mode!(
    /// A1111 "Latent (nearest-exact)": pixel-centre nearest, `floor((i + 0.5) * in / out)`.
    NearestExact, "latent-nearest-exact", ["Latent (nearest-exact)"],
    |x, size| x.f_internal_upsample_nearest_exact2d(size, None, None)
);
interpolate_mode!(
    /// ComfyUI "area": interpolate mode "area", which is adaptive average pooling.
    Area, "latent-area", ["Latent (area)"],
    |x, size| x.f_adaptive_avg_pool2d(size)
);

/// ComfyUI "bislerp": bilinear positions, spherical interpolation of each cell's channel vector.
pub struct Bislerp;

impl Upscaler for Bislerp {
    const NAME: &'static str = "latent-bislerp";
    const ALIASES: &'static [&'static str] = &["Latent (bislerp)"];

    fn upscale(_: &mut UpscaleCtx<'_>, latent: Tensor, height: i64, width: i64) -> Result<Tensor> {
        Ok(bislerp::bislerp(&latent, height, width)?)
    }
}

host_api::export_plugin! {
    upscalers: [
        Bilinear,
        BilinearAntialiased,
        Bicubic,
        BicubicAntialiased,
        Nearest,
        NearestExact,
        Area,
        Bislerp,
    ],
}
