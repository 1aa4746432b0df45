//! A1111's `masking.fill` ("Masked content: fill"): the masked part painted from blurred
//! copies of the unmasked part.
use super::resample::Image8;

/// PIL's `GaussianBlur(radius)` box length for 3 passes (`_gaussian_blur_radius`).
fn box_radius(radius: f64) -> f64 {
    let sigma2 = radius * radius / 3.0;
    let big_l = (12.0 * sigma2 + 1.0).sqrt();
    let l = ((big_l - 1.0) / 2.0).floor();
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * sigma2) / (6.0 * (sigma2 - (l + 1.0).powi(2)));
    l + a
}

/// One box blur of fractional radius `r` along a line, edges repeated (PIL's `ImagingLineBoxBlur`).
fn box_line(line: &[f64], r: f64) -> Vec<f64> {
    let n = line.len() as i64;
    let whole = r.floor() as i64;
    let frac = r - whole as f64;
    let at = |i: i64| line[i.clamp(0, n - 1) as usize];
    (0..n)
        .map(|i| {
            let mut s: f64 = (-whole..=whole).map(|d| at(i + d)).sum();
            s += frac * (at(i - whole - 1) + at(i + whole + 1));
            s / (2.0 * r + 1.0)
        })
        .collect()
}

/// `masking.fill`: the masked part painted from blurred copies of the unmasked part (PIL
/// Gaussian blurs of radius 256, 64, 16, 4, 2, 0 composited over each other). PIL blurs and
/// composites in 8-bit steps; this does it in floating point, so levels can differ slightly.
pub fn fill(image: &Image8, mask: &Image8) -> Image8 {
    let (w, h) = (image.width, image.height);
    // Premultiplied RGBa: the image where the mask is 0.
    let mut masked = vec![[0f64; 4]; w * h];
    for (i, px) in masked.iter_mut().enumerate() {
        let a = 255.0 - f64::from(mask.data[i]);
        for (c, v) in px.iter_mut().take(3).enumerate() {
            *v = f64::from(image.data[i * 3 + c]) * a / 255.0;
        }
        px[3] = a;
    }
    let mut out = vec![[0f64; 4]; w * h];
    for (radius, repeats) in [
        (256.0, 1),
        (64.0, 1),
        (16.0, 2),
        (4.0, 4),
        (2.0, 2),
        (0.0, 1),
    ] {
        let mut blurred = masked.clone();
        if radius > 0.0 {
            let r = box_radius(radius);
            for _ in 0..3 {
                #[allow(clippy::needless_range_loop)] // one channel of every pixel at a time
                for c in 0..4 {
                    for y in 0..h {
                        let line: Vec<f64> = (0..w).map(|x| blurred[y * w + x][c]).collect();
                        for (x, v) in box_line(&line, r).into_iter().enumerate() {
                            blurred[y * w + x][c] = v;
                        }
                    }
                    for x in 0..w {
                        let line: Vec<f64> = (0..h).map(|y| blurred[y * w + x][c]).collect();
                        for (y, v) in box_line(&line, r).into_iter().enumerate() {
                            blurred[y * w + x][c] = v;
                        }
                    }
                }
            }
        }
        for _ in 0..repeats {
            for (o, b) in out.iter_mut().zip(&blurred) {
                // alpha_composite of premultiplied `b` over straight `o`.
                let (sa, da) = (b[3] / 255.0, o[3] / 255.0);
                let oa = sa + da * (1.0 - sa);
                for c in 0..3 {
                    let src = b[c] / 255.0; // premultiplied
                    let dst = o[c] / 255.0 * da;
                    let v = src + dst * (1.0 - sa);
                    o[c] = if oa > 0.0 { v / oa * 255.0 } else { 0.0 };
                }
                o[3] = oa * 255.0;
            }
        }
    }
    Image8 {
        width: w,
        height: h,
        channels: 3,
        data: out
            .iter()
            .flat_map(|p| [p[0], p[1], p[2]])
            .map(|v| v.round().clamp(0.0, 255.0) as u8)
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::img2img::mask::tests::square;

    #[test]
    fn fill_keeps_unmasked_pixels_and_paints_masked_ones_from_them() {
        let mut im = Image8::new(16, 16, 3);
        im.data.iter_mut().for_each(|v| *v = 90);
        let m = square(16, 16, [4, 4, 12, 12]);
        im.data[(8 * 16 + 8) * 3] = 250; // inside the mask: replaced
        let out = fill(&im, &m);
        assert!(
            out.data.iter().all(|&v| (89..=91).contains(&v)),
            "{:?}",
            &out.data[..12]
        );
    }
}
