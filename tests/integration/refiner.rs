//! The SDXL refiner (A1111's `refiner_checkpoint` / `refiner_switch_at`): a hires-fix run whose
//! pass 1 hands its last 20 % to the tiny refiner equals diffusers' base (`denoising_end`) →
//! refiner (`denoising_start`) hand-off over the same sigmas, then a hires pass on the base;
//! the refiner's own conditioning (bigG only, aesthetic scores 6.0 / 2.5) equals diffusers';
//! the PNG says `Refiner: name [hash], Refiner switch at: 0.8`, and importing it restores the
//! refiner. Reference: scripts/make_refiner_reference.py.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::tensors::{read_reference, rel_err};
use crate::common::*;
use hiresfix::generate::prepare;
use hiresfix::import::from_parameters;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::Tensor;
use host_api::EncodeRequest;

fn data(rel: &str) -> PathBuf {
    repo().join("tests/data").join(rel)
}

fn base() -> PathBuf {
    data("sdxl-tiny/sdxl-tiny.safetensors")
}

fn refiner() -> PathBuf {
    data("sdxl-refiner-tiny/sdxl-refiner-tiny.safetensors")
}

fn reference() -> (HashMap<String, Tensor>, serde_json::Value) {
    let dir = data("sdxl-refiner-tiny");
    let json = std::fs::read_to_string(dir.join("reference.json")).unwrap();
    (
        read_reference(&dir.join("reference.safetensors")),
        serde_json::from_str(&json).unwrap(),
    )
}

/// The reference run as a profile; `refiner_lines` go into pass 1.
fn profile_text(settings: &serde_json::Value, refiner_lines: &str) -> String {
    let s = |k: &str| settings[k].as_str().unwrap();
    reference_profile(
        (s("prompt"), s("negative_prompt"), &base()),
        (48, 32, 10),
        &format!("sampler = \"euler\"\n{refiner_lines}"),
        "upscaler = \"latent\"\nsampler = \"euler\"",
    )
}

/// The refiner as a diffusers folder (its unet; bigG and VAE linked to sdxl-tiny's).
fn refiner_diffusers() -> PathBuf {
    data("sdxl-refiner-tiny/diffusers")
}

fn refiner_lines_for(refiner: &Path) -> String {
    format!(
        "refiner_checkpoint = {}\nrefiner_switch_at = 0.8",
        toml::Value::from(refiner.to_string_lossy().as_ref())
    )
}

fn refiner_lines() -> String {
    refiner_lines_for(&refiner())
}

#[test]
fn a_pass_handed_to_the_refiner_at_0_8_matches_diffusers_denoising_end_and_start() {
    let (r, json) = reference();
    let settings = &json["settings"];
    assert_eq!(
        settings["base_steps"], 8,
        "the reference switches after 8 of 10 steps"
    );
    let registry = Registry::load(&[], &Default::default());
    for refiner in [refiner(), refiner_diffusers()] {
        let text = profile_text(settings, &refiner_lines_for(&refiner));
        let mut job = prepare(
            Profile::parse(&text, "refiner").unwrap(),
            &registry,
            &repo(),
        )
        .unwrap();
        let result = job.run_image(1234).unwrap();
        let e1 = rel_err(&result.latents[0], &r["run.latent1"]);
        let e2 = rel_err(&result.latents[1], &r["run.latent2"]);
        let shown = refiner.display();
        eprintln!("base → refiner {shown}: pass 1 {e1:.2e}, pass 2 {e2:.2e}");
        assert!(e1 < 1e-4 && e2 < 1e-4, "{shown}: pass 1 {e1}, pass 2 {e2}");
    }

    // The refiner did run: the base alone lands elsewhere.
    let profile = Profile::parse(&profile_text(settings, ""), "base").unwrap();
    let mut job = prepare(profile, &registry, &repo()).unwrap();
    let alone = job.run_image(1234).unwrap();
    let apart = rel_err(&alone.latents[0], &r["run.latent1"]);
    assert!(
        apart > 1e-2,
        "the base alone is {apart} from the refined latent"
    );
}

#[test]
fn the_refiner_conditions_on_bigg_alone_and_a1111s_aesthetic_scores() {
    let (r, json) = reference();
    let settings = &json["settings"];
    let registry = Registry::load(&[], &Default::default());
    let profile = Profile::parse(&profile_text(settings, ""), "refiner").unwrap();
    let mut job = prepare(profile, &registry, &repo()).unwrap();
    let (model, _) = job
        .models
        .get(&job.settings, &refiner(), None, &[])
        .unwrap();
    let prompt = settings["prompt"].as_str().unwrap();
    let negative = settings["negative_prompt"].as_str().unwrap();
    let conds = model
        .encode_prompts(&EncodeRequest::pair(negative, prompt, 1, 48, 32))
        .unwrap();
    // The reference holds the prompt's row, then the negative's.
    let (neg, pos) = (&conds[0], &conds[1]);
    let context = Tensor::cat(&[&pos[0], &neg[0]], 0);
    let vector = Tensor::cat(&[&pos[1], &neg[1]], 0);
    let (ec, ev) = (
        rel_err(&context, &r["refiner.context"]),
        rel_err(&vector, &r["refiner.vector"]),
    );
    assert!(ec < 1e-5 && ev < 1e-5, "context {ec}, vector {ev}");
}

#[test]
fn the_png_names_the_refiner_and_importing_it_restores_it() {
    let (_, json) = reference();
    let scratch = Scratch::new("refiner-png");
    let text = profile_text(&json["settings"], &refiner_lines());
    let out = generate_as(&scratch, "refined", &text);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let parameters = chunk(&scratch.path("refined.png"), "parameters");
    let hash = hiresfix::parameters::model_hash(&refiner()).unwrap();
    for field in [
        format!("Refiner: sdxl-refiner-tiny [{hash}]"),
        "Refiner switch at: 0.8".to_owned(),
        "Hires refiner: first pass".to_owned(),
    ] {
        assert!(parameters.contains(&field), "{field} not in {parameters}");
    }
    // A switch past every call's timestep (the last, t = 0, is 0.999 done) never hands over:
    // no refiner fields (A1111).
    let late = text.replace("refiner_switch_at = 0.8", "refiner_switch_at = 0.9999");
    let out = generate_as(&scratch, "late", &late);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let unrefined = chunk(&scratch.path("late.png"), "parameters");
    assert!(!unrefined.contains("Refiner"), "{unrefined}");

    let registry = Registry::load(&[], &Default::default());
    let imported = from_parameters(&parameters, &registry).unwrap();
    let first = &imported.profile.passes[0];
    assert_eq!(
        first.refiner_checkpoint.as_deref(),
        Some("sdxl-refiner-tiny.safetensors")
    );
    assert_eq!(first.refiner_switch_at, Some(0.8));
    assert_eq!(imported.profile.passes[1].refiner_checkpoint, None);
    assert!(
        imported
            .unmapped
            .iter()
            .any(|u| u.starts_with("Refiner: sdxl-refiner-tiny [")),
        "{:?}",
        imported.unmapped
    );
    // A1111's default: with hires fix and no `Hires refiner`, the refiner ran in pass 2.
    let a1111 = "a cat\nSteps: 10, Sampler: Euler, Seed: 1, Size: 64x64, Denoising strength: 0.5, Hires upscale: 2, Refiner: base_refiner [0123456789], Refiner switch at: 0.7";
    let imported = from_parameters(a1111, &registry).unwrap();
    assert_eq!(imported.profile.passes[0].refiner_checkpoint, None);
    assert_eq!(
        imported.profile.passes[1].refiner_checkpoint.as_deref(),
        Some("base_refiner.safetensors")
    );
    assert_eq!(imported.profile.passes[1].refiner_switch_at, Some(0.7));
}

#[test]
fn a_refiner_of_another_latent_space_is_refused_before_anything_runs() {
    let (_, json) = reference();
    let scratch = Scratch::new("refiner-family");
    let sd1 = toml::Value::from(tiny_ldm().to_string_lossy().as_ref());
    let text = profile_text(&json["settings"], &format!("refiner_checkpoint = {sd1}"));
    let out = generate_as(&scratch, "mixed", &text);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("pass 1: refiner_checkpoint")
            && err.contains("is sd1 but the pass's")
            && err.contains("SDXL ↔ SDXL refiner"),
        "{err}"
    );
    assert!(!scratch.path("mixed.png").exists());
}

/// `check`'s memory table counts the refiner's weights in the pass that holds it.
#[test]
fn check_counts_the_refiners_weights_in_its_pass() {
    let (_, json) = reference();
    let scratch = Scratch::new("refiner-check");
    let path = scratch.write(
        "refined.toml",
        &profile_text(&json["settings"], &refiner_lines()),
    );
    let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{text}{}", stderr(&out));
    let weights = |pass: &str| -> f64 {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(pass))
            .unwrap_or_else(|| panic!("no pass {pass} row in {text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[3], "MiB", "{row}");
        cells[2].parse().unwrap()
    };
    assert!(
        text.contains("pass 1: refiner ")
            && text
                .contains("sdxl-refiner-tiny.safetensors (sdxl-refiner) from 0.8 of the schedule"),
        "{text}"
    );
    // Pass 1 holds the base and the refiner, pass 2 the base alone.
    assert!(weights("1") > weights("2") * 1.5, "{text}");
}
