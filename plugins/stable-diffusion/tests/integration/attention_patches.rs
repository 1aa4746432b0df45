//! HyperTile and ToMe (the built-in patch plugin's attention-hook patches, host-api 1.4)
//! against the PyTorch references in `tests/data/attention_patches`
//! (scripts/make_attention_patch_reference.py: ComfyUI's HyperTile and tomesd transcribed
//! onto the diffusers UNet, their random choices from the same seeded draws). One UNet call
//! per case on the tiny SD 1.x and SDXL models, CPU fp32, inputs of `tests/data/patches`.
use std::collections::HashMap;

use hiresfix_sd::SdModel;
use host_api::{OptionEntry, OptionValue, PassSigmas, PatchBox, PatchModel};
use tch::Tensor;

use crate::common::relative_error;
use crate::patches::{builtin_patch, data, model, number};

const TOLERANCE: f64 = 1e-4;

fn read(file: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data().join(file))
        .unwrap()
        .into_iter()
        .collect()
}

fn settings() -> serde_json::Value {
    let text = std::fs::read_to_string(data().join("attention_patches/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The case's patch made as the host makes it: profile options, and the images' seeds in
/// `PatchModel.extra`.
fn patch(model: &SdModel, case: &serde_json::Value) -> PatchBox {
    let options = case["options"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::Bool(b) => OptionEntry {
                key: k.as_str().into(),
                value: OptionValue::Flag(*b),
            },
            v => number(k, v.as_f64().unwrap()),
        })
        .collect::<Vec<_>>();
    let seeds: Vec<String> = case["seeds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_i64().unwrap().to_string())
        .collect();
    let target = PatchModel {
        family: model.info().family.id.into(),
        sigmas: model.sigmas().into(),
        extra: vec![OptionEntry {
            key: host_api::keys::SEEDS.into(),
            value: OptionValue::Text(seeds.join(",").into()),
        }]
        .into(),
    };
    builtin_patch(case["patch"].as_str().unwrap())
        .create(&options, &target)
        .unwrap()
}

fn run(
    model: &SdModel,
    inputs: &HashMap<String, Tensor>,
    family: &str,
    patches: Vec<PatchBox>,
) -> Tensor {
    let range = PassSigmas {
        max: 14.6,
        min: 0.0,
    };
    model.set_patches(patches, range);
    let get = |k: &str| &inputs[&format!("{family}.{k}")];
    let vector = (family == "sdxl").then(|| get("y"));
    let out = model
        .unet_output_at_sigma(get("x"), 8.0, get("context"), vector)
        .unwrap();
    model.set_patches(Vec::new(), range);
    out
}

#[test]
fn hypertile_and_tome_match_the_transcriptions_rerun_identically_and_change_the_output() {
    let settings = settings();
    let inputs = read("patches/reference.safetensors");
    let reference = read("attention_patches/reference.safetensors");
    for family in ["sd1", "sdxl"] {
        let model = model(family);
        let plain = run(&model, &inputs, family, Vec::new());
        let err = relative_error(&plain, &reference[&format!("{family}.plain")]);
        assert!(err < TOLERANCE, "{family} plain: {err:e}");
        for (name, case) in settings["families"][family]["cases"].as_object().unwrap() {
            let out = run(&model, &inputs, family, vec![patch(&model, case)]);
            let expected = &reference[&format!("{family}.{name}")];
            let err = relative_error(&out, expected);
            println!("{family} {name}: relative error {err:.2e}");
            assert!(err < TOLERANCE, "{family} {name}: {err:e}");
            let again = run(&model, &inputs, family, vec![patch(&model, case)]);
            assert!(out.equal(&again), "{family} {name}: a rerun differs");
            let changed = relative_error(&out, &plain);
            assert!(
                changed > 1e-2,
                "{family} {name}: only {changed:e} from plain"
            );
        }
    }
}
