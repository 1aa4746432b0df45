//! Parity with the PyTorch reference (transformers / diffusers / k-diffusion, CPU fp32) in
//! `tests/data/sd1-tiny`, loading the model from both the single file and the diffusers folder.
use std::collections::HashMap;
use std::path::PathBuf;

use crate::common::{assert_close, euler, TOLERANCE};
use hiresfix_sd::{PromptInput, SdModel};
use tch::{Device, Kind, Tensor};

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
fn both_formats() -> Vec<(&'static str, SdModel)> {
    let dir = data_dir();
    [
        ("single file", dir.join("sd1-tiny.safetensors")),
        ("diffusers", dir.join("diffusers")),
    ]
    .into_iter()
    .map(|(name, path)| {
        (
            name,
            SdModel::load(&path, None, Device::Cpu, Kind::Float).unwrap(),
        )
    })
    .collect()
}

#[test]
fn prompt_tokens_match_the_reference_exactly() {
    let r = reference();
    let tokenizer = hiresfix_sd::text::tokenizer::ClipTokenizer::new();
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
            &model.encode_prompt("a photo of a cat", 1).unwrap().context,
            &r["text.prompt"],
            TOLERANCE,
        );
        assert_close(
            "text.negative",
            format,
            &model.encode_prompt("", 1).unwrap().context,
            &r["text.negative"],
            TOLERANCE,
        );
        assert_close(
            "text.prompt.skip2",
            format,
            &model.encode_prompt("a photo of a cat", 2).unwrap().context,
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
            .unet_output(&r["unet.x"], &r["unet.t"], &r["unet.context"], None)
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
            &model.encode_image(&r["vae.image"]).unwrap(),
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
        let model = SdModel::load(
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

#[test]
fn two_pass_euler_run_through_denoise_matches_the_reference() {
    let r = reference();
    let sigmas = |k: &str| Vec::<f64>::try_from(r[k].to_kind(Kind::Double)).unwrap();
    let (sigmas1, sigmas2) = (sigmas("run.sigmas1"), sigmas("run.sigmas2"));
    for (format, model) in both_formats() {
        let input = |text, negative| PromptInput {
            text,
            negative,
            clip_skip: 1,
            width: 32,
            height: 32,
        };
        let cond = model.encode(&input("a photo of a cat", false)).unwrap();
        let uncond = model.encode(&input("", true)).unwrap();
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

fn long_prompt_reference() -> (HashMap<String, Tensor>, serde_json::Value) {
    let tensors = Tensor::read_safetensors(data_dir().join("long_prompt.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let text = std::fs::read_to_string(data_dir().join("long_prompt.json")).unwrap();
    (tensors, serde_json::from_str(&text).unwrap())
}

#[test]
fn long_weighted_prompt_with_break_matches_a1111_in_both_formats() {
    let (r, json) = long_prompt_reference();
    let setting = |k: &str| json["settings"][k].as_str().unwrap().to_owned();
    let (long, negative) = (setting("long_prompt"), setting("negative_prompt"));
    let tokenizer = hiresfix_sd::text::tokenizer::ClipTokenizer::new();
    let tokens: Vec<i64> = tokenizer
        .chunks(&long)
        .iter()
        .flat_map(|c| c.tokens.clone())
        .collect();
    let expected = Vec::<i64>::try_from(r["tokens.long.clip_l"].flatten(0, -1)).unwrap();
    assert_eq!(tokens, expected);
    for (format, model) in both_formats() {
        let encode = |text: &str, negative, clip_skip| {
            let input = PromptInput {
                text,
                negative,
                clip_skip,
                width: 512,
                height: 512,
            };
            model.encode(&input).unwrap().context
        };
        assert_close(
            "text.long",
            format,
            &encode(&long, false, 1),
            &r["text.long"],
            TOLERANCE,
        );
        let skip2 = encode(&long, false, 2);
        assert_close(
            "text.long.skip2",
            format,
            &skip2,
            &r["text.long.skip2"],
            TOLERANCE,
        );
        let neg = encode(&negative, true, 1);
        assert_close(
            "text.negative",
            format,
            &neg,
            &r["text.negative"],
            TOLERANCE,
        );
    }
}

#[test]
fn a_transformers_5_text_encoder_without_the_text_model_level_loads() {
    // transformers >= 5 saves CLIPTextModel without `text_model.`; such folders once failed
    // with "missing tensor".
    let tmp = tempfile::tempdir().unwrap();
    let folder = tmp.path().join("diffusers");
    copy_dir(&data_dir().join("diffusers"), &folder);
    let file = folder.join("text_encoder/model.safetensors");
    let flattened: Vec<(String, Tensor)> = Tensor::read_safetensors(&file)
        .unwrap()
        .into_iter()
        .map(|(k, t)| (k.strip_prefix("text_model.").unwrap_or(&k).to_string(), t))
        .collect();
    assert!(flattened.iter().all(|(k, _)| !k.starts_with("text_model.")));
    Tensor::write_safetensors(&flattened, &file).unwrap();
    let model = SdModel::load(&folder, None, Device::Cpu, Kind::Float).unwrap();
    let r = reference();
    let cond = model.encode_prompt("a photo of a cat", 1).unwrap();
    assert_close(
        "text.prompt",
        "transformers 5",
        &cond.context,
        &r["text.prompt"],
        TOLERANCE,
    );
}

use crate::files::copy_dir;
