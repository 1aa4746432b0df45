//! Pixel-space upscalers: decode the latent with the pass's VAE, resize the image, encode it
//! again (A1111 `processing.py` sample_hr_pass). A1111's "Lanczos" and "Nearest" resize as PIL
//! would; `model` runs an ESRGAN-family super-resolution model from the profile's
//! `upscaler_dirs` (A1111's "R-ESRGAN 4x+", "4x-UltraSharp", ...), then Lanczos to the size.
use std::path::Path;

use host_api::tch::{Device, Kind, Tensor};
use host_api::{Error, Options, Result, UpscaleCtx, Upscaler};

pub mod lanczos;
pub mod models;
mod nearest;

/// One upscaler per PIL resample filter, run through the pass's VAE.
macro_rules! pixel_mode {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $alias:literal, $resize:path) => {
        $(#[$doc])*
        pub struct $ty;

        impl Upscaler for $ty {
            const NAME: &'static str = $name;
            const ALIASES: &'static [&'static str] = &[$alias];
            const WORKS_IN_PIXELS: bool = true;

            fn upscale(
                ctx: &mut UpscaleCtx<'_>,
                latent: Tensor,
                height: i64,
                width: i64,
            ) -> Result<Tensor> {
                through_pixels(ctx, &latent, height, width, &|x, h, w, _| $resize(x, h, w))
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

/// Resizes `[B, C, H, W]` float pixels to height × width; the last argument is the dtype the
/// run decoded in (a model may run in it).
type Resize<'a> = &'a dyn Fn(&Tensor, i64, i64, Kind) -> Result<Tensor>;

/// A super-resolution model file (option `model`, set by the host from `upscaler_dirs`): run
/// until the image is at least the target size (at most 3 times, as A1111), then Lanczos to
/// the exact size.
pub struct Model;

impl Upscaler for Model {
    const NAME: &'static str = "model";
    const WORKS_IN_PIXELS: bool = true;

    fn upscale(
        ctx: &mut UpscaleCtx<'_>,
        latent: Tensor,
        height: i64,
        width: i64,
    ) -> Result<Tensor> {
        let options = ctx.options();
        let path = options.text("model", "")?.to_owned();
        if path.is_empty() {
            return Err(Error::new(
                "the `model` upscaler runs a model file: name the file's stem as the upscaler, with its folder in upscaler_dirs",
            ));
        }
        let tile = tile_override(&options)?;
        let resize = |pixels: &Tensor, ph: i64, pw: i64, kind: Kind| {
            // On a GPU the model runs in the run's dtype (fp16 / bf16 as A1111 does); on the
            // CPU in fp32.
            let kind = match pixels.device() {
                Device::Cpu => Kind::Float,
                _ => kind,
            };
            super_resolve(Path::new(&path), pixels, ph, pw, tile, kind)
        };
        through_pixels(ctx, &latent, height, width, &resize)
    }

    fn describe(options: Options<'_>) -> Result<String> {
        let path = options.text("model", "")?;
        Ok(models::load(Path::new(path))?.describe())
    }
}

/// Options `tile` / `overlap` (input pixels) fix the tiling instead of choosing it.
fn tile_override(options: &Options<'_>) -> Result<Option<(i64, i64)>> {
    let tile = options.number("tile", 0.0)?;
    let overlap = options.number("overlap", 32.0)?;
    if tile == 0.0 {
        return Ok(None);
    }
    if !(16.0..=8192.0).contains(&tile) || !(0.0..tile).contains(&overlap) {
        return Err(Error::new(format!(
            "upscaler option tile = {tile:.0} / overlap = {overlap:.0}: use a tile of 16 to 8192 pixels and an overlap below the tile (tile 0: chosen by memory)"
        )));
    }
    Ok(Some((tile as i64, overlap as i64)))
}

/// Free bytes for choosing tiles: MemAvailable on the CPU; on CUDA 8 GiB is assumed (an
/// out-of-memory error halves the tile).
fn free_memory(device: Device) -> u64 {
    if device != Device::Cpu {
        return 8 << 30;
    }
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

/// `pixels` in [-1, 1] through the model at `path` until at least `ph` × `pw`, then Lanczos.
pub fn super_resolve(
    path: &Path,
    pixels: &Tensor,
    ph: i64,
    pw: i64,
    tile: Option<(i64, i64)>,
    kind: Kind,
) -> Result<Tensor> {
    let net = models::cached(path, pixels.device(), kind)?;
    run_model(&net, pixels, ph, pw, tile, kind)
        .map_err(|e| Error::new(format!("{}: running the model: {e}", path.display())))
}

/// [`super_resolve`] with the model loaded.
fn run_model(
    net: &models::Network,
    pixels: &Tensor,
    ph: i64,
    pw: i64,
    tile: Option<(i64, i64)>,
    kind: Kind,
) -> Result<Tensor> {
    let mut images = Vec::new();
    for i in 0..pixels.size()[0] {
        let mut img = ((pixels.f_narrow(0, i, 1)? + 1.0) / 2.0)
            .f_clamp(0.0, 1.0)?
            .f_to_kind(kind)?;
        for _ in 0..3 {
            let (_, _, h, w) = img.size4()?;
            if h >= ph && w >= pw {
                break;
            }
            let tiling = match tile {
                Some((tile, overlap)) => models::tiles::Tiling {
                    tile,
                    overlap,
                    batch: 4,
                },
                None => models::tiles::choose(h, w, net.scale(), free_memory(img.device())),
            };
            img = tch_no_grad(|| models::tiles::run_with_retry(net, &img, tiling))?
                .f_clamp(0.0, 1.0)?;
            if net.scale() == 1 {
                break;
            }
        }
        let img = img.f_to_kind(Kind::Float)?;
        images.push(lanczos::resize(&(img * 2.0 - 1.0), ph, pw)?);
    }
    Ok(Tensor::f_cat(&images, 0)?)
}

fn tch_no_grad<T>(f: impl FnOnce() -> T) -> T {
    host_api::tch::no_grad(f)
}

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
    let resized = resize(&pixels, ph, pw, image.kind())?;
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
    upscalers: [Lanczos, Nearest, Model],
}
