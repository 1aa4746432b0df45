//! The image conditioning of a 9-channel inpainting checkpoint (A1111 `processing.py`
//! `inpainting_image_conditioning` and `txt2img_image_conditioning`): the pixel mask resized
//! (nearest) to the latent and the VAE-encoded masked image, `cat([mask, masked_latent])`.
use anyhow::{anyhow, Result};
use host_api::tch::{Kind, Tensor};
use host_api::ModelBox;

use super::resample::Image8;

/// Whether the model takes A1111's 5-channel image conditioning (an inpainting checkpoint).
pub fn takes_concat(info: &host_api::ModelInfo) -> bool {
    info.extra.iter().any(|e| {
        e.key.as_str() == host_api::keys::CONCAT_CHANNELS
            && matches!(e.value, host_api::OptionValue::Number(n) if n == 5.0)
    })
}

/// The conditioning mask: the pass-size mask / 255, rounded (`[1, 1, H, W]`).
pub fn pixel_mask(mask: &Image8) -> Tensor {
    let values: Vec<f32> = mask
        .data
        .iter()
        .map(|&v| (f32::from(v) / 255.0).round_ties_even())
        .collect();
    Tensor::from_slice(&values).view([1, 1, mask.height as i64, mask.width as i64])
}

/// `lerp(source, source * (1 - mask), weight)`; no mask is a mask of ones.
pub fn masked_source(source: &Tensor, mask: Option<&Tensor>, weight: f64) -> Tensor {
    let masked = match mask {
        Some(m) => source * (1.0 - m),
        None => source.zeros_like(),
    };
    source.lerp(&masked, weight)
}

/// `cat([interpolate(mask, latent size, nearest), encoded], 1)`: `[B, 5, h, w]`.
pub fn assemble(mask: Option<&Tensor>, encoded: &Tensor, lh: i64, lw: i64) -> Tensor {
    let b = encoded.size()[0];
    let small = match mask {
        Some(m) => m.upsample_nearest2d([lh, lw], None, None),
        None => Tensor::ones([1, 1, lh, lw], (Kind::Float, encoded.device())),
    };
    Tensor::cat(
        &[
            small.expand([b, -1, -1, -1], false),
            encoded.shallow_clone(),
        ],
        1,
    )
}

/// A1111's `txt2img_image_conditioning` for an inpainting checkpoint: the encoded grey
/// (0 in [-1, 1]) image behind a mask of ones; also a later pass's (`img2img_image_conditioning`
/// without a mask at the default weight 1, where the masked image is all zeros).
pub fn txt2img(
    model: &ModelBox,
    device: host_api::tch::Device,
    batch: i64,
    (height, width): (i64, i64),
    (lh, lw): (i64, i64),
) -> Result<Tensor> {
    let grey = Tensor::zeros([1, 3, height, width], (Kind::Float, device));
    let encoded = model
        .encode(&grey)
        .map_err(|e| anyhow!("encoding the inpainting checkpoint's blank image: {e}"))?
        .to_kind(Kind::Float);
    Ok(assemble(None, &encoded, lh, lw).repeat([batch, 1, 1, 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_source_blanks_the_mask_at_full_weight_and_lerps_below() {
        let source = Tensor::from_slice(&[0.5f32, -0.5, 1.0, 1.0]).view([1, 1, 2, 2]);
        let mask = Tensor::from_slice(&[1.0f32, 0.0, 1.0, 0.0]).view([1, 1, 2, 2]);
        let full = masked_source(&source, Some(&mask), 1.0);
        assert_eq!(
            Vec::<f32>::try_from(full.flatten(0, -1)).unwrap(),
            vec![0.0, -0.5, 0.0, 1.0]
        );
        let half = masked_source(&source, Some(&mask), 0.5);
        assert_eq!(
            Vec::<f32>::try_from(half.flatten(0, -1)).unwrap(),
            vec![0.25, -0.5, 0.5, 1.0]
        );
        let none = masked_source(&source, None, 1.0);
        assert_eq!(f64::try_from(none.abs().sum(Kind::Double)).unwrap(), 0.0);
    }

    #[test]
    fn assemble_puts_the_nearest_mask_before_the_latent() {
        let mask = pixel_mask(&Image8 {
            width: 4,
            height: 2,
            channels: 1,
            data: vec![255, 255, 0, 0, 255, 255, 0, 127],
        });
        let encoded = Tensor::full([2, 4, 1, 2], 3.0, (Kind::Float, host_api::tch::Device::Cpu));
        let c = assemble(Some(&mask), &encoded, 1, 2);
        assert_eq!(c.size(), vec![2, 5, 1, 2]);
        let first: Vec<f32> = Vec::try_from(c.get(1).flatten(0, -1)).unwrap();
        assert_eq!(
            first,
            vec![1.0, 0.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0]
        );
        let ones = assemble(None, &encoded, 1, 2);
        assert_eq!(
            f64::try_from(ones.narrow(1, 0, 1).sum(Kind::Double)).unwrap(),
            4.0
        );
    }
}
