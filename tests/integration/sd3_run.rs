//! SD 3.5 through the host: the tiny pipeline of scripts/make_sd3_reference.py in a full 2-pass
//! run (Euler, `normal` schedule — for a flow model diffusers' FlowMatchEuler sigmas — 6 steps
//! at 32 px, then latent (bilinear) ×2 and 4 steps at denoise 0.5, CFG 5, seed 1234) from the
//! diffusers folder, the single file and ComfyUI-style split files (`[model] text_encoders`,
//! `vae`, `t5_tokenizer`), against diffusers' StableDiffusion3Pipeline /
//! StableDiffusion3Img2ImgPipeline run (reference.safetensors `run.*`); and two variants of its
//! pass 2 (extras.safetensors, `make_sd3_reference.py --extras`): the pixel path on 16-channel
//! latents (decode → Lanczos → encode), and a pass-2 prompt of its own in a one-shot run that
//! frees the text encoders once that prompt is encoded.
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

fn tensors(file: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data().join(file))
        .unwrap()
        .into_iter()
        .collect()
}

/// The reference 2-pass profile on the diffusers folder with `pass2` lines added to pass 2.
fn folder_profile(pass2: &str) -> Profile {
    let text = reference_profile(
        ("a photo of a cat", "blurry", &data().join("diffusers")),
        (32, 32, 6),
        "sampler = \"euler\"",
        &format!("sampler = \"euler\"\n{pass2}"),
    );
    Profile::parse(&text, "sd3").unwrap()
}

#[test]
fn sd3_pixel_upscaler_hands_over_through_the_vae_as_done_by_hand() {
    let (r, x) = (
        tensors("reference.safetensors"),
        tensors("extras.safetensors"),
    );
    let registry = Registry::load(&[], &Default::default());
    let mut job = prepare(folder_profile("upscaler = \"Lanczos\""), &registry, &repo()).unwrap();
    let result = job.run_image(1234).unwrap();
    // 64 px through the tiny VAE's factor 2: a 16-channel 32×32 latent.
    assert_eq!(result.latents[1].size(), [1, 16, 32, 32]);
    let e1 = rel_err(&result.latents[0], &r["run.latent1"]);
    let e2 = rel_err(&result.latents[1], &x["pixel.latent2"]);
    // The same pass 2 from the latent path's bilinear upscale, to show the two differ.
    let apart = rel_err(&x["pixel.latent2"], &r["run.latent2"]);
    eprintln!(
        "sd3 pixel path: pass 1 {e1:.2e}, pass 2 {e2:.2e} (latent path's pass 2 {apart:.2e} away)"
    );
    assert!(e1 < 1e-4 && e2 < 1e-4, "{e1} {e2}");
    assert!(apart > 1e-2, "{apart}");
}

#[test]
fn sd3_one_shot_run_frees_the_text_encoders_after_pass_2_encodes_its_own_prompt() {
    let x = tensors("extras.safetensors");
    let registry = Registry::load(&[], &Default::default());
    let profile = folder_profile("upscaler = \"latent\"\nprompt = \"a photo of a dog\"");
    let mut job = prepare(profile, &registry, &repo()).unwrap();
    let (model, _) = job
        .models
        .get(&job.settings, &job.plans[0].checkpoint, None, &[])
        .unwrap();
    // As `generate` runs a single image: its last pass frees the text encoders once encoded.
    job.models.final_image = true;
    let result = job.run_image(1234).unwrap();
    job.models.final_image = false;
    let e2 = rel_err(&result.latents[1], &x["prompt2.latent2"]);
    eprintln!("sd3 pass-2 prompt, encoders freed: pass 2 {e2:.2e}");
    assert!(e2 < 1e-4, "{e2}");
    let request = host_api::EncodeRequest::pair("blurry", "a photo of a cat", 1, 32, 32);
    let refused = model.encode_prompts(&request).err().map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|m| m.contains("freed")),
        "{refused:?}"
    );
    // Then all but the VAE decoder: the final decode is unchanged.
    let image = model.decode(&result.latents[1]).unwrap();
    job.models.release_for_decode();
    assert!(model.decode(&result.latents[1]).unwrap().equal(&image));
    // A conditioning of the tiny model's shapes: 77 + 256 tokens 96 wide, pooled 32 + 48.
    let opts = (host_api::tch::Kind::Float, host_api::tch::Device::Cpu);
    let cond = [
        Tensor::zeros([1, 333, 96], opts),
        Tensor::zeros([1, 80], opts),
    ];
    let x0 = model
        .denoise(&result.latents[1], 0.5, &[cond.as_slice()])
        .err()
        .map(|e| e.to_string());
    assert!(x0.as_deref().is_some_and(|m| m.contains("freed")), "{x0:?}");
}

/// A prompt of two CLIP chunks against a one-chunk negative: their conditionings differ in
/// length, so each goes through its own transformer call (A1111's default), and the 2-pass run
/// matches the same done with diffusers' parts (extras `long.*`).
#[test]
fn sd3_two_chunk_prompt_against_a_one_chunk_negative_matches_the_reference() {
    let x = tensors("extras.safetensors");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data().join("extras.json")).unwrap())
            .unwrap();
    let prompt = json["settings"]["long_prompt"].as_str().unwrap();
    let text = reference_profile(
        (prompt, "blurry", &data().join("diffusers")),
        (32, 32, 6),
        "sampler = \"euler\"",
        "sampler = \"euler\"\nupscaler = \"latent\"",
    );
    let registry = Registry::load(&[], &Default::default());
    let mut job = prepare(Profile::parse(&text, "sd3").unwrap(), &registry, &repo()).unwrap();
    let result = job.run_image(1234).unwrap();
    let e1 = rel_err(&result.latents[0], &x["long.latent1"]);
    let e2 = rel_err(&result.latents[1], &x["long.latent2"]);
    eprintln!("sd3 two-chunk prompt: pass 1 {e1:.2e}, pass 2 {e2:.2e}");
    assert!(e1 < 1e-4 && e2 < 1e-4, "{e1} {e2}");
}
