//! Parity of SD 2.x (eps and v) and SDXL with the PyTorch references (transformers / diffusers /
//! k-diffusion with A1111's prompt, emphasis, conditioning and CFG rules, CPU fp32) in
//! `tests/data/{sd2,sd2v,sdxl}-tiny`, each model loaded from its single file and its diffusers
//! folder. References: scripts/make_family_reference.py.
use std::collections::HashMap;
use std::path::PathBuf;

use hiresfix_sd::families::Prediction;
use hiresfix_sd::model::PredictionSource;
use hiresfix_sd::text::tokenizer::ClipTokenizer;

use crate::common::{euler, relative_error};
use hiresfix_sd::{PromptInput, SdModel};
use tch::{Device, Kind, Tensor};

struct Family {
    dir: &'static str,
    id: &'static str,
    prediction: &'static str,
    /// Pass-1 size (width, height).
    size: (i64, i64),
    /// The run's negative prompt: SDXL's is empty (conditioned with zeros, as A1111).
    run_negative_is_empty: bool,
}

const FAMILIES: [Family; 3] = [
    Family {
        dir: "sd2-tiny",
        id: "sd2",
        prediction: "eps",
        size: (32, 32),
        run_negative_is_empty: false,
    },
    Family {
        dir: "sd2v-tiny",
        id: "sd2",
        prediction: "v",
        size: (32, 32),
        run_negative_is_empty: false,
    },
    Family {
        dir: "sdxl-tiny",
        id: "sdxl",
        prediction: "eps",
        size: (48, 32),
        run_negative_is_empty: true,
    },
];

fn data_dir(family: &Family) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(family.dir)
}

fn reference(family: &Family) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data_dir(family).join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn settings(family: &Family) -> serde_json::Value {
    let text = std::fs::read_to_string(data_dir(family).join("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn prompts(family: &Family) -> (String, String) {
    let s = settings(family);
    let text = |k: &str| s["settings"][k].as_str().unwrap().to_owned();
    (text("long_prompt"), text("negative_prompt"))
}

/// The model loaded from each format, named.
fn both_formats(family: &Family) -> Vec<(&'static str, SdModel)> {
    let dir = data_dir(family);
    let single = dir.join(format!("{}.safetensors", family.dir));
    [
        ("single file", single),
        ("diffusers", dir.join("diffusers")),
    ]
    .into_iter()
    .map(|(name, path)| {
        let model = SdModel::load(&path, None, Device::Cpu, Kind::Float)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        (name, model)
    })
    .collect()
}

fn assert_close(what: &str, label: &str, a: &Tensor, b: &Tensor) {
    crate::common::assert_close(what, label, a, b, crate::common::TOLERANCE);
}

fn input<'a>(family: &Family, text: &'a str, negative: bool, scale: i64) -> PromptInput<'a> {
    PromptInput {
        text,
        negative,
        clip_skip: 1,
        width: family.size.0 * scale,
        height: family.size.1 * scale,
    }
}

#[test]
fn chunk_tokens_and_weights_match_a1111_for_every_encoder() {
    let tokenizer = ClipTokenizer::new();
    for family in &FAMILIES {
        let r = reference(family);
        let (long, _) = prompts(family);
        let chunks = tokenizer.chunks(&long);
        assert_eq!(
            chunks.len(),
            3,
            "{}: BREAK and the comma backtrack",
            family.dir
        );
        let weights: Vec<f32> = chunks.iter().flat_map(|c| c.weights.clone()).collect();
        let expected = Vec::<f32>::try_from(r["weights.long"].flatten(0, -1)).unwrap();
        let worst = weights
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "{}: weights differ by {worst}", family.dir);
        for (key, pad) in [("tokens.long.clip_l", 49407), ("tokens.long.open_clip", 0)] {
            let Some(want) = r.get(key) else { continue };
            let got: Vec<i64> = chunks
                .iter()
                .flat_map(|c| c.tokens_padded_with(pad, tokenizer.eos()))
                .collect();
            assert_eq!(
                got,
                Vec::<i64>::try_from(want.flatten(0, -1)).unwrap(),
                "{key}"
            );
        }
    }
}

#[test]
fn long_weighted_prompt_embeddings_match_in_both_formats() {
    for family in &FAMILIES {
        let r = reference(family);
        let (long, negative) = prompts(family);
        for (format, model) in both_formats(family) {
            let label = format!("{} {format}", family.dir);
            let cond = model.encode(&input(family, &long, false, 1)).unwrap();
            assert_close("text.long", &label, &cond.context, &r["text.long"]);
            let neg = model.encode(&input(family, &negative, true, 1)).unwrap();
            assert_close("text.negative", &label, &neg.context, &r["text.negative"]);
            if let Some(pooled) = r.get("text.long.pooled") {
                let y = cond.vector.as_ref().expect("SDXL has a vector");
                assert_close("text.long.pooled", &label, &y.narrow(1, 0, 16), pooled);
                let y = neg.vector.as_ref().unwrap();
                assert_close(
                    "text.negative.pooled",
                    &label,
                    &y.narrow(1, 0, 16),
                    &r["text.negative.pooled"],
                );
            }
        }
    }
}

#[test]
fn sdxl_vector_conditioning_matches_for_each_pass_size_and_zeroes_an_empty_negative() {
    let family = &FAMILIES[2];
    let r = reference(family);
    let (long, _) = prompts(family);
    for (format, model) in both_formats(family) {
        for pass in [1, 2] {
            let label = format!("{format} pass {pass}");
            let cond = model.encode(&input(family, &long, false, pass)).unwrap();
            let uncond = model.encode(&input(family, "", true, pass)).unwrap();
            let key = |which: &str| format!("run.y.{which}.pass{pass}");
            assert_close(
                "run.y.cond",
                &label,
                cond.vector.as_ref().unwrap(),
                &r[&key("cond")],
            );
            assert_close(
                "run.y.uncond",
                &label,
                uncond.vector.as_ref().unwrap(),
                &r[&key("uncond")],
            );
            assert_eq!(f64::try_from(uncond.context.abs().max()).unwrap(), 0.0);
        }
        // An empty prompt that is not the negative is encoded, not zeroed.
        let positive = model.encode(&input(family, "", false, 1)).unwrap();
        assert!(f64::try_from(positive.context.abs().max()).unwrap() > 0.0);
    }
}

#[test]
fn one_unet_call_matches_in_both_formats() {
    for family in &FAMILIES {
        let r = reference(family);
        for (format, model) in both_formats(family) {
            let out = model
                .unet_output(
                    &r["unet.x"],
                    &r["unet.t"],
                    &r["unet.context"],
                    r.get("unet.y"),
                )
                .unwrap();
            assert_close(
                "unet.out",
                &format!("{} {format}", family.dir),
                &out,
                &r["unet.out"],
            );
        }
    }
}

#[test]
fn vae_decode_and_encode_match_in_both_formats() {
    for family in &FAMILIES {
        let r = reference(family);
        for (format, model) in both_formats(family) {
            let label = format!("{} {format}", family.dir);
            let decoded = model.decode(&r["vae.latent"]).unwrap();
            assert_close("vae.decoded", &label, &decoded, &r["vae.decoded"]);
            let encoded = model.encode_image(&r["vae.image"]).unwrap();
            assert_close("vae.encoded_mean", &label, &encoded, &r["vae.encoded_mean"]);
            let sigmas = Tensor::from_slice(&model.sigmas());
            let err = relative_error(&sigmas, &r["sigmas.model"]);
            assert!(err < 1e-6, "{label}: sigma table {err}");
        }
    }
}

#[test]
fn family_and_prediction_are_detected_from_each_format() {
    for family in &FAMILIES {
        for (format, model) in both_formats(family) {
            let info = model.info();
            assert_eq!(info.family.id, family.id, "{} {format}", family.dir);
            assert_eq!(
                info.prediction.as_str(),
                family.prediction,
                "{} {format}",
                family.dir
            );
        }
    }
}

#[test]
fn sd2_single_file_probe_matches_a1111s() {
    let family = &FAMILIES[0];
    let expected = settings(family)["probe"]["mean"].as_f64().unwrap();
    let path = data_dir(family).join("sd2-tiny.safetensors");
    let model = SdModel::load(&path, None, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(model.info().prediction_source, PredictionSource::UNetProbe);
    let mean = model.probe_mean().unwrap();
    assert!(
        (mean - expected).abs() < 1e-4 * expected.abs().max(1.0),
        "{mean} vs {expected}"
    );
    assert_eq!(model.info().prediction, Prediction::Eps);
}

#[test]
fn two_pass_euler_run_matches_in_both_formats() {
    for family in &FAMILIES {
        let r = reference(family);
        let (long, negative) = prompts(family);
        let negative = if family.run_negative_is_empty {
            String::new()
        } else {
            negative
        };
        let sigmas = |k: &str| Vec::<f64>::try_from(r[k].to_kind(Kind::Double)).unwrap();
        let (sigmas1, sigmas2) = (sigmas("run.sigmas1"), sigmas("run.sigmas2"));
        for (format, model) in both_formats(family) {
            let label = format!("{} {format}", family.dir);
            let encode = |pass| {
                let cond = model.encode(&input(family, &long, false, pass)).unwrap();
                let uncond = model.encode(&input(family, &negative, true, pass)).unwrap();
                (cond, uncond)
            };
            let (cond, uncond) = encode(1);
            let x = &r["run.noise1"] * sigmas1[0];
            let latent1 = euler(&model, x, &sigmas1, &cond, &uncond, 5.0);
            assert_close("run.latent1", &label, &latent1, &r["run.latent1"]);
            let (cond, uncond) = encode(2);
            let x = &r["run.upscaled"] + &r["run.noise2"] * sigmas2[0];
            let latent2 = euler(&model, x, &sigmas2, &cond, &uncond, 5.0);
            assert_close("run.latent2", &label, &latent2, &r["run.latent2"]);
            let image = ((model.decode(&latent2).unwrap() + 1.0) / 2.0).clamp(0.0, 1.0);
            assert_close("run.image", &label, &image, &r["run.image"]);
        }
    }
}
