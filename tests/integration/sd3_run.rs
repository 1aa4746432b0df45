//! SD 3.5 through the host: the tiny pipeline of scripts/make_sd3_reference.py in a full 2-pass
//! run (Euler, `normal` schedule — for a flow model diffusers' FlowMatchEuler sigmas — 6 steps
//! at 32 px, then latent (bilinear) ×2 and 4 steps at denoise 0.5, CFG 5, seed 1234) from the
//! diffusers folder, the single file and ComfyUI-style split files (`[model] text_encoders`,
//! `vae`, `t5_tokenizer`), against diffusers' StableDiffusion3Pipeline /
//! StableDiffusion3Img2ImgPipeline run (reference.safetensors `run.*`).
use std::collections::HashMap;
use std::path::PathBuf;

use crate::common::tensors::rel_err;
use crate::common::*;
use hiresfix::generate::prepare;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::Tensor;

fn data() -> PathBuf {
    repo().join("tests/data/sd3-tiny")
}

/// Checkpoint and the extra `[model]` lines of each layout.
fn layouts() -> Vec<(&'static str, PathBuf, String)> {
    let (d, split) = (data(), data().join("split"));
    let q = |p: PathBuf| toml::Value::from(p.to_string_lossy().as_ref()).to_string();
    let tokenizer = format!("t5_tokenizer = {}\n", q(d.join("diffusers/tokenizer_3")));
    let encoders: Vec<String> = ["clip_l", "clip_g", "t5xxl"]
        .iter()
        .map(|n| q(split.join(format!("{n}.safetensors"))))
        .collect();
    vec![
        ("folder", d.join("diffusers"), String::new()),
        (
            "single file",
            d.join("sd3-tiny.safetensors"),
            tokenizer.clone(),
        ),
        (
            "split files",
            split.join("transformer.safetensors"),
            format!(
                "{tokenizer}vae = {}\ntext_encoders = [{}]\n",
                q(split.join("vae.safetensors")),
                encoders.join(", ")
            ),
        ),
    ]
}

#[test]
fn sd3_two_pass_runs_through_the_host_match_diffusers_in_every_layout() {
    let r: HashMap<String, Tensor> = Tensor::read_safetensors(data().join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let registry = Registry::load(&[], &Default::default());
    for (label, checkpoint, model_lines) in layouts() {
        let text = reference_profile(
            ("a photo of a cat", "blurry", &checkpoint),
            (32, 32, 6),
            "sampler = \"euler\"",
            "upscaler = \"latent\"\nsampler = \"euler\"",
        )
        .replacen("[model]\n", &format!("[model]\n{model_lines}"), 1);
        let profile = Profile::parse(&text, "sd3").unwrap();
        let mut job = prepare(profile, &registry, &repo()).unwrap();
        let (model, info) = job
            .models
            .get(
                &job.settings,
                &job.plans[0].checkpoint,
                job.plans[0].vae.as_deref(),
                &[],
            )
            .unwrap();
        assert_eq!(info.family.as_str(), "sd3", "{label}");
        let result = job.run_image(1234).unwrap();
        let e1 = rel_err(&result.latents[0], &r["run.latent1"]);
        let e2 = rel_err(&result.latents[1], &r["run.latent2"]);
        let image = ((model.decode(&result.latents[1]).unwrap() + 1.0) / 2.0).clamp(0.0, 1.0);
        let e3 = rel_err(&image, &r["run.image"]);
        eprintln!("sd3 {label}: pass 1 {e1:.2e}, pass 2 {e2:.2e}, image {e3:.2e}");
        assert!(
            e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4,
            "{label}: {e1} {e2} {e3}"
        );
    }
}
