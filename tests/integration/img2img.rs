//! img2img and masked img2img (inpainting with an ordinary checkpoint) against a
//! transcription of A1111's img2img on diffusers + k-diffusion
//! (scripts/make_img2img_reference.py, tests/data/img2img/): the pixels A1111 encodes
//! (Pillow's resampling), the latent mask, the starting latent, the sliced sigmas and the
//! sampled latent; and img2img + a hires pass, through the library and the binary.
use std::collections::HashMap;
use std::path::PathBuf;

use crate::common::tensors::{read_reference, rel_err};
use crate::common::*;
use hiresfix::generate::prepare;
use hiresfix::img2img::{mask, pixels, Img2ImgPlan};
use hiresfix::plan::pass_sigmas;
use hiresfix::profile::{InpaintingFill, Profile, ResizeMode};
use hiresfix::registry::Registry;
use host_api::tch::{Kind, Tensor};
use host_api::ModelSigmas;

fn data() -> PathBuf {
    repo().join("tests/data/img2img")
}

fn reference() -> HashMap<String, Tensor> {
    read_reference(&data().join("reference.safetensors"))
}

/// The reference's cases: (name, pass-1 keys).
const CASES: [(&str, &str); 5] = [
    ("plain", ""),
    ("crop", "resize_mode = \"crop and resize\"\n"),
    ("masked_blur0", "mask = \"mask.png\"\nmask_blur = 0\n"),
    ("masked_blur4", "mask = \"mask.png\"\nmask_blur = 4\n"),
    (
        "masked_nothing",
        "mask = \"mask.png\"\nmask_blur = 4\ninpainting_fill = \"latent nothing\"\n",
    ),
];

fn profile(pass1: &str, later: &str) -> Profile {
    let text = format!(
        r#"seed = 1234
prompt = "a photo of a cat"
cfg = 5.0
device = "cpu"
dtype = "fp32"
[model]
checkpoint = {checkpoint}
[[pass]]
width = 32
height = 32
steps = 6
sampler = "euler"
schedule = "normal"
init_image = "init.png"
denoise = 0.6
{pass1}
{later}"#,
        checkpoint = toml::Value::from(tiny_ldm().to_string_lossy().as_ref()),
    );
    Profile::parse(&text, "img2img.toml").unwrap()
}

const HIRES: &str = "[[pass]]\nscale = 2.0\nupscaler = \"latent\"\nsteps = 4\ndenoise = 0.5\n";

/// The latent error allowed where `masking.fill` paints the masked pixels.
const FILL_BOUND: f64 = 5e-3; // measured 7.7e-4

fn plan(mask: bool, blur: u32, resize_mode: ResizeMode) -> Img2ImgPlan {
    Img2ImgPlan {
        init_image: data().join("init.png"),
        mask: mask.then(|| data().join("mask.png")),
        mask_blur: blur,
        mask_invert: false,
        fill: InpaintingFill::Original,
        full_res: false,
        padding: 32,
        resize_mode,
        mask_weight: 1.0,
        requested_steps: 6,
    }
}

#[test]
fn the_encoded_pixels_and_latent_masks_are_a1111s_exactly() {
    let r = reference();
    for (name, mask, blur, mode) in [
        ("plain", false, 0, ResizeMode::JustResize),
        ("crop", false, 0, ResizeMode::CropAndResize),
        ("masked_blur0", true, 0, ResizeMode::JustResize),
        ("masked_blur4", true, 4, ResizeMode::JustResize),
    ] {
        let px = pixels(&plan(mask, blur, mode), 32, 32).unwrap();
        let want = Vec::<u8>::try_from(r[&format!("{name}.pixels")].flatten(0, -1)).unwrap();
        let diff = px
            .image
            .data
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!(
            diff,
            0,
            "{name}: {diff} of {} samples differ from PIL",
            want.len()
        );
        if mask {
            let ours = mask::latent_mask(px.mask.as_ref().unwrap(), 16, 16);
            let want = Vec::<f32>::try_from(r[&format!("{name}.nmask")].flatten(0, -1)).unwrap();
            assert_eq!(ours, want, "{name} latent mask");
            assert!(want.contains(&1.0) && want.contains(&0.0));
        }
    }
}

#[test]
fn masking_fill_paints_within_a_few_levels_of_pil() {
    let r = reference();
    let mut p = plan(true, 4, ResizeMode::JustResize);
    p.fill = InpaintingFill::LatentNothing;
    let px = pixels(&p, 32, 32).unwrap();
    let want = Vec::<u8>::try_from(r["masked_nothing.pixels"].flatten(0, -1)).unwrap();
    let worst = px
        .image
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| a.abs_diff(*b))
        .max()
        .unwrap();
    let mean = px
        .image
        .data
        .iter()
        .zip(&want)
        .map(|(a, b)| f64::from(a.abs_diff(*b)))
        .sum::<f64>()
        / want.len() as f64;
    eprintln!("masking.fill: worst {worst} levels, mean {mean:.3}");
    assert!(worst <= 8 && mean < 1.0, "worst {worst}, mean {mean}");
}

#[test]
fn img2img_and_masked_img2img_latents_match_the_a1111_transcription() {
    let registry = Registry::load(&[], &Default::default());
    let r = reference();
    for (name, keys) in CASES {
        let mut job = prepare(profile(keys, ""), &registry, &data()).unwrap();
        assert_eq!(job.plans[0].steps, 4, "t_enc + 1, t_enc = int(0.6 * 6)");
        let (_, info) = job
            .models
            .get(&job.settings, &job.plans[0].checkpoint, None, &[])
            .unwrap();
        let table = ModelSigmas::new(info.sigmas.to_vec()).unwrap();
        let sigmas = Tensor::from_slice(&pass_sigmas(&job.plans[0], &table).unwrap());
        assert!(
            rel_err(&sigmas, &r[&format!("{name}.sigmas")]) < 1e-6,
            "{name} sigmas"
        );
        let result = job.run_image(1234).unwrap();
        let e = rel_err(&result.latents[0], &r[&format!("{name}.latent")]);
        eprintln!("{name}: latent {e:.2e}");
        // "latent nothing" encodes pixels painted by `masking.fill`, which PIL blurs in 8-bit
        // fixed point and hiresfix in floating point (README): the levels differ a little.
        let bound = match name {
            "masked_nothing" => FILL_BOUND,
            _ => 1e-4,
        };
        assert!(e < bound, "{name}: {e}");
        assert_eq!(
            result.overlay.is_some(),
            name.starts_with("masked"),
            "{name}"
        );
    }
}

#[test]
fn img2img_then_a_hires_pass_matches_and_its_infotext_has_both_passes() {
    let registry = Registry::load(&[], &Default::default());
    let r = reference();
    let mut job = prepare(profile("", HIRES), &registry, &data()).unwrap();
    let result = job.run_image(1234).unwrap();
    let e1 = rel_err(&result.latents[0], &r["plain.latent"]);
    let e2 = rel_err(&result.latents[1], &r["hires.latent2"]);
    eprintln!("img2img + hires: pass 1 {e1:.2e}, pass 2 {e2:.2e}");
    assert!(e1 < 1e-4 && e2 < 1e-4, "{e1} {e2}");

    // The binary: a profile beside its init image, relative paths.
    let scratch = Scratch::new("img2img-hires");
    std::fs::copy(data().join("init.png"), scratch.path("init.png")).unwrap();
    std::fs::copy(data().join("mask.png"), scratch.path("mask.png")).unwrap();
    let text = tiny_profile(
        &tiny_ldm(),
        "",
        "init_image = \"init.png\"\nmask = \"mask.png\"\ndenoise = 0.6\n",
        "",
    );
    let out = generate_as(&scratch, "i2i", &text);
    assert!(out.status.success(), "{}", stderr(&out));
    let png = scratch.path("i2i.png");
    let parameters = chunk(&png, "parameters");
    for want in [
        "Steps: 3,",
        "Size: 32x32",
        "Denoising strength: 0.6,",
        "Mask blur: 4,",
        "Hires upscale: 2,",
        "Hires steps: 2,",
        "Hires denoising strength: 0.5,",
    ] {
        assert!(parameters.contains(want), "{want} not in {parameters}");
    }
    let (w, h, _) = hiresfix::png_pixels::read_rgb8(&png).unwrap();
    assert_eq!((w, h), (64, 64));
    // Imported, the hires pass gets its own strength, not pass 1's.
    let imported = hiresfix::import::from_parameters(&parameters, &registry).unwrap();
    assert_eq!(imported.profile.passes[1].denoise, Some(0.5));
}

#[test]
fn the_unmasked_part_of_the_written_image_is_the_init_image() {
    // Pass 1 only, masked: outside the (blurred, doubled) mask the overlay puts the init
    // image's pixels back, resized as it was encoded.
    let scratch = Scratch::new("img2img-overlay");
    std::fs::copy(data().join("init.png"), scratch.path("init.png")).unwrap();
    std::fs::copy(data().join("mask.png"), scratch.path("mask.png")).unwrap();
    let text = format!(
        "seed = 3\nprompt = \"a cat\"\ndevice = \"cpu\"\n[model]\ncheckpoint = \"{}\"\n[[pass]]\nwidth = 32\nheight = 32\nsteps = 4\ninit_image = \"init.png\"\nmask = \"mask.png\"\nmask_blur = 0\ndenoise = 0.9\n",
        tiny_ldm().display()
    );
    let out = generate_as(&scratch, "o", &text);
    assert!(out.status.success(), "{}", stderr(&out));
    let (w, h, rgb) = hiresfix::png_pixels::read_rgb8(&scratch.path("o.png")).unwrap();
    let px = pixels(&plan(true, 0, ResizeMode::JustResize), 32, 32).unwrap();
    let m = px.mask.unwrap();
    let (mut kept, mut changed) = (0, 0);
    for i in 0..(w * h) as usize {
        let same = rgb[i * 3..i * 3 + 3] == px.image.data[i * 3..i * 3 + 3];
        match m.data[i] {
            0 => {
                assert!(same, "pixel {i} outside the mask changed");
                kept += 1;
            }
            _ => changed += usize::from(!same),
        }
    }
    assert!(kept > 500 && changed > 50, "kept {kept}, changed {changed}");
}

#[test]
fn only_masked_pastes_back_into_an_image_of_the_init_size_and_latent_upscale_runs() {
    let scratch = Scratch::new("img2img-only-masked");
    std::fs::copy(data().join("init.png"), scratch.path("init.png")).unwrap();
    std::fs::copy(data().join("mask.png"), scratch.path("mask.png")).unwrap();
    let profile = |keys: &str| {
        format!(
            "seed = 3\nprompt = \"a cat\"\ndevice = \"cpu\"\n[model]\ncheckpoint = \"{}\"\n[[pass]]\nwidth = 32\nheight = 32\nsteps = 3\ninit_image = \"init.png\"\n{keys}",
            tiny_ldm().display()
        )
    };
    // "Only masked", padding 2, no blur: the mask's box (14..30 x 6..18) grown by 2 and to the
    // pass's square shape is generated; everything outside it is the init image's.
    let keys = "mask = \"mask.png\"\nmask_blur = 0\ninpaint_full_res = true\ninpaint_full_res_padding = 2\n";
    let out = generate_as(&scratch, "om", &profile(keys));
    assert!(out.status.success(), "{}", stderr(&out));
    let (w, h, rgb) = hiresfix::png_pixels::read_rgb8(&scratch.path("om.png")).unwrap();
    assert_eq!((w, h), (40, 24), "the init image's size");
    let (_, _, init) = hiresfix::png_pixels::read_rgb8(&data().join("init.png")).unwrap();
    let region = mask::expand_crop_region([12, 4, 32, 20], 32, 32, 40, 24);
    assert_eq!(region, [12, 2, 32, 22]);
    let mut inside_changed = 0;
    for y in 0..24 {
        for x in 0..40 {
            let i = (y * 40 + x) * 3;
            let same = rgb[i..i + 3] == init[i..i + 3];
            let in_mask = (14..30).contains(&x) && (6..18).contains(&y);
            if !in_mask {
                assert!(same, "({x}, {y}) outside the mask changed");
            } else if !same {
                inside_changed += 1;
            }
        }
    }
    assert!(
        inside_changed > 100,
        "{inside_changed} masked pixels changed"
    );
    let parameters = chunk(&scratch.path("om.png"), "parameters");
    assert!(
        parameters.contains("Inpaint area: Only masked, Masked area padding: 2"),
        "{parameters}"
    );

    // "latent upscale": the 40x24 image encoded at its own size, the latent resized.
    let out = generate_as(
        &scratch,
        "lu",
        &profile("resize_mode = \"latent upscale\"\n"),
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (w, h, _) = hiresfix::png_pixels::read_rgb8(&scratch.path("lu.png")).unwrap();
    assert_eq!((w, h), (32, 32));
}

/// A 9-channel inpainting checkpoint's image conditioning, built on the tiny model's VAE
/// (the UNet that reads it is the SD plugin's): `[B, 5, h, w]`, the rounded mask resized
/// nearest, then the encoded `image * (1 - mask)` at weight 1 and the plain image at 0.
#[test]
fn the_inpainting_conditioning_is_the_mask_then_the_encoded_masked_image() {
    let registry = Registry::load(&[], &Default::default());
    let mut job = prepare(
        profile("mask = \"mask.png\"\nmask_blur = 0\n", ""),
        &registry,
        &data(),
    )
    .unwrap();
    let (model, _) = job
        .models
        .get(&job.settings, &job.plans[0].checkpoint, None, &[])
        .unwrap();
    let size = job.sizes[0];
    let noise = Tensor::zeros([2, 4, 16, 16], (Kind::Float, host_api::tch::Device::Cpu));
    for weight in [1.0, 0.0] {
        let mut p = plan(true, 0, ResizeMode::JustResize);
        p.mask_weight = weight;
        let cpu = host_api::tch::Device::Cpu;
        let start = hiresfix::img2img::start(&p, &model, &size, &noise, true, cpu).unwrap();
        let concat = start.concat.unwrap();
        assert_eq!(concat.size(), vec![2, 5, 16, 16]);
        let px = pixels(&p, 32, 32).unwrap();
        let m = px.mask.as_ref().unwrap();
        // Nearest from 32 to 16: every other pixel, rounded.
        let want_mask: Vec<f32> = (0..16)
            .flat_map(|y| (0..16).map(move |x| (y, x)))
            .map(|(y, x)| (f32::from(m.at(2 * x, 2 * y, 0)) / 255.0).round())
            .collect();
        let got_mask = Vec::<f32>::try_from(concat.get(1).get(0).flatten(0, -1)).unwrap();
        assert_eq!(got_mask, want_mask);
        let source = hiresfix::img2img::to_tensor(&px.image);
        let pm = hiresfix::img2img::concat::pixel_mask(m);
        let masked = match weight {
            1.0 => &source * (1.0 - &pm),
            _ => source.shallow_clone(),
        };
        let want = model.encode(&masked).unwrap();
        let e = rel_err(&concat.narrow(1, 1, 4).get(0).unsqueeze(0), &want);
        assert!(e < 1e-5, "weight {weight}: {e}"); // lerp rounds apart from a plain product
    }
}
