//! The init image and mask files: decoded (PNG of any colour type, JPEG, WebP; the size
//! checked before the pixels are), and A1111's `images.resize_image` resize modes.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};

use super::resample::{resize, resize_box, Filter, Image8};
use crate::profile::ResizeMode;

/// What a file's first bytes say it is.
fn kind(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("png")
    } else if head.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("jpeg")
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        Some("webp")
    } else {
        None
    }
}

/// A decoded image: RGB8 and, where the file has one, its alpha channel.
pub struct Decoded {
    pub rgb: Image8,
    pub alpha: Option<Vec<u8>>,
}

/// Decodes `path` (`what` names it in errors: "init_image", "mask"), whatever its colour type.
pub fn read(path: &Path, what: &str) -> Result<Decoded> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| {
        anyhow!("{what} {shown}: cannot read it ({e}) — give the path of a PNG, JPEG or WebP file")
    })?;
    decode(&bytes, what, &shown.to_string())
}

/// Decodes an image file's bytes (PNG of any colour type, JPEG, WebP); `what` and `shown`
/// name it in errors.
pub fn decode(bytes: &[u8], what: &str, shown: &str) -> Result<Decoded> {
    match kind(bytes) {
        Some("png") => read_png(bytes, what, shown),
        Some(_) => read_other(bytes, what, shown),
        None => bail!("{what} {shown} is not a PNG, JPEG or WebP image"),
    }
}

fn read_png(bytes: &[u8], what: &str, shown: &str) -> Result<Decoded> {
    // Pixels as PIL's convert("RGB") (bounded before decoding) ...
    let (w, h, rgb) =
        crate::png_pixels::rgb8_from_bytes(bytes, shown).map_err(|e| anyhow!("{what} {e}"))?;
    // ... and alpha, for a mask drawn as transparency (A1111's `create_binary_mask`).
    let mut decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    decoder.set_ignore_text_chunk(true);
    let alpha = (|| {
        let mut reader = decoder.read_info().ok()?;
        let mut buf = vec![0; reader.output_buffer_size()];
        let frame = reader.next_frame(&mut buf).ok()?;
        let step = match frame.color_type {
            png::ColorType::Rgba => 4,
            png::ColorType::GrayscaleAlpha => 2,
            _ => return None,
        };
        Some(
            buf[..frame.buffer_size()]
                .chunks_exact(step)
                .map(|p| p[step - 1])
                .collect(),
        )
    })();
    Ok(Decoded {
        rgb: rgb_image(w, h, rgb),
        alpha,
    })
}

fn rgb_image(w: u32, h: u32, data: Vec<u8>) -> Image8 {
    Image8 {
        width: w as usize,
        height: h as usize,
        channels: 3,
        data,
    }
}

fn read_other(bytes: &[u8], what: &str, shown: &str) -> Result<Decoded> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .context("reading the image header")?;
    let max = crate::defaults::MAX_SIZE;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(max);
    limits.max_image_height = Some(max);
    limits.max_alloc = Some(crate::png_pixels::MAX_PIXELS * 8);
    reader.limits(limits);
    let image = reader.decode().map_err(|e| {
        let e = crate::errors::bounded_line(&e.to_string());
        anyhow!("{what} {shown} is not a readable image ({e}); over {max} px a side is refused")
    })?;
    let alpha = image
        .color()
        .has_alpha()
        .then(|| image.to_rgba8().pixels().map(|p| p.0[3]).collect());
    let rgb = image.to_rgb8();
    Ok(Decoded {
        rgb: rgb_image(rgb.width(), rgb.height(), rgb.into_raw()),
        alpha,
    })
}

/// Whether a mask of size `a` fits an image of size `b` once resized: the same aspect
/// ratio within 1 %.
pub fn same_shape(a: (usize, usize), b: (usize, usize)) -> bool {
    let (x, y) = (a.0 * b.1, b.0 * a.1);
    x.abs_diff(y) * 100 <= x.max(y)
}

/// A1111 `images.resize_image(mode, im, width, height)` with no upscaler (Lanczos; A1111 uses
/// its img2img upscaler, "None" by default, only when enlarging an RGB image). "latent
/// upscale" resizes as "just resize" here; the caller resizes in latent space instead.
pub fn resize_mode(im: &Image8, mode: ResizeMode, width: usize, height: usize) -> Image8 {
    let lanczos = |im: &Image8, w, h| resize(im, w, h, Filter::Lanczos);
    let (iw, ih) = (im.width, im.height);
    let ratio = width as f64 / height as f64;
    let src_ratio = iw as f64 / ih as f64;
    match mode {
        ResizeMode::JustResize | ResizeMode::LatentUpscale => lanczos(im, width, height),
        ResizeMode::CropAndResize => {
            let src_w = if ratio > src_ratio {
                width
            } else {
                iw * height / ih
            };
            let src_h = if ratio <= src_ratio {
                height
            } else {
                ih * width / iw
            };
            centred(&lanczos(im, src_w, src_h), width, height)
        }
        ResizeMode::ResizeAndFill => {
            let src_w = if ratio < src_ratio {
                width
            } else {
                iw * height / ih
            };
            let src_h = if ratio >= src_ratio {
                height
            } else {
                ih * width / iw
            };
            let resized = lanczos(im, src_w, src_h);
            let mut res = centred(&resized, width, height);
            let (rw, rh) = (resized.width as f64, resized.height as f64);
            let bicubic = |w, h, b| resize_box(&resized, w, h, Filter::Bicubic, b);
            if ratio < src_ratio {
                let fill = (height / 2).saturating_sub(src_h / 2);
                if fill > 0 {
                    let w = width as f64;
                    res.paste(&bicubic(width, fill, [0.0, 0.0, w, 0.0]), 0, 0);
                    let bottom = bicubic(width, fill, [0.0, rh, w, rh]);
                    res.paste(&bottom, 0, (fill + src_h) as i64);
                }
            } else if ratio > src_ratio {
                let fill = (width / 2).saturating_sub(src_w / 2);
                if fill > 0 {
                    let h = height as f64;
                    res.paste(&bicubic(fill, height, [0.0, 0.0, 0.0, h]), 0, 0);
                    let right = bicubic(fill, height, [rw, 0.0, rw, h]);
                    res.paste(&right, (fill + src_w) as i64, 0);
                }
            }
            res
        }
    }
}

/// `resized` pasted centred on a black `width × height` canvas (cropped where larger), as
/// `resize_image`'s modes 1 and 2 do.
fn centred(resized: &Image8, width: usize, height: usize) -> Image8 {
    let mut res = Image8::new(width, height, resized.channels);
    let x = (width / 2) as i64 - (resized.width / 2) as i64;
    let y = (height / 2) as i64 - (resized.height / 2) as i64;
    res.paste(resized, x, y);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(w: usize, h: usize) -> Image8 {
        let mut im = Image8::new(w, h, 3);
        for (i, v) in im.data.iter_mut().enumerate() {
            *v = (i * 7 % 251) as u8;
        }
        im
    }

    #[test]
    fn every_mode_gives_the_asked_size() {
        let im = ramp(40, 20);
        for mode in [
            ResizeMode::JustResize,
            ResizeMode::CropAndResize,
            ResizeMode::ResizeAndFill,
            ResizeMode::LatentUpscale,
        ] {
            let out = resize_mode(&im, mode, 32, 32);
            assert_eq!(
                (out.width, out.height, out.data.len()),
                (32, 32, 32 * 32 * 3)
            );
        }
    }

    #[test]
    fn resize_and_fill_fills_the_bands_and_crop_covers() {
        // 40x20 into 32x32: fill puts the 32x16 image in the middle and fills 8 rows above
        // from its top edge; crop-and-resize scales to 64x32 and keeps the middle.
        let mut im = Image8::new(40, 20, 3);
        im.data.iter_mut().for_each(|v| *v = 100);
        let fill = resize_mode(&im, ResizeMode::ResizeAndFill, 32, 32);
        assert!(
            fill.data.iter().all(|&v| v == 100),
            "the bands repeat the edge"
        );
        let crop = resize_mode(&im, ResizeMode::CropAndResize, 32, 32);
        assert!(crop.data.iter().all(|&v| v == 100));
    }

    #[test]
    fn jpeg_and_webp_decode_to_rgb_with_their_size() {
        let (w, h) = (12u32, 7u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 5 % 256) as u8).collect();
        let dir = std::env::temp_dir();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode(&rgb, w, h, image::ExtendedColorType::Rgb8)
            .unwrap();
        let mut rgba = Vec::new();
        let pixels: Vec<u8> = rgb
            .chunks(3)
            .flat_map(|p| [p[0], p[1], p[2], 128])
            .collect();
        image::codecs::webp::WebPEncoder::new_lossless(&mut rgba)
            .encode(&pixels, w, h, image::ExtendedColorType::Rgba8)
            .unwrap();
        for (name, bytes) in [("jpg", jpeg), ("webp", rgba)] {
            let path = dir.join(format!("hiresfix-init-{}.{name}", std::process::id()));
            std::fs::write(&path, bytes).unwrap();
            let d = read(&path, "init_image").unwrap();
            assert_eq!(
                (d.rgb.width, d.rgb.height, d.rgb.channels),
                (12, 7, 3),
                "{name}"
            );
            if name == "webp" {
                assert_eq!(d.rgb.data, rgb, "lossless WebP");
                assert_eq!(d.alpha.unwrap(), vec![128; 84]);
            } else {
                let worst = d
                    .rgb
                    .data
                    .iter()
                    .zip(&rgb)
                    .map(|(a, b)| a.abs_diff(*b))
                    .max();
                assert!(worst.unwrap() < 40, "{worst:?}");
            }
            std::fs::remove_file(&path).unwrap();
        }
    }

    #[test]
    fn a_file_that_is_no_image_is_one_line() {
        let path = std::env::temp_dir().join(format!("hiresfix-notimg-{}.png", std::process::id()));
        std::fs::write(&path, b"hello, not a picture").unwrap();
        let e = read(&path, "init_image").err().unwrap().to_string();
        assert!(
            e.starts_with("init_image ") && e.contains("is not a PNG, JPEG or WebP"),
            "{e}"
        );
        std::fs::remove_file(&path).unwrap();
    }
}
