//! PIL's nearest-neighbour resize (`Image.resize(size, NEAREST)`, `libImaging/Geometry.c`
//! ImagingScaleAffine), the resize behind A1111's "Nearest" upscaler. Output cell `i` reads
//! input `trunc(scale / 2 + i · scale)` with the position accumulated step by step in f64,
//! which settles ties differently from torch's nearest-exact.
use host_api::tch::Tensor;
use host_api::Result;

/// Resizes `[B, C, H, W]` pixels to `height` × `width`.
pub fn resize(image: &Tensor, height: i64, width: i64) -> Result<Tensor> {
    let (_, _, h, w) = image.size4()?;
    let index = |input, output| {
        Tensor::f_from_slice(&source_indices(input, output))?.f_to_device(image.device())
    };
    Ok(image
        .f_index_select(2, &index(h, height)?)?
        .f_index_select(3, &index(w, width)?)?)
}

fn source_indices(input: i64, output: i64) -> Vec<i64> {
    let scale = input as f64 / output as f64;
    let mut position = scale * 0.5;
    (0..output)
        .map(|_| {
            let index = (position as i64).min(input - 1);
            position += scale;
            index
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ties_round_down_as_pil_does() {
        // 2 -> 7: cell 3 sits exactly on the border (3.5 · 2/7 = 1); PIL's accumulated position
        // lands just below it and reads input 0, where torch's nearest-exact reads input 1.
        assert_eq!(source_indices(2, 7), vec![0, 0, 0, 0, 1, 1, 1]);
        assert_eq!(source_indices(3, 6), vec![0, 0, 1, 1, 2, 2]);
    }
}
