//! Live previews: A1111's "Approx cheap" (`sd_vae_approx.cheap_approximation`, used by
//! `sd_samplers_common.samples_to_images_tensor`): the running denoised prediction's latent
//! channels mixed to RGB by a per-family 4 × 3 matrix (SDXL has its own), one pixel per
//! latent cell, then `(x + 1) / 2` clamped to 8 bits as A1111's `single_sample_to_image`.
//! The sampler's caller asks for one through [`Observer::preview_wanted`] and receives it in
//! [`Observer::preview`].
use host_api::tch::{Device, Kind, Tensor};

use crate::extras::Rgb8;
use crate::observer::Observer;

/// A1111's cheap approximation factors for SD 1.x / 2.x latents (rows: latent channels).
const SD: [[f32; 3]; 4] = [
    [0.298, 0.207, 0.208],
    [0.187, 0.286, 0.173],
    [-0.158, 0.189, 0.264],
    [-0.184, -0.271, -0.473],
];

/// The same for SDXL latents.
const SDXL: [[f32; 3]; 4] = [
    [0.3448, 0.4168, 0.4395],
    [-0.1953, -0.0290, 0.0250],
    [0.1074, 0.0886, -0.0163],
    [-0.3730, -0.2499, -0.2088],
];

/// The factors for a model family, `None` where A1111 has none (latents that are not the
/// four channels of SD / SDXL).
fn factors(family: &str) -> Option<&'static [[f32; 3]; 4]> {
    let f = family.to_ascii_lowercase();
    match f.as_str() {
        _ if f.starts_with("sdxl") => Some(&SDXL),
        _ if f.starts_with("sd1") || f.starts_with("sd2") => Some(&SD),
        _ => None,
    }
}

/// The first image of `latent` (`[B, 4, h, w]`, scaled as the sampler runs it) as an RGB8
/// preview of h × w pixels; `None` for a family without factors or another shape.
pub fn cheap(latent: &Tensor, family: &str) -> Option<Rgb8> {
    let factors = factors(family)?;
    let size = latent.size();
    let [_, 4, h, w] = size.as_slice() else {
        return None;
    };
    let (h, w) = (*h, *w);
    let m: Vec<f32> = factors.iter().flatten().copied().collect();
    let m = Tensor::from_slice(&m).view([4, 3]);
    let x = latent
        .narrow(0, 0, 1)
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .view([4, h * w]);
    // (h·w, 4) × (4, 3): einsum "lxy,lr -> rxy", laid out as rows of RGB.
    let rgb = x.transpose(0, 1).matmul(&m);
    let bytes = ((rgb + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0;
    let pixels = Vec::<u8>::try_from(bytes.to_kind(Kind::Uint8).flatten(0, -1)).ok()?;
    Some(Rgb8 {
        width: w as u32,
        height: h as u32,
        pixels,
    })
}

/// After step `step`: the preview of `denoised` when the observer wants one then.
pub fn offer(observer: &dyn Observer, step: usize, denoised: Option<&Tensor>, family: &str) {
    let Some(denoised) = denoised else {
        return;
    };
    if !observer.preview_wanted(step) {
        return;
    }
    if let Some(image) = host_api::tch::no_grad(|| cheap(denoised, family)) {
        observer.preview(&image);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cheap_preview_is_a1111s_matrix_per_cell() {
        // One image of 1 × 2 cells: cell 0 all zeros, cell 1 channel 3 = 1.
        let latent =
            Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]).view([1, 4, 1, 2]);
        let image = cheap(&latent, "sd1").unwrap();
        assert_eq!((image.width, image.height), (2, 1));
        // Zeros → 0.5 → 127; channel 3 of SD: (1 - 0.184) / 2 = 0.408 → 104, ...
        let expect = |v: f32| (((v + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0) as u8;
        assert_eq!(
            image.pixels,
            vec![
                127,
                127,
                127,
                expect(-0.184),
                expect(-0.271),
                expect(-0.473)
            ]
        );
        let xl = cheap(&latent, "sdxl").unwrap();
        assert_eq!(xl.pixels[3], expect(-0.3730));
        assert!(cheap(&latent, "sd3").is_none());
        assert!(cheap(
            &Tensor::zeros([1, 16, 2, 2], (Kind::Float, Device::Cpu)),
            "sd1"
        )
        .is_none());
    }
}
