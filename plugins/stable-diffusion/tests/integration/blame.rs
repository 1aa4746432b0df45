//! Blame for NaN/inf (issue 25): a weight a LoRA changed is blamed on the LoRA with its weight,
//! any other on the checkpoint; a LoRA whose weight overflows is refused as it is applied,
//! naming the LoRA, its weight and the tensor, and leaves the base weights.

use std::path::PathBuf;

use hiresfix_sd::lora::LoraSpec;
use hiresfix_sd::SdModel;
use tch::{Device, Kind};

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(rel)
}

fn model() -> SdModel {
    SdModel::load(
        &data("sd1-tiny/sd1-tiny.safetensors"),
        None,
        Device::Cpu,
        Kind::Float,
    )
    .unwrap()
}

fn kohya(weight: f64) -> LoraSpec {
    LoraSpec {
        path: data("loras/sd1-kohya.safetensors"),
        name: "sd1-kohya".into(),
        te: weight,
        unet: weight,
    }
}

const CHANGED: &str =
    "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.k_proj.weight";

fn poison(model: &SdModel, key: &str) {
    let vars = model.var_store().variables();
    let mut var = vars[key].shallow_clone();
    tch::no_grad(|| {
        let _ = var.fill_(f64::NAN);
    });
}

#[test]
fn a_weight_the_lora_changed_is_blamed_on_the_lora_first() {
    let model = model();
    model.set_loras(&[kohya(0.5)]).unwrap();
    poison(&model, CHANGED);
    let cause = model.nonfinite_cause("");
    assert!(
        cause.starts_with("LoRA `sd1-kohya.safetensors` (weight 0.5) makes `cond_stage_model."),
        "{cause}"
    );
    assert!(!cause.contains("checkpoint"), "{cause}");
}

#[test]
fn a_weight_no_lora_changed_is_blamed_on_the_checkpoint() {
    let model = model();
    model.set_loras(&[kohya(0.5)]).unwrap();
    poison(&model, "first_stage_model.decoder.conv_in.weight");
    let cause = model.nonfinite_cause("");
    assert!(
        cause.contains(
            "the checkpoint's tensor `first_stage_model.decoder.conv_in.weight` holds NaN or inf"
        ),
        "{cause}"
    );
}

#[test]
fn finite_weights_with_a_lora_applied_say_so() {
    let model = model();
    model.set_loras(&[kohya(2.0)]).unwrap();
    let cause = model.nonfinite_cause("");
    assert!(cause.contains("the weights are finite"), "{cause}");
    assert!(
        cause.contains("LoRA `sd1-kohya.safetensors` (weight 2) applied"),
        "{cause}"
    );
}

#[test]
fn an_overflowing_weight_is_refused_as_applied_and_leaves_the_base_weights() {
    let model = model();
    let before = model.var_store().variables()[CHANGED].copy();
    let err = format!("{:#}", model.set_loras(&[kohya(1e300)]).unwrap_err());
    assert!(
        err.starts_with("LoRA `sd1-kohya.safetensors` (weight 1e300) makes `"),
        "{err}"
    );
    assert!(
        err.contains("NaN or inf") && err.contains("lower its weight"),
        "{err}"
    );
    let after = &model.var_store().variables()[CHANGED];
    assert!(after.equal(&before), "the base weights are back");
    // A weight that is not a number is refused before it is applied.
    let mut spec = kohya(1.0);
    spec.te = f64::NAN;
    let err = format!("{:#}", model.set_loras(&[spec]).unwrap_err());
    assert!(err.contains("weight NaN is not a finite number"), "{err}");
}
