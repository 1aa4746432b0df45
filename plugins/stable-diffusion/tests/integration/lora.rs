//! LoRA in every format people download (kohya LoRA / LoCon with `lora_mid`, LyCORIS LoHa and
//! LoKr, diffusers/peft with and without prefixes), on the tiny SD 1.x and SDXL models: the
//! patched weights and outputs match the references of scripts/make_lora_reference.py
//! (diffusers' own fusing for kohya and peft files), removing a set restores the base weights
//! bit for bit, and a LoRA of another family is refused.

use std::collections::HashMap;
use std::path::PathBuf;

use crate::common::relative_error;
use hiresfix_sd::lora::LoraSpec;
use hiresfix_sd::{PromptInput, SdModel};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(rel)
}

fn reference() -> (HashMap<String, Tensor>, serde_json::Value) {
    let tensors = Tensor::read_safetensors(data("loras/reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let json = std::fs::read_to_string(data("loras/reference.json")).unwrap();
    (tensors, serde_json::from_str(&json).unwrap())
}

fn model(family: &str) -> SdModel {
    let path = data(&format!("{family}-tiny/{family}-tiny.safetensors"));
    SdModel::load(&path, None, Device::Cpu, Kind::Float).unwrap()
}

fn spec(stem: &str, te: f64, unet: f64) -> LoraSpec {
    LoraSpec {
        path: data(&format!("loras/{stem}.safetensors")),
        name: stem.to_owned(),
        te,
        unet,
    }
}

fn family_inputs(family: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data(&format!("{family}-tiny/reference.safetensors")))
        .unwrap()
        .into_iter()
        .collect()
}

/// Every weight of the model, copied.
fn snapshot(model: &SdModel) -> HashMap<String, Tensor> {
    model
        .var_store()
        .variables()
        .into_iter()
        .map(|(k, t)| (k, t.copy()))
        .collect()
}

fn same_as(model: &SdModel, base: &HashMap<String, Tensor>) -> bool {
    model
        .var_store()
        .variables()
        .iter()
        .all(|(k, t)| t.equal(&base[k]))
}

#[test]
fn every_format_patches_the_weights_and_outputs_as_the_references() {
    let (r, json) = reference();
    for (stem, file) in json["files"].as_object().unwrap() {
        let family = file["family"].as_str().unwrap();
        let model = model(family);
        let (te, unet) = (
            file["multipliers"]["te"].as_f64().unwrap(),
            file["multipliers"]["unet"].as_f64().unwrap(),
        );
        let warnings = model.set_loras(&[spec(stem, te, unet)]).unwrap();
        assert!(warnings.is_empty(), "{stem}: {warnings:?}");
        let vars = model.var_store().variables();
        let mut checked = 0;
        for module in file["modules"].as_array().unwrap() {
            let key = module["model_key"].as_str().unwrap();
            let want = &r[&format!("{stem}/{key}")];
            let err = relative_error(&vars[key].to_kind(Kind::Float), want);
            assert!(err <= TOLERANCE, "{stem} {key}: relative error {err:e}");
            checked += 1;
        }
        assert!(checked >= 3, "{stem}: only {checked} weights");
        let inputs = family_inputs(family);
        let out = model
            .unet_output(
                &inputs["unet.x"],
                &inputs["unet.t"],
                &inputs["unet.context"],
                inputs.get("unet.y"),
            )
            .unwrap();
        let err = relative_error(&out, &r[&format!("{stem}/unet.out")]);
        assert!(err <= TOLERANCE, "{stem} unet.out: relative error {err:e}");
        let size = model.info().default_size;
        let input = PromptInput {
            text: "a photo of a cat",
            negative: false,
            clip_skip: 1,
            width: size,
            height: size,
        };
        let text = model.encode(&input).unwrap().context;
        let err = relative_error(&text, &r[&format!("{stem}/text")]);
        assert!(err <= TOLERANCE, "{stem} text: relative error {err:e}");
        eprintln!("{stem}: {checked} weights, UNet and text within {TOLERANCE:e}");
    }
}

#[test]
fn fifty_alternations_between_two_sets_leave_the_base_weights_bit_identical() {
    let model = model("sd1");
    let base = snapshot(&model);
    let one = [spec("sd1-kohya", 0.8, 0.6), spec("sd1-loha", 1.0, 1.0)];
    let two = [
        spec("sd1-locon", 0.5, 0.7),
        spec("sd1-lokr", 1.0, 0.4),
        spec("sd1-peft", 1.0, 1.0),
    ];
    for i in 0..50 {
        let set: &[LoraSpec] = if i % 2 == 0 { &one } else { &two };
        model.set_loras(set).unwrap();
        assert!(
            !same_as(&model, &base),
            "round {i}: the set changed nothing"
        );
    }
    model.set_loras(&[]).unwrap();
    assert!(
        same_as(&model, &base),
        "the base weights did not come back bit for bit"
    );
    let (r, _) = reference();
    for (key, want) in r
        .iter()
        .filter_map(|(k, t)| Some((k.strip_prefix("base/sd1/")?, t)))
    {
        if let Some(var) = model.var_store().variables().get(key) {
            assert!(
                var.to_kind(Kind::Float).equal(want),
                "{key} is not the checkpoint's"
            );
        }
    }
}

#[test]
fn weight_zero_changes_nothing_and_an_error_leaves_the_base_weights() {
    let model = model("sd1");
    let base = snapshot(&model);
    model.set_loras(&[spec("sd1-kohya", 0.0, 0.0)]).unwrap();
    assert!(same_as(&model, &base));
    model.set_loras(&[spec("sd1-kohya", 1.0, 1.0)]).unwrap();
    let missing = LoraSpec {
        path: data("loras/none.safetensors"),
        ..spec("none", 1.0, 1.0)
    };
    assert!(model
        .set_loras(&[spec("sd1-loha", 1.0, 1.0), missing])
        .is_err());
    assert!(
        same_as(&model, &base),
        "a failed set must leave the base weights"
    );
}

#[test]
fn a_lora_of_another_family_is_refused_naming_both() {
    for (stem, family, expect) in [
        ("sdxl-kohya", "sd1", "is an SDXL LoRA"),
        ("sdxl-peft", "sd1", "is an SDXL LoRA"),
        ("sd1-kohya", "sdxl", "is an SD 1.x/2.x LoRA"),
        ("sd1-peft", "sdxl", "does not fit"),
        ("sd1-peft-bare", "sdxl", ""),
        ("sd1-locon", "sdxl", "is an SD 1.x/2.x LoRA"),
    ] {
        let model = model(family);
        let base = snapshot(&model);
        let err = format!(
            "{:#}",
            model.set_loras(&[spec(stem, 1.0, 1.0)]).unwrap_err()
        );
        assert!(
            err.contains(stem) && err.contains(expect),
            "{stem} on {family}: {err}"
        );
        assert!(same_as(&model, &base), "{stem} on {family} left changes");
    }
}
