//! Parity with diffusers + k-diffusion: a full 2-pass txt2img + hires run with Euler, SPEC §4
//! slicing and noise, from both checkpoint formats. References: scripts/make_sd1_reference.py.
mod common;

use std::collections::HashMap;

use common::*;
use hiresfix::generate::prepare;
use hiresfix::noise::initial_noise;
use hiresfix::plan::pass_sigmas;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::{Kind, Tensor};
use host_api::ModelSigmas;

fn reference() -> HashMap<String, Tensor> {
    let path = repo().join("tests/data/sd1-tiny/reference.safetensors");
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// max |a - b| / max |b|
fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

fn hires_profile(checkpoint: &std::path::Path) -> Profile {
    let text = format!(
        r#"seed = 1234
prompt = "a photo of a cat"
negative = ""
cfg = 5.0
device = "cpu"
dtype = "fp32"
[model]
checkpoint = "{}"
[[pass]]
width = 32
height = 32
steps = 6
sampler = "euler"
schedule = "normal"
[[pass]]
scale = 2.0
upscaler = "latent"
steps = 4
denoise = 0.5
sampler = "euler"
schedule = "normal"
"#,
        checkpoint.display()
    );
    Profile::parse(&text, "parity").unwrap()
}

#[test]
fn initial_noise_matches_torch_manual_seed_randn() {
    let r = reference();
    assert_eq!(
        rel_err(
            &initial_noise(1234, &[4, 16, 16]).unsqueeze(0),
            &r["run.noise1"]
        ),
        0.0
    );
    assert_eq!(
        rel_err(
            &initial_noise(1234, &[4, 32, 32]).unsqueeze(0),
            &r["run.noise2"]
        ),
        0.0
    );
}

#[test]
fn two_pass_euler_run_matches_diffusers_from_both_formats() {
    let r = reference();
    let registry = Registry::load(&[], &Default::default());
    for checkpoint in [tiny_ldm(), tiny_diffusers()] {
        let mut job = prepare(hires_profile(&checkpoint), &registry, &repo()).unwrap();
        let (model, info) = job.models.get(&job.plans[0].checkpoint, None).unwrap();
        let table = ModelSigmas::new(info.sigmas.to_vec()).unwrap();
        for (i, key) in [(0, "run.sigmas1"), (1, "run.sigmas2")] {
            let ours = Tensor::from_slice(&pass_sigmas(&job.plans[i], &table).unwrap());
            assert!(
                rel_err(&ours, &r[key]) < 1e-6,
                "{key} from {}",
                checkpoint.display()
            );
        }
        let result = job.run_image(1234, true).unwrap();
        let e1 = rel_err(&result.latents[0], &r["run.latent1"]);
        let e2 = rel_err(&result.latents[1], &r["run.latent2"]);
        let image = ((model.decode(&result.latents[1]).unwrap() + 1.0) / 2.0).clamp(0.0, 1.0);
        let e3 = rel_err(&image, &r["run.image"]);
        eprintln!(
            "{}: pass 1 {e1:.2e}, pass 2 {e2:.2e}, image {e3:.2e}",
            checkpoint.display()
        );
        assert!(
            e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4,
            "{}: {e1} {e2} {e3}",
            checkpoint.display()
        );
    }
}

#[test]
fn png_pixels_match_the_reference_image_within_one_level() {
    let r = reference();
    let scratch = Scratch::new("parity-png");
    let mut profile = hires_profile(&tiny_ldm());
    profile.output = scratch.path("ref.png").to_string_lossy().into_owned();
    let registry = Registry::load(&[], &Default::default());
    let options = hiresfix::generate::RunOptions {
        quiet: true,
        output: None,
        base_dir: repo(),
    };
    let written = hiresfix::generate::generate(profile, &registry, &options).unwrap();
    let (w, h, px) = hiresfix::output::read_rgb8(&written[0]).unwrap();
    assert_eq!((w, h), (64, 64));
    let expected = Vec::<u8>::try_from(r["run.image_u8"].flatten(0, -1)).unwrap();
    let worst = px
        .iter()
        .zip(&expected)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "max pixel difference {worst}");
}
