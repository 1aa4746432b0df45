//! Seamless (`tiling = true`) hires passes: the model's convolutions pad circularly (the
//! backend does that), and the host upscales the latent as a tile, so the wrap-around holds
//! through later passes too (A1111 upscales with edge clamping, which leaves a visible seam
//! in the hires pass).
//!
//! The latent is padded circularly before the upscaler and the padding cropped after, by a
//! number of cells that maps to a whole number of cells at the new size, so the crop is exact.
use host_api::tch::Tensor;

/// Cells of wrap-around context given to the upscaler on each side (covers the reach of a
/// bilinear/bicubic kernel and a good part of a model upscaler's receptive field).
const CONTEXT: i64 = 4;

/// The padding for a side of `from` cells upscaled to `to` cells: the smallest `p ≥ CONTEXT`
/// with `p · to / from` whole (the whole side at worst, which always is).
pub fn wrap_pad(from: i64, to: i64) -> i64 {
    (CONTEXT.min(from)..from)
        .find(|p| (p * to) % from == 0)
        .unwrap_or(from)
}

/// A seamless upscale of `prev` ([1,C,h,w]) to `to_h × to_w` cells: `upscale(padded, h', w')`
/// runs on the circularly padded latent, and the result's padding is cropped off.
pub fn wrapped_upscale<E>(
    prev: &Tensor,
    to_h: i64,
    to_w: i64,
    upscale: impl FnOnce(&Tensor, i64, i64) -> Result<Tensor, E>,
) -> Result<Tensor, E> {
    let size = prev.size();
    let (h, w) = (size[2], size[3]);
    let (ph, pw) = (wrap_pad(h, to_h), wrap_pad(w, to_w));
    let padded = prev.pad([pw, pw, ph, ph], "circular", None);
    let (oh, ow) = (ph * to_h / h, pw * to_w / w);
    let up = upscale(&padded, to_h + 2 * oh, to_w + 2 * ow)?;
    Ok(up.narrow(2, oh, to_h).narrow(3, ow, to_w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_api::tch::Kind;

    #[test]
    fn padding_maps_to_whole_cells() {
        assert_eq!(wrap_pad(64, 128), 4); // 2×
        assert_eq!(wrap_pad(64, 96), 4); // 1.5×: 4 → 6
        assert_eq!(wrap_pad(64, 100), 16); // 16 → 25
        assert_eq!(wrap_pad(3, 7), 3); // tiny latents: the whole side
        assert_eq!(wrap_pad(63, 127), 63);
    }

    #[test]
    fn equals_upscaling_the_tiled_plane() {
        // Upscaling a 3×3 tiling of the latent and keeping the middle tile is the exact answer
        // for a local kernel; the wrapped upscale must give it, a plain one must not.
        let bilinear = |x: &Tensor, h, w| x.upsample_bilinear2d([h, w], false, None, None);
        let prev = Tensor::randn([1, 2, 10, 16], (Kind::Double, host_api::tch::Device::Cpu));
        let (h, w) = (15, 40);
        let plane = bilinear(&prev.repeat([1, 1, 3, 3]), 3 * h, 3 * w);
        let exact = plane.narrow(2, h, h).narrow(3, w, w);
        let up = wrapped_upscale::<()>(&prev, h, w, |x, h, w| Ok(bilinear(x, h, w))).unwrap();
        let err = (&up - &exact).abs().max().double_value(&[]);
        assert!(err < 1e-12, "{err}");
        let plain = (bilinear(&prev, h, w) - &exact)
            .abs()
            .max()
            .double_value(&[]);
        assert!(plain > 0.1, "{plain}");
    }
}
