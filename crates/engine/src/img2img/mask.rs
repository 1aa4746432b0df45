//! A1111's mask handling for ordinary checkpoints (`processing.py`
//! `StableDiffusionProcessingImg2Img.init`, `masking.py`): the binary mask, inversion, the
//! Gaussian mask blur, the "only masked" crop box and the latent mask (`masking.fill` is in
//! [`super::fill`]).
use super::resample::{resize, Filter, Image8};

/// A1111 `create_binary_mask`: a mask drawn as transparency (an alpha channel that is not all
/// 255) is its alpha, else its luminance (PIL's `convert("L")`), then 255 where over 128.
pub fn binary(rgb: &Image8, alpha: Option<&[u8]>) -> Image8 {
    let transparent = alpha.filter(|a| a.iter().any(|&v| v != 255));
    let level: Vec<u8> = match transparent {
        Some(a) => a.to_vec(),
        None => rgb
            .data
            .chunks_exact(3)
            .map(|p| luminance(p[0], p[1], p[2]))
            .collect(),
    };
    Image8 {
        width: rgb.width,
        height: rgb.height,
        channels: 1,
        data: level
            .into_iter()
            .map(|v| if v > 128 { 255 } else { 0 })
            .collect(),
    }
}

/// PIL's RGB → L: ITU-R 601-2 luma in 16-bit fixed point.
pub fn luminance(r: u8, g: u8, b: u8) -> u8 {
    ((u32::from(r) * 19595 + u32::from(g) * 38470 + u32::from(b) * 7471 + 0x8000) >> 16) as u8
}

/// `ImageOps.invert`.
pub fn invert(mask: &mut Image8) {
    mask.data.iter_mut().for_each(|v| *v = 255 - *v);
}

/// The kernel A1111 blurs with: `cv2.getGaussianKernel(2 * int(2.5 * blur + 0.5) + 1, blur)`.
fn kernel(blur: f64) -> Vec<f64> {
    let size = 2 * (2.5 * blur + 0.5) as usize + 1;
    let mid = (size - 1) as f64 / 2.0;
    let raw: Vec<f64> = (0..size)
        .map(|i| (-((i as f64 - mid).powi(2)) / (2.0 * blur * blur)).exp())
        .collect();
    let sum: f64 = raw.iter().sum();
    raw.into_iter().map(|w| w / sum).collect()
}

/// OpenCV's default border (`BORDER_REFLECT_101`): `gfedcb|abcdefgh|gfedcba`.
fn reflect101(i: i64, n: i64) -> usize {
    if n == 1 {
        return 0;
    }
    let period = 2 * (n - 1);
    let m = i.rem_euclid(period);
    (if m < n { m } else { period - m }) as usize
}

/// A1111's mask blur: `cv2.GaussianBlur` along x with `blur_x`, then along y with `blur_y`
/// (0 skips that axis), each rounded to u8. OpenCV rounds its 8-bit blur in fixed point; this
/// rounds the exact sum, so a level may differ by one.
pub fn blur(mask: &Image8, blur_x: f64, blur_y: f64) -> Image8 {
    let mut out = mask.clone();
    let (w, h) = (mask.width as i64, mask.height as i64);
    for (sigma, along_x) in [(blur_x, true), (blur_y, false)] {
        if sigma <= 0.0 {
            continue;
        }
        let k = kernel(sigma);
        let r = (k.len() / 2) as i64;
        let src = out.clone();
        for y in 0..h {
            for x in 0..w {
                let mut s = 0.0;
                for (j, wgt) in k.iter().enumerate() {
                    let d = j as i64 - r;
                    let v = match along_x {
                        true => src.at(reflect101(x + d, w), y as usize, 0),
                        false => src.at(x as usize, reflect101(y + d, h), 0),
                    };
                    s += wgt * f64::from(v);
                }
                out.data[(y * w + x) as usize] = s.round_ties_even().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// `masking.get_crop_region_v2`: the box around every non-zero pixel, padded, inside the
/// image; `None` for a blank mask.
pub fn crop_region(mask: &Image8, pad: u32) -> Option<[i64; 4]> {
    let (w, h) = (mask.width, mask.height);
    let (mut x1, mut y1, mut x2, mut y2) = (usize::MAX, usize::MAX, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if mask.at(x, y, 0) != 0 {
                (x1, y1) = (x1.min(x), y1.min(y));
                (x2, y2) = (x2.max(x + 1), y2.max(y + 1));
            }
        }
    }
    if x1 == usize::MAX {
        return None;
    }
    let pad = i64::from(pad);
    Some([
        (x1 as i64 - pad).max(0),
        (y1 as i64 - pad).max(0),
        (x2 as i64 + pad).min(w as i64),
        (y2 as i64 + pad).min(h as i64),
    ])
}

/// `masking.expand_crop_region`: the box grown to the pass's aspect ratio, inside the image.
pub fn expand_crop_region(
    [x1, y1, x2, y2]: [i64; 4],
    processing_width: u32,
    processing_height: u32,
    image_width: usize,
    image_height: usize,
) -> [i64; 4] {
    let ratio_crop = (x2 - x1) as f64 / (y2 - y1) as f64;
    let ratio_processing = f64::from(processing_width) / f64::from(processing_height);
    if ratio_crop > ratio_processing {
        let desired = (x2 - x1) as f64 / ratio_processing;
        let (y1, y2) = grow(y1, y2, desired, image_height as i64);
        [x1, y1, x2, y2]
    } else {
        let desired = (y2 - y1) as f64 * ratio_processing;
        let (x1, x2) = grow(x1, x2, desired, image_width as i64);
        [x1, y1, x2, y2]
    }
}

/// One side of `expand_crop_region`: `lo..hi` grown to `desired` about its centre, shifted
/// back inside `0..limit` and clipped there, in A1111's order of steps.
fn grow(mut lo: i64, mut hi: i64, desired: f64, limit: i64) -> (i64, i64) {
    let diff = (desired - (hi - lo) as f64) as i64;
    lo -= diff.div_euclid(2);
    hi += diff - diff.div_euclid(2);
    if hi >= limit {
        let d = hi - limit;
        hi -= d;
        lo -= d;
    }
    if lo < 0 {
        hi -= lo;
        lo = 0;
    }
    if hi >= limit {
        hi = limit;
    }
    (lo, hi)
}

/// A1111's latent mask: the pass-size mask resized to the latent's size (PIL's default
/// bicubic, of its RGB copy), scaled to 0..1 and rounded (`mask_round`). 1 repaints.
pub fn latent_mask(mask: &Image8, latent_w: usize, latent_h: usize) -> Vec<f32> {
    let small = resize(mask, latent_w, latent_h, Filter::Bicubic);
    small
        .data
        .iter()
        .map(|&v| (f32::from(v) / 255.0).round_ties_even())
        .collect()
}

/// The overlay mask of an ordinary (not "only masked") pass: `clip(mask * 2, 0, 255)`.
pub fn doubled(mask: &Image8) -> Image8 {
    let mut out = mask.clone();
    out.data.iter_mut().for_each(|v| *v = v.saturating_mul(2));
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn square(w: usize, h: usize, [x1, y1, x2, y2]: [usize; 4]) -> Image8 {
        let mut m = Image8::new(w, h, 1);
        for y in y1..y2 {
            for x in x1..x2 {
                m.data[y * w + x] = 255;
            }
        }
        m
    }

    #[test]
    fn binary_reads_alpha_only_when_it_is_not_opaque() {
        let rgb = Image8 {
            width: 2,
            height: 1,
            channels: 3,
            data: vec![255, 255, 255, 10, 10, 10],
        };
        assert_eq!(binary(&rgb, None).data, vec![255, 0]);
        assert_eq!(binary(&rgb, Some(&[255, 255])).data, vec![255, 0]);
        assert_eq!(binary(&rgb, Some(&[0, 200])).data, vec![0, 255]);
        assert_eq!(luminance(255, 0, 0), 76);
    }

    #[test]
    fn blur_kernel_is_a1111s_size_and_blurs_symmetrically() {
        assert_eq!(kernel(4.0).len(), 2 * 10 + 1);
        let m = square(32, 32, [12, 12, 20, 20]);
        let b = blur(&m, 4.0, 4.0);
        assert!(
            b.at(16, 16, 0) > 64 && b.at(16, 16, 0) < 255,
            "{}",
            b.at(16, 16, 0)
        );
        assert_eq!(b.at(10, 16, 0), b.at(21, 16, 0));
        assert_eq!(b.at(0, 0, 0), 0);
        assert_eq!(blur(&m, 0.0, 0.0), m);
    }

    #[test]
    fn crop_region_pads_and_expands_to_the_pass_ratio() {
        let m = square(64, 64, [40, 10, 48, 14]);
        let region = crop_region(&m, 4).unwrap();
        assert_eq!(region, [36, 6, 52, 18]);
        // 16x12 to a square pass: 4 more rows, 2 above and 2 below.
        assert_eq!(expand_crop_region(region, 32, 32, 64, 64), [36, 4, 52, 20]);
        // Pushed back inside the image at the bottom edge.
        assert_eq!(
            expand_crop_region([0, 60, 16, 64], 32, 32, 64, 64),
            [0, 48, 16, 64]
        );
        assert_eq!(crop_region(&Image8::new(8, 8, 1), 4), None);
    }

    #[test]
    fn the_latent_mask_is_rounded_to_zero_or_one() {
        let m = square(32, 32, [0, 0, 16, 32]);
        let lm = latent_mask(&m, 4, 4);
        assert_eq!(
            lm,
            vec![1., 1., 0., 0., 1., 1., 0., 0., 1., 1., 0., 0., 1., 1., 0., 0.]
        );
    }
}
