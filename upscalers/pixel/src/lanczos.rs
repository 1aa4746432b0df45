//! PIL's Lanczos resize (`Image.resize(size, LANCZOS)`, `libImaging/Resample.c`) on float
//! images, the resize behind A1111's "Lanczos" upscaler. Separable: a horizontal then a
//! vertical pass, each a product with a banded `[out, in]` weight matrix, i.e. a convolution
//! whose taps move with the output position, so non-integer scales are exact. Sums run in f64
//! and each pass is rounded to f32, as PIL does for mode "F" images.
use std::f64::consts::PI;

use host_api::tch::{Device, Kind, Tensor};
use host_api::Result;

/// Lanczos window half-width, `a = 3`.
const A: f64 = 3.0;

/// Resizes `[B, C, H, W]` float pixels to `height` × `width`.
pub fn resize(image: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    let (_, _, h, w) = image.size4()?;
    let mut x = image.f_to_kind(Kind::Float)?;
    // PIL skips a pass whose size does not change.
    if width != w {
        let weights = weight_matrix(w, width, x.device())?.f_tr()?;
        x = x
            .f_to_kind(Kind::Double)?
            .f_matmul(&weights)?
            .f_to_kind(Kind::Float)?;
    }
    if height != h {
        let weights = weight_matrix(h, height, x.device())?;
        x = weights
            .f_matmul(&x.f_to_kind(Kind::Double)?)?
            .f_to_kind(Kind::Float)?;
    }
    Ok(x)
}

/// `[out, in]` f64 weights: row `i` holds output cell `i`'s taps.
fn weight_matrix(input: i64, output: i64, device: Device) -> Result<Tensor> {
    let (n_in, n_out) = (to_usize(input)?, to_usize(output)?);
    let mut matrix = vec![0.0; n_in * n_out];
    for (i, row) in matrix.chunks_mut(n_in).enumerate() {
        let (first, taps) = taps(input, output, i);
        row[first..first + taps.len()].copy_from_slice(&taps);
    }
    Ok(Tensor::f_from_slice(&matrix)?
        .f_reshape([output, input])?
        .f_to_device(device)?)
}

fn to_usize(n: i64) -> Result<usize> {
    usize::try_from(n).map_err(|_| format!("cannot resize to or from {n} pixels").into())
}

/// PIL's `precompute_coeffs` for output cell `i`: the first input index and the normalised
/// weights that follow it. Shrinking widens the window by the scale (antialiasing).
fn taps(input: i64, output: i64, i: usize) -> (usize, Vec<f64>) {
    let scale = input as f64 / output as f64;
    let filter_scale = scale.max(1.0);
    let support = A * filter_scale;
    let inverse = 1.0 / filter_scale;
    let center = (i as f64 + 0.5) * scale;
    // `as i64` truncates toward zero like PIL's `(int)` cast; the bounds then clamp.
    let first = ((center - support + 0.5) as i64).max(0);
    let end = ((center + support + 0.5) as i64).min(input);
    let mut weights: Vec<f64> = (first..end)
        .map(|j| lanczos((j as f64 - center + 0.5) * inverse))
        .collect();
    let total: f64 = weights.iter().sum();
    if total != 0.0 {
        weights.iter_mut().for_each(|w| *w /= total);
    }
    (first as usize, weights)
}

/// `sinc(x) · sinc(x / a)` on `[-a, a)`, zero outside.
fn lanczos(x: f64) -> f64 {
    if (-A..A).contains(&x) {
        sinc(x) * sinc(x / A)
    } else {
        0.0
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * PI;
    x.sin() / x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_of_every_output_cell_sum_to_one() {
        for (input, output) in [(13, 26), (26, 40), (26, 9), (1, 5), (7, 7)] {
            for i in 0..output as usize {
                let (first, w) = taps(input, output, i);
                assert!(first + w.len() <= input as usize);
                assert!(
                    (w.iter().sum::<f64>() - 1.0).abs() < 1e-12,
                    "{input}->{output} cell {i}"
                );
            }
        }
    }

    #[test]
    fn lanczos_is_one_at_zero_and_vanishes_at_the_window_edge() {
        assert_eq!(lanczos(0.0), 1.0);
        assert_eq!(lanczos(3.0), 0.0);
        assert!(lanczos(1.0).abs() < 1e-15);
    }
}
