//! Upscaling an existing image, as A1111's "Extras" tab (`postprocessing.py` with
//! `scripts/postprocessing_upscale.py` and `modules/upscaler.py`): upscaler 1, optionally
//! blended with upscaler 2, by a factor or to a size (cropped to fit). `hiresfix upscale` and
//! the server's `/sdapi/v1/extra-single-image` / `extra-batch-images` both run it.
//!
//! The upscalers are the pixel plugin's (`Lanczos`, `Nearest`, and `model` for ESRGAN-family
//! files): they resize a pass's latent through its VAE, so here they run with a VAE that is the
//! identity — the "latent" is the image itself, in [-1, 1].
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use host_api::tch::{Device, Kind, Tensor};
use host_api::{OptionEntry, UpscalerDecl, VaeCallbacks};

use crate::errors::one_line;
use crate::observer::Observer;
use crate::registry::{Entry, Registry};

pub use crate::png_pixels::Rgb8;

/// How the output size is chosen (A1111's `resize_mode`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Resize {
    /// 0: `upscaling_resize`, a factor.
    By(f64),
    /// 1: `upscaling_resize_w` × `_h`; `crop` (`upscaling_crop`) makes the output exactly
    /// that size (centred), otherwise it is the image scaled to cover it.
    To { width: u32, height: u32, crop: bool },
}

/// What to run: A1111's `upscaler_1`, `upscaler_2` and `extras_upscaler_2_visibility`.
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub upscaler_1: String,
    pub upscaler_2: String,
    pub visibility_2: f64,
    pub resize: Resize,
    /// Largest output side allowed (the server's `--max-side`).
    pub max_side: u32,
}

/// An upscaler name resolved: the plugin entry and what it runs with.
pub struct Upscaler<'r> {
    pub name: String,
    entry: &'r Entry<UpscalerDecl>,
    options: Vec<OptionEntry>,
}

/// Names that mean "no upscaler" (A1111's "None").
fn is_none(name: &str) -> bool {
    let n = name.trim();
    n.is_empty() || n.eq_ignore_ascii_case("none")
}

/// `name` as an upscaler that works on pixels: "Lanczos", "Nearest", a model file's stem or
/// A1111 name ("R-ESRGAN 4x+"); `None` for "None". Latent modes are refused (no latent here).
pub fn resolve<'r>(
    registry: &'r Registry,
    dirs: &[PathBuf],
    field: &str,
    name: &str,
) -> Result<Option<Upscaler<'r>>> {
    if is_none(name) {
        return Ok(None);
    }
    let shown = crate::errors::cut(name, 80);
    let (entry, model) = crate::plan::find_upscaler(registry, dirs, name)
        .map_err(|e| anyhow!("{field}: {}", one_line(&e)))?;
    if !entry.decl.name.starts_with("pixel-") && entry.decl.name.as_str() != "model" {
        bail!("{field}: `{shown}` upscales latents, not images — use Lanczos, Nearest or an upscaler model file");
    }
    let options = model.as_ref().map(|m| m.options()).unwrap_or_default();
    let name = match &model {
        Some(m) => m.label.clone(),
        None => crate::registry::display_name(&entry.decl),
    };
    Ok(Some(Upscaler {
        name,
        entry,
        options,
    }))
}

/// The output size of `image` under `resize` as A1111 computes it: the scale, and the size
/// each upscaler makes (`int(side × scale) // 8 × 8`).
pub fn target(image: (u32, u32), resize: Resize) -> (f64, u32, u32) {
    let (w, h) = (f64::from(image.0), f64::from(image.1));
    let scale = match resize {
        Resize::By(s) => s,
        Resize::To { width, height, .. } => (f64::from(width) / w).max(f64::from(height) / h),
    };
    let dest =
        |side: f64| (((side * scale) / 8.0).floor() * 8.0).clamp(0.0, u32::MAX as f64) as u32;
    (scale, dest(w), dest(h))
}

/// The size the output will have (for bounds checked before anything runs).
pub fn output_size(image: (u32, u32), resize: Resize) -> (u32, u32) {
    match resize {
        Resize::To {
            width,
            height,
            crop: true,
        } => (width, height),
        _ => {
            let (_, w, h) = target(image, resize);
            (w, h)
        }
    }
}

/// Checks `settings` against `image`'s size before anything runs: the factor, the target
/// and the output within `max_side`.
pub fn check(image: (u32, u32), settings: &Settings) -> Result<()> {
    if is_none(&settings.upscaler_1) {
        return Ok(()); // nothing runs: the image comes back as sent (A1111)
    }
    match settings.resize {
        Resize::By(s) if !(s.is_finite() && s > 0.0 && s <= 16.0) => {
            bail!("upscaling_resize: {s} is not a factor above 0 and at most 16 (e.g. 2)")
        }
        Resize::To { width, height, .. } if width == 0 || height == 0 => {
            bail!("upscaling_resize_w / _h: {width}x{height} — give both sides, e.g. 1024x1024")
        }
        _ => {}
    }
    if !(0.0..=1.0).contains(&settings.visibility_2) {
        bail!(
            "extras_upscaler_2_visibility: {} is not between 0 and 1",
            settings.visibility_2
        );
    }
    let (_, dw, dh) = target(image, settings.resize);
    let (ow, oh) = output_size(image, settings.resize);
    let max = settings.max_side;
    if dw.max(dh).max(ow).max(oh) > max {
        bail!(
            "the upscaled image would be {}x{} px, over the {max} px limit a side — use a smaller factor or size",
            dw.max(ow),
            dh.max(oh)
        );
    }
    if dw == 0 || dh == 0 {
        bail!(
            "a {}x{} image scaled by {:.3} is under 8 px a side — use a larger factor or size",
            image.0,
            image.1,
            target(image, settings.resize).0
        );
    }
    Ok(())
}

/// The result: the image and A1111's postprocessing info (`Postprocess upscaler: ...`).
pub struct Upscaled {
    pub image: Rgb8,
    pub info: Vec<(String, String)>,
}

/// The identity VAE: the pixel upscalers resize their "latent" directly.
struct Identity;

impl VaeCallbacks for Identity {
    fn decode(&mut self, latent: &Tensor) -> host_api::Result<Tensor> {
        Ok(latent.shallow_clone())
    }
    fn encode(&mut self, image: &Tensor) -> host_api::Result<Tensor> {
        Ok(image.shallow_clone())
    }
}

fn to_tensor(image: &Rgb8, device: Device) -> Tensor {
    let (w, h) = (i64::from(image.width), i64::from(image.height));
    Tensor::from_slice(&image.pixels)
        .view([h, w, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        .to_device(device)
        / 127.5
        - 1.0
}

/// [-1, 1] pixels back to RGB8, rounded as PIL rounds its resampled values.
fn to_rgb8(x: &Tensor) -> Result<Rgb8> {
    let (_, _, h, w) = x.size4()?;
    let finite = bool::try_from(x.isfinite().all()).unwrap_or(false);
    if !finite {
        bail!("the upscaler returned NaN or infinite pixels — try another upscaler");
    }
    let bytes = ((x.to_device(Device::Cpu).to_kind(Kind::Float) + 1.0) * 127.5)
        .round()
        .clamp(0.0, 255.0)
        .to_kind(Kind::Uint8)
        .squeeze_dim(0)
        .permute([1, 2, 0])
        .contiguous()
        .flatten(0, -1);
    Ok(Rgb8 {
        width: w as u32,
        height: h as u32,
        pixels: Vec::<u8>::try_from(bytes)?,
    })
}

/// Runs one upscaler's `run` to `height` × `width`.
fn run(upscaler: &Upscaler<'_>, image: &Rgb8, device: Device, w: u32, h: u32) -> Result<Rgb8> {
    let x = to_tensor(image, device);
    let out = host_api::tch::no_grad(|| {
        upscaler.entry.decl.run(
            &mut Identity,
            &upscaler.options,
            &x,
            i64::from(h),
            i64::from(w),
        )
    })
    .map_err(|e| anyhow!("upscaler {}: {e}", upscaler.name))?;
    to_rgb8(&out)
}

/// A1111's `Upscaler.upscale`: a model runs (up to three times) until the image covers the
/// target, then Lanczos to it; "Lanczos" / "Nearest" resize to `int(side × scale)`, then
/// Lanczos to the target when that differs (its multiple of 8).
fn upscale_one(
    registry: &Registry,
    upscaler: &Upscaler<'_>,
    image: &Rgb8,
    device: Device,
    resize: Resize,
) -> Result<Rgb8> {
    let (scale, dw, dh) = target((image.width, image.height), resize);
    if upscaler.entry.decl.name.as_str() == "model" {
        return run(upscaler, image, device, dw, dh);
    }
    let sw = (f64::from(image.width) * scale) as u32;
    let sh = (f64::from(image.height) * scale) as u32;
    let first = run(upscaler, image, device, sw.max(1), sh.max(1))?;
    if (first.width, first.height) == (dw, dh) {
        return Ok(first);
    }
    let lanczos = resolve(registry, &[], "upscaler", "Lanczos")?
        .ok_or_else(|| anyhow!("the Lanczos upscaler is missing (the pixel plugin)"))?;
    run(&lanczos, &first, device, dw, dh)
}

/// PIL's `Image.blend(a, b, alpha)`: `a + alpha × (b − a)`, truncated to 8 bits.
pub fn blend(a: &Rgb8, b: &Rgb8, alpha: f64) -> Rgb8 {
    let alpha = alpha as f32;
    let pixels = a
        .pixels
        .iter()
        .zip(&b.pixels)
        .map(|(&x, &y)| {
            (f32::from(x) + alpha * (f32::from(y) - f32::from(x))).clamp(0.0, 255.0) as u8
        })
        .collect();
    Rgb8 {
        pixels,
        ..a.clone()
    }
}

/// A1111's crop to fit: `image` pasted centred on a black `width` × `height` canvas at
/// `(width / 2 − w / 2, height / 2 − h / 2)` (integer halves), clipped to the canvas.
pub fn paste_centred(image: &Rgb8, width: u32, height: u32) -> Rgb8 {
    let (cw, ch) = (i64::from(width), i64::from(height));
    let (iw, ih) = (i64::from(image.width), i64::from(image.height));
    let (ox, oy) = (cw / 2 - iw / 2, ch / 2 - ih / 2);
    let mut pixels = vec![0u8; (cw * ch * 3) as usize];
    for y in 0..ch {
        let sy = y - oy;
        if !(0..ih).contains(&sy) {
            continue;
        }
        let x0 = ox.max(0);
        let x1 = (ox + iw).min(cw);
        if x1 <= x0 {
            continue;
        }
        let src = ((sy * iw + (x0 - ox)) * 3) as usize;
        let dst = ((y * cw + x0) * 3) as usize;
        let n = ((x1 - x0) * 3) as usize;
        pixels[dst..dst + n].copy_from_slice(&image.pixels[src..src + n]);
    }
    Rgb8 {
        width,
        height,
        pixels,
    }
}

/// Upscales `image` as `settings` say, on `device`; `observer` hears one step per upscaler
/// run and may stop between them. Upscaler 1 "None" returns the image unchanged (as A1111).
pub fn upscale(
    registry: &Registry,
    dirs: &[PathBuf],
    device: Device,
    image: &Rgb8,
    settings: &Settings,
    observer: &dyn Observer,
) -> Result<Upscaled> {
    check((image.width, image.height), settings)?;
    let first = resolve(registry, dirs, "upscaler_1", &settings.upscaler_1)?;
    let second = resolve(registry, dirs, "upscaler_2", &settings.upscaler_2)?;
    let mut info = Vec::new();
    let Some(first) = first else {
        return Ok(Upscaled {
            image: image.clone(),
            info,
        });
    };
    let second = second.filter(|_| settings.visibility_2 > 0.0);
    match settings.resize {
        Resize::By(s) => info.push(("Postprocess upscale by".into(), format!("{s:?}"))),
        Resize::To { width, height, .. } => {
            info.push(("Postprocess upscale to".into(), format!("{width}x{height}")))
        }
    }
    let stages = 1 + usize::from(second.is_some());
    observer.pass_started(1, stages, "upscale");
    let crop = |img: Rgb8, info: &mut Vec<(String, String)>| match settings.resize {
        Resize::To {
            width,
            height,
            crop: true,
        } => {
            let out = paste_centred(&img, width, height);
            let key = "Postprocess crop to".to_owned();
            if !info.iter().any(|(k, _)| *k == key) {
                info.push((key, format!("{width}x{height}")));
            }
            out
        }
        _ => img,
    };
    let result = (|| {
        let up = upscale_one(registry, &first, image, device, settings.resize)?;
        let mut out = crop(up, &mut info);
        info.push(("Postprocess upscaler".into(), first.name.clone()));
        if !observer.step(0) {
            bail!("stopped");
        }
        if let Some(second) = &second {
            let up = upscale_one(registry, second, image, device, settings.resize)?;
            let other = crop(up, &mut info);
            out = blend(&out, &other, settings.visibility_2);
            info.push(("Postprocess upscaler 2".into(), second.name.clone()));
            if !observer.step(1) {
                bail!("stopped");
            }
        }
        Ok(out)
    })();
    observer.pass_ended();
    Ok(Upscaled {
        image: result?,
        info,
    })
}

/// A1111's postprocessing infotext: `key: value` pairs joined by ", " (values quoted as its
/// `infotext_utils.quote` does when they hold a comma, colon or quote).
pub fn infotext(info: &[(String, String)]) -> String {
    info.iter()
        .map(|(k, v)| match k == v {
            true => k.clone(),
            false => format!("{k}: {}", crate::infotext::quote(v)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A1111's `plaintext_to_html`: each line HTML-escaped, joined by `<br>`, in a `<p>`.
pub fn html(text: &str) -> String {
    let escape = |line: &str| {
        line.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
            .replace('\'', "&#x27;")
    };
    let lines: Vec<String> = text.split('\n').map(escape).collect();
    format!("<p>{}</p>", lines.join("<br>\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(w: u32, h: u32) -> Rgb8 {
        Rgb8 {
            width: w,
            height: h,
            pixels: (0..w * h * 3).map(|i| (i % 251) as u8).collect(),
        }
    }

    #[test]
    fn targets_are_a1111s_multiples_of_8() {
        assert_eq!(target((64, 48), Resize::By(2.0)), (2.0, 128, 96));
        // int(100 × 1.5) // 8 × 8 = 144, int(60 × 1.5) = 90 → 88.
        assert_eq!(target((100, 60), Resize::By(1.5)), (1.5, 144, 88));
        let to = Resize::To {
            width: 128,
            height: 128,
            crop: true,
        };
        // Scale to cover: max(128/64, 128/32) = 4.
        assert_eq!(target((64, 32), to), (4.0, 256, 128));
        assert_eq!(output_size((64, 32), to), (128, 128));
    }

    #[test]
    fn crop_to_fit_centres_as_pil_paste() {
        let img = image(4, 2);
        let out = paste_centred(&img, 2, 2);
        // Offset (1 - 2, 1 - 1) = (-1, 0): columns 1 and 2 of the image.
        assert_eq!(&out.pixels[0..6], &img.pixels[3..9]);
        assert_eq!(&out.pixels[6..12], &img.pixels[15..21]);
        let out = paste_centred(&img, 6, 4);
        // Offset (3 - 2, 2 - 1) = (1, 1): row 0 black, row 1 from x = 1.
        assert!(out.pixels[..18].iter().all(|&p| p == 0));
        assert_eq!(&out.pixels[(6 + 1) * 3..(6 + 5) * 3], &img.pixels[..12]);
    }

    #[test]
    fn blend_truncates_as_pil() {
        let a = Rgb8 {
            width: 1,
            height: 1,
            pixels: vec![10, 200, 0],
        };
        let b = Rgb8 {
            pixels: vec![11, 100, 255],
            ..a.clone()
        };
        // 10 + 0.5 = 10.5 → 10; 200 - 50 = 150; 0 + 127.5 → 127.
        assert_eq!(blend(&a, &b, 0.5).pixels, vec![10, 150, 127]);
    }

    #[test]
    fn settings_out_of_bounds_are_refused_before_running() {
        let s = |resize| Settings {
            upscaler_1: "Lanczos".into(),
            upscaler_2: "None".into(),
            visibility_2: 0.0,
            resize,
            max_side: 4096,
        };
        let e = check((512, 512), &s(Resize::By(16.0)))
            .unwrap_err()
            .to_string();
        assert!(e.contains("8192x8192 px, over the 4096 px limit"), "{e}");
        let e = check((512, 512), &s(Resize::By(f64::NAN)))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("upscaling_resize: NaN"), "{e}");
        let e = check((4, 4), &s(Resize::By(1.5))).unwrap_err().to_string();
        assert!(e.contains("under 8 px"), "{e}");
        assert!(check((64, 64), &s(Resize::By(2.0))).is_ok());
    }

    #[test]
    fn infotext_and_html_as_a1111() {
        let info = vec![
            ("Postprocess upscale by".to_owned(), "2.0".to_owned()),
            ("Postprocess upscaler".to_owned(), "R-ESRGAN 4x+".to_owned()),
        ];
        let text = infotext(&info);
        assert_eq!(
            text,
            "Postprocess upscale by: 2.0, Postprocess upscaler: R-ESRGAN 4x+"
        );
        assert_eq!(html("a<b\nc"), "<p>a&lt;b<br>\nc</p>");
    }
}
