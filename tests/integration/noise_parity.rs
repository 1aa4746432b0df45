//! A1111's variation seeds and step noise against a transcription of its `rng.py`
//! (scripts/make_noise_reference.py): the initial noise of seed + subseed slerped by the
//! strength, with `seed_resize_from`, batches, and the step draws (`ImageRNG.next`); and an
//! imported infotext's seed fields carried through `generate` into the new image's infotext.
use std::collections::HashMap;

use crate::common::*;
use hiresfix::noise::{batch_noise, initial_noise, ImageSeeds, StepNoise, Variation};
use hiresfix::output::{encode_png, read_rgb8};
use hiresfix::profile::Profile;
use host_api::tch::{Kind, Tensor};

const TOLERANCE: f64 = 1e-6;

fn reference() -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = repo().join("tests/data/noise");
    let tensors = Tensor::read_safetensors(dir.join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let json = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    (tensors, serde_json::from_str(&json).unwrap())
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from(
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max(),
    )
    .unwrap()
}

/// A reference case's images, variation settings, delta and per-image shape.
struct Case {
    images: Vec<ImageSeeds>,
    variation: Variation,
    delta: i64,
    shape: Vec<i64>,
}

fn case(json: &serde_json::Value) -> Case {
    let ints = |key: &str| -> Vec<i64> {
        json[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let (seeds, subseeds) = (ints("seeds"), ints("subseeds"));
    Case {
        images: seeds
            .iter()
            .zip(&subseeds)
            .map(|(&seed, &subseed)| ImageSeeds { seed, subseed })
            .collect(),
        variation: Variation {
            strength: json["subseed_strength"].as_f64().unwrap(),
            resize_from: (
                json["seed_resize_from_w"].as_u64().unwrap() as u32,
                json["seed_resize_from_h"].as_u64().unwrap() as u32,
            ),
        },
        delta: json["eta_noise_seed_delta"].as_i64().unwrap(),
        shape: ints("shape"),
    }
}

#[test]
fn initial_noise_with_variation_seeds_matches_a1111() {
    let (r, json) = reference();
    let cases = json["cases"].as_object().unwrap();
    assert_eq!(cases.len(), 8);
    for (name, settings) in cases {
        let c = case(settings);
        let ours = batch_noise(&c.images, &c.variation, &c.shape);
        let err = max_abs(&ours, &r[&format!("{name}.initial")]);
        eprintln!("{name}: initial noise max |diff| {err:.2e}");
        assert!(err <= TOLERANCE, "{name}: {err}");
    }
    // The strength-0.3 case is not the seed's plain noise, nor the subseed's.
    let varied = &r["variation.initial"];
    for seed in [1234, 5678] {
        let plain = initial_noise(seed, &[4, 12, 10]).unsqueeze(0);
        assert!(max_abs(varied, &plain) > 0.1, "seed {seed}");
    }
    // Strength 1 is the subseed's noise (slerp's end point).
    let full = initial_noise(5678, &[4, 8, 8]).unsqueeze(0);
    assert!(max_abs(&r["full_subseed.initial"], &full) < 1e-5);
}

#[test]
fn step_noise_continues_each_images_generator_as_a1111() {
    let (r, json) = reference();
    let steps = json["step_draws"].as_u64().unwrap() as usize;
    for (name, settings) in json["cases"].as_object().unwrap() {
        let c = case(settings);
        let mut latent_shape = vec![c.images.len() as i64];
        latent_shape.extend(&c.shape);
        let like = Tensor::zeros(
            latent_shape.as_slice(),
            (Kind::Float, host_api::tch::Device::Cpu),
        );
        // The initial noise is drawn first, as a pass does.
        let _ = batch_noise(&c.images, &c.variation, &c.shape);
        let mut stream = StepNoise::new(&c.images, c.delta, &c.shape, 1);
        for k in 0..steps {
            let err = max_abs(&stream.next_like(&like), &r[&format!("{name}.step{k}")]);
            assert!(err <= TOLERANCE, "{name} draw {k}: {err}");
        }
    }
}

/// `replay --to-profile` of an infotext with A1111's seed fields, then `generate`: the new
/// image's infotext carries them, and the variation changed the image.
#[test]
fn imported_variation_seed_fields_survive_generate() {
    let scratch = Scratch::new("noise-import");
    let text = "a photo of a cat\nNegative prompt: blurry\n\
Steps: 3, Sampler: Euler, CFG scale: 5, Seed: 7, Size: 32x32, Model: tiny, \
Variation seed: 5, Variation seed strength: 0.3, Seed resize from: 512x512";
    let png = encode_png(8, 8, &[0; 8 * 8 * 3], text, "", None).unwrap();
    std::fs::write(scratch.path("a1111.png"), png).unwrap();
    let out = hiresfix(&scratch.0, &["replay", "--to-profile", "a1111.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let imported = String::from_utf8_lossy(&out.stdout).into_owned();
    let notes = stderr(&out);
    assert!(
        !notes.contains("Variation") && !notes.contains("Seed resize"),
        "{notes}"
    );
    let mut profile = Profile::parse(&imported, "imported").unwrap();
    assert_eq!(
        (profile.subseed, profile.subseed_strength),
        (5, 0.3),
        "{imported}"
    );
    assert_eq!(
        (profile.seed_resize_from_w, profile.seed_resize_from_h),
        (512, 512)
    );
    profile.device = Profile::parse("device = \"cpu\"", "cpu").unwrap().device;
    profile.model.checkpoint = Some(tiny_ldm().to_string_lossy().into_owned());
    let model = toml::to_string(&profile).unwrap();
    let varied = generate_as(&scratch, "varied", &model);
    assert!(varied.status.success(), "{}\n{model}", stderr(&varied));
    let parameters = chunk(&scratch.path("varied.png"), "parameters");
    let params = hiresfix::infotext::parse(&parameters);
    assert_eq!(params.get("Seed"), Some("7"), "{parameters}");
    assert_eq!(params.get("Variation seed"), Some("5"), "{parameters}");
    assert_eq!(
        params.get("Variation seed strength"),
        Some("0.3"),
        "{parameters}"
    );
    assert_eq!(
        params.get("Seed resize from"),
        Some("512x512"),
        "{parameters}"
    );
    // The same profile without the variation makes another image.
    profile.subseed_strength = 0.0;
    (profile.seed_resize_from_w, profile.seed_resize_from_h) = (0, 0);
    let plain_profile = toml::to_string(&profile).unwrap();
    let plain = generate_as(&scratch, "plain", &plain_profile);
    assert!(plain.status.success(), "{}", stderr(&plain));
    let plain_params = chunk(&scratch.path("plain.png"), "parameters");
    assert!(!plain_params.contains("Variation seed"), "{plain_params}");
    let (_, _, a) = read_rgb8(&scratch.path("varied.png")).unwrap();
    let (_, _, b) = read_rgb8(&scratch.path("plain.png")).unwrap();
    let differ = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    assert!(
        differ > a.len() / 10,
        "only {differ} of {} bytes differ",
        a.len()
    );
}

/// A1111's sampler knobs in an infotext become pass 1's `sampler_options` where its sampler has
/// them ("Eta" for Euler a, "Eta DDIM" for DDIM), and are reported where it has not.
#[test]
fn imported_sampler_knobs_become_sampler_options() {
    let registry = hiresfix::registry::Registry::load(&[], &Default::default());
    let import = |sampler: &str, knobs: &str| {
        let text = format!(
            "a cat\nSteps: 3, Sampler: {sampler}, CFG scale: 5, Seed: 7, Size: 32x32, {knobs}"
        );
        hiresfix::import::from_parameters(&text, &registry).unwrap()
    };
    let euler_a = import("Euler a", "Eta: 0.5, Sigma noise: 0.9");
    let options = &euler_a.profile.passes[0].sampler_options;
    assert_eq!(options.get("eta"), Some(&toml::Value::Float(0.5)));
    assert_eq!(options.get("s_noise"), Some(&toml::Value::Float(0.9)));
    assert!(euler_a.unmapped.is_empty(), "{:?}", euler_a.unmapped);
    let ddim = import("DDIM", "Eta DDIM: 0.3");
    let options = &ddim.profile.passes[0].sampler_options;
    assert_eq!(options.get("eta"), Some(&toml::Value::Float(0.3)));
    let euler = import("Euler", "Eta: 0.5, Sigma churn: 1.5");
    let options = &euler.profile.passes[0].sampler_options;
    assert_eq!(options.get("s_churn"), Some(&toml::Value::Float(1.5)));
    assert_eq!(options.get("eta"), None);
    assert!(
        euler
            .unmapped
            .iter()
            .any(|u| u.starts_with("Eta: 0.5") && u.contains("no eta option")),
        "{:?}",
        euler.unmapped
    );
}
