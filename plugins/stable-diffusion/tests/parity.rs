//! Parity with the PyTorch reference (transformers / diffusers / k-diffusion, CPU fp32) in
//! `tests/data/sd1-tiny`, loading the model from both the single file and the diffusers folder.
use std::collections::HashMap;
use std::path::PathBuf;

use hiresfix_sd::Sd1Model;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/sd1-tiny")
}

fn reference() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data_dir().join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// The model loaded from each format, named.
fn both_formats() -> Vec<(&'static str, Sd1Model)> {
    let dir = data_dir();
    [
        ("single file", dir.join("sd1-tiny.safetensors")),
        ("diffusers", dir.join("diffusers")),
    ]
    .into_iter()
    .map(|(name, path)| {
        (
            name,
            Sd1Model::load(&path, None, Device::Cpu, Kind::Float).unwrap(),
        )
    })
    .collect()
}

/// max |a - b| / max |b|
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

fn assert_close(what: &str, format: &str, a: &Tensor, b: &Tensor, tolerance: f64) {
    let err = relative_error(a, b);
    eprintln!("{what:<22} {format:<12} relative error {err:.3e}");
    assert!(
        err <= tolerance,
        "{what} ({format}): relative error {err:e} > {tolerance:e}"
    );
}

#[test]
fn prompt_tokens_match_the_reference_exactly() {
    let r = reference();
    let tokenizer = hiresfix_sd::tokenizer::ClipTokenizer::new();
    for (prompt, key) in [
        ("a photo of a cat", "tokens.prompt"),
        ("", "tokens.negative"),
    ] {
        let chunks = tokenizer.chunks(prompt);
        assert_eq!(chunks.len(), 1);
        let expected = Vec::<i64>::try_from(r[key].flatten(0, -1)).unwrap();
        assert_eq!(chunks[0].tokens, expected, "{key}");
        assert!(chunks[0].weights.iter().all(|w| *w == 1.0));
    }
}

#[test]
fn text_embeddings_match_the_reference_in_both_formats() {
    let r = reference();
    for (format, model) in both_formats() {
        assert_close(
            "text.prompt",
            format,
            &model.encode_prompt("a photo of a cat", 1).unwrap(),
            &r["text.prompt"],
            TOLERANCE,
        );
        assert_close(
            "text.negative",
            format,
            &model.encode_prompt("", 1).unwrap(),
            &r["text.negative"],
            TOLERANCE,
        );
        assert_close(
            "text.prompt.skip2",
            format,
            &model.encode_prompt("a photo of a cat", 2).unwrap(),
            &r["text.prompt.skip2"],
            TOLERANCE,
        );
    }
}

#[test]
fn unet_eps_at_fractional_timesteps_matches_the_reference_in_both_formats() {
    let r = reference();
    for (format, model) in both_formats() {
        let eps = model
            .eps(&r["unet.x"], &r["unet.t"], &r["unet.context"])
            .unwrap();
        assert_close("unet.eps", format, &eps, &r["unet.eps"], TOLERANCE);
    }
}

#[test]
fn vae_decode_and_encode_match_the_reference_in_both_formats() {
    let r = reference();
    for (format, model) in both_formats() {
        assert_close(
            "vae.decoded",
            format,
            &model.decode(&r["vae.latent"]).unwrap(),
            &r["vae.decoded"],
            TOLERANCE,
        );
        assert_close(
            "vae.encoded_mean",
            format,
            &model.encode(&r["vae.image"]).unwrap(),
            &r["vae.encoded_mean"],
            TOLERANCE,
        );
    }
}

#[test]
fn vae_override_in_every_layout_decodes_like_the_checkpoint_vae() {
    let r = reference();
    let dir = data_dir();
    let tmp = tempfile::tempdir().unwrap();
    // A standalone LDM VAE file, as published (no `first_stage_model.` prefix).
    let ldm_vae: Vec<(String, Tensor)> = Tensor::read_safetensors(dir.join("sd1-tiny.safetensors"))
        .unwrap()
        .into_iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("first_stage_model.")?.to_string(), t)))
        .collect();
    let ldm_file = tmp.path().join("vae.safetensors");
    Tensor::write_safetensors(&ldm_vae, &ldm_file).unwrap();
    let overrides = [
        ("diffusers folder", dir.join("diffusers/vae")),
        (
            "diffusers file",
            dir.join("diffusers/vae/diffusion_pytorch_model.safetensors"),
        ),
        ("LDM file", ldm_file),
    ];
    for (layout, vae) in overrides {
        let model = Sd1Model::load(
            &dir.join("sd1-tiny.safetensors"),
            Some(&vae),
            Device::Cpu,
            Kind::Float,
        )
        .unwrap();
        assert_close(
            "vae.decoded (override)",
            layout,
            &model.decode(&r["vae.latent"]).unwrap(),
            &r["vae.decoded"],
            TOLERANCE,
        );
    }
}

#[test]
fn model_sigma_table_matches_the_reference_in_both_formats() {
    let r = reference();
    for (format, model) in both_formats() {
        let sigmas = Tensor::from_slice(&model.sigmas());
        assert_close("sigmas.model", format, &sigmas, &r["sigmas.model"], 1e-6);
    }
}

/// k-diffusion `sample_euler` with CFG, the reference's sampler, driving `Sd1Model::denoise`.
fn euler(
    model: &Sd1Model,
    mut x: Tensor,
    sigmas: &[f64],
    cond: &Tensor,
    uncond: &Tensor,
    cfg: f64,
) -> Tensor {
    for pair in sigmas.windows(2) {
        let (sigma, next) = (pair[0], pair[1]);
        let c = model.denoise(&x, sigma, cond).unwrap();
        let u = model.denoise(&x, sigma, uncond).unwrap();
        let denoised = &u + (c - &u) * cfg;
        let d = (&x - denoised) / sigma;
        x = &x + d * (next - sigma);
    }
    x
}

#[test]
fn two_pass_euler_run_through_denoise_matches_the_reference() {
    let r = reference();
    let sigmas = |k: &str| Vec::<f64>::try_from(r[k].to_kind(Kind::Double)).unwrap();
    let (sigmas1, sigmas2) = (sigmas("run.sigmas1"), sigmas("run.sigmas2"));
    for (format, model) in both_formats() {
        let (cond, uncond) = model.encode_pair("a photo of a cat", "", 1).unwrap();
        let latent1 = euler(
            &model,
            &r["run.noise1"] * sigmas1[0],
            &sigmas1,
            &cond,
            &uncond,
            5.0,
        );
        assert_close(
            "run.latent1",
            format,
            &latent1,
            &r["run.latent1"],
            TOLERANCE,
        );
        let upscaled = r["run.latent1"].upsample_bilinear2d([32, 32], false, None, None);
        let latent2 = euler(
            &model,
            &upscaled + &r["run.noise2"] * sigmas2[0],
            &sigmas2,
            &cond,
            &uncond,
            5.0,
        );
        assert_close(
            "run.latent2",
            format,
            &latent2,
            &r["run.latent2"],
            TOLERANCE,
        );
    }
}
