//! img2img and inpainting for pass 1 (README "img2img and inpainting"): A1111's
//! `StableDiffusionProcessingImg2Img.init` for ordinary checkpoints and 9-channel inpainting
//! ones — the init image decoded and resized, the mask blurred (and cropped for "only
//! masked"), the starting latent, the latent mask blended each step, the image conditioning
//! of an inpainting checkpoint, and the final overlay.
pub mod composite;
pub mod concat;
pub mod fill;
pub mod init;
pub mod mask;
pub mod resample;
pub mod tiles;

use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use host_api::tch::{Device, Kind, Tensor};
use host_api::ModelBox;

use crate::pass_size::PassSize;
use crate::profile::{InpaintingFill, ResizeMode};
use composite::Overlay;
use resample::Image8;

/// Pass 1's img2img settings, resolved (paths beside the profile).
#[derive(Clone, Debug, PartialEq)]
pub struct Img2ImgPlan {
    pub init_image: PathBuf,
    pub mask: Option<PathBuf>,
    pub mask_blur: u32,
    pub mask_invert: bool,
    pub fill: InpaintingFill,
    pub full_res: bool,
    pub padding: u32,
    pub resize_mode: ResizeMode,
    pub mask_weight: f64,
    /// The steps the user asked for: the schedule is built for these and its last
    /// [`steps_run`] + 1 sigmas are run (A1111 `sample_img2img`).
    pub requested_steps: usize,
}

/// The steps img2img runs of `steps`: `t_enc + 1`, with A1111's `setup_img2img_steps`
/// `t_enc = int(min(denoise, 0.999) * steps)`; `sample_img2img` runs the schedule of `steps`
/// from `sigmas[steps - t_enc - 1]`, i.e. its last `t_enc + 2` sigmas.
pub fn steps_run(steps: usize, denoise: f64) -> usize {
    (denoise.min(0.999) * steps as f64) as usize + 1
}

/// The pixels side of pass 1, before any model: what is encoded, the mask, the overlay.
pub struct Pixels {
    /// What the VAE encodes (the pass size, or the init image's own with "latent upscale").
    pub image: Image8,
    /// The pass-size mask (`image_mask` after blur, crop and resize); `None`: plain img2img.
    pub mask: Option<Image8>,
    pub overlay: Option<Overlay>,
    /// Notes for the user (a blank mask with "only masked").
    pub notes: Vec<String>,
}

/// PIL's `images.flatten` onto A1111's default white background.
pub fn flatten(decoded: init::Decoded) -> Image8 {
    let mut rgb = decoded.rgb;
    if let Some(alpha) = decoded.alpha {
        for (px, a) in rgb.data.chunks_exact_mut(3).zip(alpha) {
            let a = f64::from(a);
            for v in px {
                *v = ((f64::from(*v) * a + 255.0 * (255.0 - a)) / 255.0).round() as u8;
            }
        }
    }
    rgb
}

/// Everything of `init` up to the VAE: A1111's order, step by step.
pub fn pixels(plan: &Img2ImgPlan, width: u32, height: u32) -> Result<Pixels> {
    let (w, h) = (width as usize, height as usize);
    let image = flatten(init::read(&plan.init_image, "init_image")?);
    let mut notes = Vec::new();
    let mut crop = None;
    let mut image_mask = None;
    let mut overlay_mask = None;
    if let Some(path) = &plan.mask {
        let decoded = init::read(path, "mask")?;
        let mut m = mask::binary(&decoded.rgb, decoded.alpha.as_deref());
        if (m.width, m.height) != (image.width, image.height) {
            // Another size of the same shape is resized to the image's; another shape would
            // paint the wrong place.
            if !init::same_shape((m.width, m.height), (image.width, image.height)) {
                bail!(
                    "mask {} is {}x{} but init_image {} is {}x{}: give a mask of the image's size (or its shape, which is resized)",
                    path.display(), m.width, m.height, plan.init_image.display(), image.width, image.height
                );
            }
            m = resample::resize(&m, image.width, image.height, resample::Filter::Lanczos);
        }
        if plan.mask_invert {
            mask::invert(&mut m);
        }
        let blur = f64::from(plan.mask_blur);
        m = mask::blur(&m, blur, blur);
        if plan.full_res {
            match mask::crop_region(&m, plan.padding) {
                Some(region) => {
                    let [x1, y1, x2, y2] =
                        mask::expand_crop_region(region, width, height, m.width, m.height);
                    let (cx1, cy1) = (x1.max(0) as usize, y1.max(0) as usize);
                    let (cx2, cy2) = (
                        x2.min(m.width as i64) as usize,
                        y2.min(m.height as i64) as usize,
                    );
                    let cropped = m.crop(cx1, cy1, cx2, cy2);
                    image_mask = Some(init::resize_mode(&cropped, ResizeMode::ResizeAndFill, w, h));
                    overlay_mask = Some(m);
                    crop = Some(([cx1, cy1, cx2, cy2], [x1, y1, x2 - x1, y2 - y1]));
                }
                None => notes.push(
                    "the mask is blank, so \"only masked\" ran as plain img2img (as A1111 does)"
                        .into(),
                ),
            }
        } else {
            let resized = init::resize_mode(&m, plan.resize_mode, w, h);
            overlay_mask = Some(mask::doubled(&resized));
            image_mask = Some(resized);
        }
    }
    let mut image = match (crop, plan.resize_mode) {
        (None, ResizeMode::LatentUpscale) => image,
        (None, mode) => init::resize_mode(&image, mode, w, h),
        (Some(_), _) => image,
    };
    let overlay = match (&image_mask, overlay_mask) {
        (Some(_), Some(mut om)) => {
            if (om.width, om.height) != (image.width, image.height) {
                om = init::resize_mode(&om, plan.resize_mode, image.width, image.height);
            }
            Some(Overlay {
                original: image.clone(),
                mask: om,
                paste: crop.map(|(_, paste)| paste),
            })
        }
        _ => None,
    };
    if let Some(([x1, y1, x2, y2], _)) = crop {
        image = init::resize_mode(&image.crop(x1, y1, x2, y2), ResizeMode::ResizeAndFill, w, h);
    }
    if let Some(m) = &image_mask {
        if plan.fill != InpaintingFill::Original {
            image = fill::fill(&image, m);
        }
    }
    Ok(Pixels {
        image,
        mask: image_mask,
        overlay,
        notes,
    })
}

/// An RGB8 image as a `[1, 3, H, W]` tensor in [-1, 1] (A1111: `x / 255 * 2 - 1`).
pub fn to_tensor(image: &Image8) -> Tensor {
    let t = Tensor::from_slice(&image.data)
        .view([image.height as i64, image.width as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float);
    t / 255.0 * 2.0 - 1.0
}

/// `[1, 3, H, W]` in [-1, 1] → RGB8 (A1111's `255 * clamp((x + 1) / 2)` truncated).
pub fn from_rgb8(w: u32, h: u32, rgb: Vec<u8>) -> Image8 {
    Image8 {
        width: w as usize,
        height: h as usize,
        channels: 3,
        data: rgb,
    }
}

/// Pass 1's latent side of img2img, for a batch.
pub struct Start {
    /// `[B, C, h, w]`: the encoded image (latent noise / latent nothing applied).
    pub init_latent: Tensor,
    /// `[1, 1, h, w]`, 1 where the latent repaints (`nmask`); `None` without a mask.
    pub nmask: Option<Tensor>,
    /// A 9-channel checkpoint's image conditioning `[B, 5, h, w]`.
    pub concat: Option<Tensor>,
    pub overlay: Option<Overlay>,
    pub notes: Vec<String>,
}

/// Encodes pass 1's init image with `model`'s VAE and builds the latent mask and the
/// conditioning; `noise` is the batch's initial noise (A1111 fills "latent noise" with it).
pub fn start(
    plan: &Img2ImgPlan,
    model: &ModelBox,
    size: &PassSize,
    noise: &Tensor,
    concat_channels: bool,
    device: Device,
) -> Result<Start> {
    let px = pixels(plan, size.width, size.height)?;
    let batch = noise.size()[0];
    let source = to_tensor(&px.image).to_device(device);
    let encode = |pixels: &Tensor| -> Result<Tensor> {
        model
            .encode(pixels)
            .map(|t| t.to_kind(Kind::Float))
            .map_err(|e| {
                anyhow!(
                    "pass 1: encoding init_image {} with the VAE: {e}",
                    plan.init_image.display()
                )
            })
    };
    let mut latent = encode(&source)?;
    let (lh, lw) = (size.latent_h, size.latent_w);
    if latent.size()[2..] != [lh, lw] {
        // "latent upscale" (A1111: bilinear, no antialias).
        latent = latent.upsample_bilinear2d([lh, lw], false, None, None);
    }
    let mut init_latent = latent.repeat([batch, 1, 1, 1]);
    let nmask = px.mask.as_ref().map(|m| {
        let values = mask::latent_mask(m, lw as usize, lh as usize);
        Tensor::from_slice(&values)
            .view([1, 1, lh, lw])
            .to_device(device)
    });
    if let Some(n) = &nmask {
        let keep = 1.0 - n;
        match plan.fill {
            InpaintingFill::LatentNoise => init_latent = &init_latent * &keep + noise * n,
            InpaintingFill::LatentNothing => init_latent = &init_latent * &keep,
            _ => {}
        }
    }
    let concat = match concat_channels {
        false => None,
        true => {
            let cmask = px
                .mask
                .as_ref()
                .map(|m| concat::pixel_mask(m).to_device(device));
            // "latent upscale" encoded the image at its own size; the conditioning is the
            // pass's.
            let (w, h) = (size.width as usize, size.height as usize);
            let source = match (px.image.width, px.image.height) == (w, h) {
                true => source,
                false => to_tensor(&resample::resize(
                    &px.image,
                    w,
                    h,
                    resample::Filter::Lanczos,
                ))
                .to_device(device),
            };
            let masked = concat::masked_source(&source, cmask.as_ref(), plan.mask_weight);
            let encoded = encode(&masked)?;
            let c = concat::assemble(cmask.as_ref(), &encoded, lh, lw);
            Some(c.repeat([batch, 1, 1, 1]))
        }
    };
    Ok(Start {
        init_latent,
        nmask,
        concat,
        overlay: px.overlay,
        notes: px.notes,
    })
}

/// A1111's img2img infotext pairs ("Denoising strength", "Mask blur", "Inpaint area", ...),
/// as its `processing.py` adds them to `extra_generation_params`.
pub fn infotext(plan: &Img2ImgPlan, denoise: f64) -> Vec<(String, String)> {
    let mut pairs = vec![("Denoising strength".into(), crate::infotext::num(denoise))];
    if plan.mask.is_none() {
        return pairs;
    }
    if plan.mask_invert {
        pairs.push(("Mask mode".into(), "Inpaint not masked".into()));
    }
    if plan.mask_blur > 0 {
        pairs.push(("Mask blur".into(), plan.mask_blur.to_string()));
    }
    if plan.full_res {
        pairs.push(("Inpaint area".into(), "Only masked".into()));
        pairs.push(("Masked area padding".into(), plan.padding.to_string()));
    }
    if plan.fill != InpaintingFill::Original {
        pairs.push(("Masked content".into(), plan.fill.as_str().into()));
    }
    pairs
}
