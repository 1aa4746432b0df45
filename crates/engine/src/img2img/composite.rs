//! A1111's final overlay (`processing.apply_overlay`): the original pixels where the blurred
//! mask is 0, the generated ones where it is 255, blended between; with "only masked" the
//! generated crop is first resized into its box of the original (`uncrop`).
use super::init::resize_mode;
use super::resample::{resize, Filter, Image8};
use crate::profile::ResizeMode;

/// What the final image is composited with.
#[derive(Clone, Debug)]
pub struct Overlay {
    /// The init image at the canvas size (the pass size, or the init image's own size with
    /// "only masked").
    pub original: Image8,
    /// `mask_for_overlay` at the canvas size: 255 takes the generated pixel.
    pub mask: Image8,
    /// "Only masked": where the generated pass-size image goes, `(x, y, w, h)`.
    pub paste: Option<[i64; 4]>,
}

impl Overlay {
    /// The generated image `generated` (RGB) composited over the original. A generated image
    /// of another size than the canvas (a later pass) gets the overlay resized to its size.
    pub fn apply(&self, generated: &Image8) -> Image8 {
        let canvas = match self.paste {
            Some([x, y, w, h]) => {
                let mut base = self.original.clone();
                let fitted =
                    resize_mode(generated, ResizeMode::CropAndResize, w as usize, h as usize);
                // Outside the box the base is transparent in A1111; the overlay is opaque there
                // (the mask is 0 outside the padded box), so the original shows.
                base.paste(&fitted, x, y);
                base
            }
            None => generated.clone(),
        };
        let (w, h) = (canvas.width, canvas.height);
        let (original, mask) = match (self.original.width, self.original.height) == (w, h) {
            true => (self.original.clone(), self.mask.clone()),
            false => (
                resize(&self.original, w, h, Filter::Lanczos),
                resize(&self.mask, w, h, Filter::Lanczos),
            ),
        };
        let mut out = canvas;
        for i in 0..w * h {
            // Overlay alpha is 255 - mask: the original where the mask is 0.
            let keep = 255.0 - f64::from(mask.data[i]);
            for c in 0..3 {
                let o = f64::from(original.data[i * 3 + c]);
                let g = f64::from(out.data[i * 3 + c]);
                out.data[i * 3 + c] = ((o * keep + g * (255.0 - keep)) / 255.0).round() as u8;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_original_shows_where_the_mask_is_zero() {
        let mut original = Image8::new(4, 1, 3);
        original.data.iter_mut().for_each(|v| *v = 10);
        let mask = Image8 {
            width: 4,
            height: 1,
            channels: 1,
            data: vec![0, 255, 128, 0],
        };
        let mut generated = Image8::new(4, 1, 3);
        generated.data.iter_mut().for_each(|v| *v = 200);
        let out = Overlay {
            original,
            mask,
            paste: None,
        }
        .apply(&generated);
        assert_eq!(&out.data[..3], &[10, 10, 10]);
        assert_eq!(&out.data[3..6], &[200, 200, 200]);
        assert_eq!(out.data[6], 105);
    }

    #[test]
    fn only_masked_pastes_into_its_box_of_the_original() {
        let original = Image8::new(8, 8, 3);
        let mut mask = Image8::new(8, 8, 1);
        for y in 2..4 {
            for x in 2..4 {
                mask.data[y * 8 + x] = 255;
            }
        }
        let mut generated = Image8::new(4, 4, 3);
        generated.data.iter_mut().for_each(|v| *v = 250);
        let overlay = Overlay {
            original,
            mask,
            paste: Some([2, 2, 2, 2]),
        };
        let out = overlay.apply(&generated);
        assert_eq!((out.width, out.height), (8, 8));
        assert_eq!(out.at(2, 2, 0), 250);
        assert_eq!(out.at(5, 5, 0), 0);
    }
}
