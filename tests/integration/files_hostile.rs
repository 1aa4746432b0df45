//! Hostile model files beside the checkpoint (README "Reliability"): LoRA files with NaN/inf,
//! mismatched ranks, wrong dimensions or a non-scalar alpha, weights that overflow (a tag of
//! 1e308, a merge ratio past fp32), and upscaler files with 0 or 1 channels, non-square
//! kernels, 40 up-convs, missing or extra keys or cut short. Each ends in one line under 300
//! characters naming the file and tensor at fault (the LoRA or merge first, never "the
//! checkpoint is damaged"), exit code 1, no panic or libtorch text, and nothing written. The
//! harness is `bad_input.rs`'s; the files are built here from the committed test models.

use std::path::{Path, PathBuf};

use crate::common::*;
use host_api::tch::{Device, Kind, Tensor};

type Setup = fn(&Scratch) -> Vec<String>;

struct Case {
    name: &'static str,
    setup: Setup,
    /// Text the one-line error must contain.
    expect: &'static [&'static str],
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

/// A layer of the tiny SD 1.x LoRA that changes a [32, 32] text-encoder weight.
const LAYER: &str = "lora_te_text_model_encoder_layers_0_self_attn_k_proj";

fn read(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).unwrap()
}

fn write(path: &Path, tensors: &[(String, Tensor)]) -> PathBuf {
    Tensor::write_safetensors(tensors, path).unwrap();
    path.to_path_buf()
}

/// Sets (or adds) `key`.
fn set(tensors: &mut Vec<(String, Tensor)>, key: &str, value: Tensor) {
    match tensors.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value,
        None => tensors.push((key.to_owned(), value)),
    }
}

fn remove(tensors: &mut Vec<(String, Tensor)>, key: &str) {
    tensors.retain(|(k, _)| k != key);
}

fn zeros(shape: &[i64]) -> Tensor {
    Tensor::zeros(shape, (Kind::Float, Device::Cpu))
}

fn filled(shape: &[i64], value: f64) -> Tensor {
    Tensor::full(shape, value, (Kind::Float, Device::Cpu))
}

/// The tiny SD 1.x kohya LoRA with `edit` applied, as `loras/detail.safetensors`.
fn lora(scratch: &Scratch, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let mut tensors = read(&repo().join("tests/data/loras/sd1-kohya.safetensors"));
    edit(&mut tensors);
    std::fs::create_dir_all(scratch.path("loras")).unwrap();
    write(&scratch.path("loras/detail.safetensors"), &tensors)
}

/// `generate` with the LoRA made by `edit` listed in the profile at `weight`.
fn with_lora(
    scratch: &Scratch,
    weight: &str,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> Vec<String> {
    let path = lora(scratch, edit);
    let text = tiny_profile(&tiny_ldm(), "", "", "").replace(
        "[model]",
        &format!(
            "[model]\nloras = [{{ path = \"{}\", weight = {weight} }}]",
            path.display()
        ),
    );
    let profile = scratch.write("p.toml", &text);
    s(&["generate", profile.to_str().unwrap()])
}

/// `generate` with the intact LoRA named by a prompt tag `<lora:detail:{weight}>`.
fn with_tag(scratch: &Scratch, weight: &str) -> Vec<String> {
    lora(scratch, |_| {});
    let dirs = format!("lora_dirs = [\"{}\"]", scratch.path("loras").display());
    let text = tiny_profile(&tiny_ldm(), &dirs, "", "").replace(
        "prompt = \"a photo of a cat\"",
        &format!("prompt = \"a photo of a cat <lora:detail:{weight}>\""),
    );
    let profile = scratch.write("p.toml", &text);
    s(&["generate", profile.to_str().unwrap()])
}

fn lora_layer(tensors: &mut Vec<(String, Tensor)>, down: &[i64], up: &[i64]) {
    set(tensors, &format!("{LAYER}.lora_down.weight"), zeros(down));
    set(tensors, &format!("{LAYER}.lora_up.weight"), zeros(up));
}

/// The tiny SD 1.x checkpoint with NaN in one weight, as `nan.safetensors`.
fn nan_checkpoint(scratch: &Scratch) -> PathBuf {
    let mut tensors = read(&tiny_ldm());
    let key = "cond_stage_model.transformer.text_model.final_layer_norm.weight";
    let shape = tensors.iter().find(|(k, _)| k == key).unwrap().1.size();
    set(&mut tensors, key, filled(&shape, f64::NAN));
    write(&scratch.path("nan.safetensors"), &tensors)
}

/// The tiny SD 1.x checkpoint with one weight at 1e37 (finite; ×100 is not), as `big.safetensors`.
fn big_checkpoint(scratch: &Scratch) -> PathBuf {
    let mut tensors = read(&tiny_ldm());
    let key = "cond_stage_model.transformer.text_model.final_layer_norm.weight";
    let shape = tensors.iter().find(|(k, _)| k == key).unwrap().1.size();
    set(&mut tensors, key, filled(&shape, 1e37));
    write(&scratch.path("big.safetensors"), &tensors)
}

/// The LoRA's layer with its up and down tensors filled with `value` (finite, but their
/// product is not in fp32).
fn lora_layer_filled(tensors: &mut Vec<(String, Tensor)>, value: f64) {
    for part in ["lora_down", "lora_up"] {
        let key = format!("{LAYER}.{part}.weight");
        let shape = tensors.iter().find(|(k, _)| *k == key).unwrap().1.size();
        set(tensors, &key, filled(&shape, value));
    }
}

/// `generate` on a profile merging `list` (TOML inline tables) instead of a checkpoint.
fn profile_merge(scratch: &Scratch, list: &str) -> Vec<String> {
    let m = tiny_ldm();
    let text = tiny_profile(&m, "", "", "").replace(
        &format!("checkpoint = \"{}\"", m.display()),
        &format!("merge = [{list}]"),
    );
    let profile = scratch.write("p.toml", &text);
    s(&["generate", profile.to_str().unwrap()])
}

/// The committed Real-ESRGAN ×4 test model with `edit` applied, as `upscalers/bad.safetensors`,
/// run between the passes.
fn upscaler(
    scratch: &Scratch,
    base: &str,
    edit: impl FnOnce(&mut Vec<(String, Tensor)>),
) -> Vec<String> {
    let mut tensors = read(&repo().join("tests/data/upscalers/models").join(base));
    edit(&mut tensors);
    std::fs::create_dir_all(scratch.path("upscalers")).unwrap();
    write(&scratch.path("upscalers/bad.safetensors"), &tensors);
    upscaler_profile(scratch)
}

fn upscaler_profile(scratch: &Scratch) -> Vec<String> {
    let top = format!(
        "upscaler_dirs = [\"{}\"]",
        scratch.path("upscalers").display()
    );
    let text = tiny_profile(&tiny_ldm(), &top, "", "upscaler = \"bad\"");
    let profile = scratch.write("p.toml", &text);
    s(&["generate", profile.to_str().unwrap()])
}

fn esrgan(scratch: &Scratch, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> Vec<String> {
    upscaler(scratch, "realesrgan-x4.safetensors", edit)
}

fn compact(scratch: &Scratch, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> Vec<String> {
    upscaler(scratch, "compact-x4.safetensors", edit)
}

/// A conv `prefix` of `out` × `inc` 3×3 with its bias.
fn conv(tensors: &mut Vec<(String, Tensor)>, prefix: &str, out: i64, inc: i64) {
    set(
        tensors,
        &format!("{prefix}.weight"),
        zeros(&[out, inc, 3, 3]),
    );
    set(tensors, &format!("{prefix}.bias"), zeros(&[out]));
}

const CASES: &[Case] = &[
    // --- LoRA files ---
    Case { name: "LoRA with a NaN weight", expect: &["LoRA `detail.safetensors`: tensor `lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight` holds NaN or inf", "re-download"],
        setup: |sc| with_lora(sc, "1.0", |t| set(t, &format!("{LAYER}.lora_up.weight"), filled(&[32, 4], f64::NAN))) },
    Case { name: "LoRA with an inf alpha", expect: &["LoRA `detail.safetensors`: tensor `lora_te_text_model_encoder_layers_0_self_attn_k_proj.alpha` holds NaN or inf"],
        setup: |sc| with_lora(sc, "1.0", |t| set(t, &format!("{LAYER}.alpha"), Tensor::from(f32::INFINITY))) },
    Case { name: "LoRA with mismatched ranks", expect: &["LoRA `detail.safetensors`", "`lora_te_text_model_encoder_layers_0_self_attn_k_proj.lora_up.weight` has shape [32, 3]", "ranks 3 and 4 differ"],
        setup: |sc| with_lora(sc, "1.0", |t| lora_layer(t, &[4, 32], &[32, 3])) },
    Case { name: "LoRA of the wrong width", expect: &["LoRA `detail.safetensors`", "changes a [32, 48] weight, which does not fit the model's [32, 32]"],
        setup: |sc| with_lora(sc, "1.0", |t| lora_layer(t, &[4, 48], &[32, 4])) },
    Case { name: "LoRA conv layer on a linear weight", expect: &["LoRA `detail.safetensors`", "changes a [32, 32, 3, 3] weight, which does not fit"],
        setup: |sc| with_lora(sc, "1.0", |t| lora_layer(t, &[4, 32, 3, 3], &[32, 4, 1, 1])) },
    Case { name: "LoRA with a 1-D down tensor", expect: &["LoRA `detail.safetensors`", ".lora_down.weight` has shape [32]: 1 dimensions where a LoRA stores 2 or 4"],
        setup: |sc| with_lora(sc, "1.0", |t| lora_layer(t, &[32], &[32, 4])) },
    Case { name: "LoRA with a 3-D up tensor", expect: &["LoRA `detail.safetensors`", ".lora_up.weight` has shape [32, 4, 1]: 3 dimensions"],
        setup: |sc| with_lora(sc, "1.0", |t| lora_layer(t, &[4, 32], &[32, 4, 1])) },
    Case { name: "LoRA of rank zero", expect: &["LoRA `detail.safetensors`", ".lora_down.weight` has shape [0, 32] (a dimension of 0)"],
        setup: |sc| with_lora(sc, "1.0", |t| lora_layer(t, &[0, 32], &[32, 0])) },
    Case { name: "LoRA with a non-scalar alpha", expect: &["LoRA `detail.safetensors`", "`lora_te_text_model_encoder_layers_0_self_attn_k_proj.alpha` has shape [4], not a single number"],
        setup: |sc| with_lora(sc, "1.0", |t| set(t, &format!("{LAYER}.alpha"), filled(&[4], 4.0))) },
    Case { name: "LoHa halves of different ranks", expect: &["LoRA `detail.safetensors`", "`lora_te_text_model_encoder_layers_0_self_attn_k_proj.hada_w1_a` [32, 2] and", "different ranks"],
        setup: |sc| with_lora(sc, "1.0", |t| {
            remove(t, &format!("{LAYER}.lora_down.weight"));
            remove(t, &format!("{LAYER}.lora_up.weight"));
            set(t, &format!("{LAYER}.hada_w1_a"), zeros(&[32, 2]));
            set(t, &format!("{LAYER}.hada_w1_b"), zeros(&[3, 32]));
            set(t, &format!("{LAYER}.hada_w2_a"), zeros(&[32, 2]));
            set(t, &format!("{LAYER}.hada_w2_b"), zeros(&[2, 32]));
        }) },
    Case { name: "LoRA tag weight 1e308", expect: &["detail", "1e308"],
        setup: |sc| with_tag(sc, "1e308") },
    Case { name: "LoRA profile weight NaN", expect: &["p.toml:", "a LoRA's weight must be a number between -100 and 100"],
        setup: |sc| with_lora(sc, "nan", |_| {}) },
    Case { name: "LoRA profile weight that overflows fp32", expect: &["LoRA `detail.safetensors` (weight 100) makes `cond_stage_model.transformer.", "NaN or inf", "lower its weight"],
        setup: |sc| with_lora(sc, "100", |t| lora_layer_filled(t, 1e30)) },
    Case { name: "LoCon core of the wrong rank", expect: &["LoRA `detail.safetensors`", ".lora_mid.weight` has shape [4, 5, 3, 3] but", "(rank 4, 1×1)"],
        setup: |sc| with_lora(sc, "1.0", |t| {
            lora_layer(t, &[4, 32, 1, 1], &[32, 4, 1, 1]);
            set(t, &format!("{LAYER}.lora_mid.weight"), zeros(&[4, 5, 3, 3]));
        }) },
    // --- merges ---
    Case { name: "merge of a checkpoint holding NaN", expect: &["nan.safetensors: tensor `cond_stage_model.transformer.text_model.final_layer_norm.weight` holds NaN or inf", "re-download"],
        setup: |sc| {
            let nan = nan_checkpoint(sc);
            let (n, m) = (nan.to_str().unwrap(), tiny_ldm());
            s(&["merge", sc.path("merged.safetensors").to_str().unwrap(), &format!("{}:0.5", m.display()), &format!("{n}:0.5")])
        } },
    Case { name: "profile merge of a checkpoint holding NaN", expect: &["nan.safetensors: tensor `cond_stage_model.transformer.text_model.final_layer_norm.weight` holds NaN or inf"],
        setup: |sc| {
            let nan = nan_checkpoint(sc);
            profile_merge(sc, &format!("{{ checkpoint = \"{}\", weight = 0.5 }}, {{ checkpoint = \"{}\", weight = 0.5 }}", tiny_ldm().display(), nan.display()))
        } },
    Case { name: "profile merge weight NaN", expect: &["p.toml:", "a merge's weight must be a number between -100 and 100"],
        setup: |sc| profile_merge(sc, &format!("{{ checkpoint = \"{0}\", weight = 0.5 }}, {{ checkpoint = \"{0}\", weight = nan }}", tiny_ldm().display())) },
    Case { name: "merge ratio overflowing fp32", expect: &["merge (model + (big - model) * 100): tensor `cond_stage_model.transformer.text_model.final_layer_norm.weight", "becomes NaN or inf"],
        setup: |sc| {
            let model = sc.path("model.safetensors");
            std::fs::copy(tiny_ldm(), &model).unwrap();
            let (m, b) = (model.to_str().unwrap(), big_checkpoint(sc));
            s(&["merge", sc.path("merged.safetensors").to_str().unwrap(), "--add-difference", m, b.to_str().unwrap(), &format!("{m}:100")])
        } },
    Case { name: "profile merge weights overflowing fp32", expect: &["the merge (big.safetensors:100 + sd1-tiny.safetensors:1) makes `", "NaN or inf in fp32"],
        setup: |sc| profile_merge(sc, &format!("{{ checkpoint = \"{}\", weight = 100 }}, {{ checkpoint = \"{}\", weight = 1 }}", big_checkpoint(sc).display(), tiny_ldm().display())) },
    // --- upscaler files ---
    Case { name: "upscaler with 0 channels", expect: &["`bad.safetensors`: tensor `conv_first.weight` has shape [0, 3, 3, 3] (a dimension of 0)"],
        setup: |sc| esrgan(sc, |t| set(t, "conv_first.weight", zeros(&[0, 3, 3, 3]))) },
    Case { name: "upscaler with 1 output channel", expect: &["`bad.safetensors`: tensor `conv_last.weight` gives 1 output channel: hiresfix runs RGB models"],
        setup: |sc| esrgan(sc, |t| conv(t, "conv_last", 1, 8)) },
    Case { name: "upscaler with 1 input channel", expect: &["`bad.safetensors`: tensor `conv_first.weight` takes 1 input channel:"],
        setup: |sc| esrgan(sc, |t| conv(t, "conv_first", 8, 1)) },
    Case { name: "upscaler with a non-square kernel", expect: &["`bad.safetensors`: tensor `conv_hr.weight` has a 3×1 kernel"],
        setup: |sc| esrgan(sc, |t| set(t, "conv_hr.weight", zeros(&[8, 8, 3, 1]))) },
    Case { name: "upscaler with 40 up-convs", expect: &["`bad.safetensors`: 40 upsampling convs", "at most 4"],
        setup: |sc| esrgan(sc, |t| (3..=40).for_each(|i| conv(t, &format!("conv_up{i}"), 8, 8))) },
    Case { name: "upscaler missing a key", expect: &["`bad.safetensors`: tensor `conv_hr.weight` is missing"],
        setup: |sc| esrgan(sc, |t| remove(t, "conv_hr.weight")) },
    Case { name: "upscaler missing a block's conv", expect: &["`bad.safetensors`: tensor `body.0.rdb2.conv3.weight` is missing"],
        setup: |sc| esrgan(sc, |t| remove(t, "body.0.rdb2.conv3.weight")) },
    Case { name: "upscaler with an extra key", expect: &["`bad.safetensors`: 1 tensor RRDBNet does not use (first: `extra.weight`)"],
        setup: |sc| esrgan(sc, |t| set(t, "extra.weight", zeros(&[2]))) },
    Case { name: "upscaler conv of the wrong width", expect: &["`bad.safetensors`: tensor `body.0.rdb1.conv2.weight` has 41 input channels, not 40"],
        setup: |sc| esrgan(sc, |t| set(t, "body.0.rdb1.conv2.weight", zeros(&[32, 41, 3, 3]))) },
    Case { name: "upscaler bias of the wrong size", expect: &["`bad.safetensors`: tensor `conv_body.bias` has shape [9], not [8]"],
        setup: |sc| esrgan(sc, |t| set(t, "conv_body.bias", zeros(&[9]))) },
    Case { name: "upscaler 2-D conv weight", expect: &["`bad.safetensors`: tensor `conv_body.weight` has shape [8, 8], not a conv's"],
        setup: |sc| esrgan(sc, |t| set(t, "conv_body.weight", zeros(&[8, 8]))) },
    Case { name: "compact upscaler with 1 output channel", expect: &["`bad.safetensors`: tensor `body.10.weight` gives 1 channels, not 3 × scale²"],
        setup: |sc| compact(sc, |t| conv(t, "body.10", 1, 16)) },
    Case { name: "compact upscaler PReLU of the wrong size", expect: &["`bad.safetensors`: tensor `body.3.weight` has shape [5]"],
        setup: |sc| compact(sc, |t| set(t, "body.3.weight", zeros(&[5]))) },
    Case { name: "old-layout ESRGAN with a 4×4 dense conv", expect: &["`bad.safetensors`: tensor `model.1.sub.0.RDB1.conv1.0.weight` has a 4×4 kernel"],
        setup: |sc| upscaler(sc, "esrgan-old-x4.safetensors", |t| set(t, "model.1.sub.0.RDB1.conv1.0.weight", zeros(&[32, 8, 4, 4]))) },
    Case { name: "upscaler file cut short", expect: &["`bad.safetensors`: not a readable safetensors file", "cut or damaged"],
        setup: |sc| {
            let bytes = std::fs::read(repo().join("tests/data/upscalers/models/realesrgan-x4.safetensors")).unwrap();
            std::fs::create_dir_all(sc.path("upscalers")).unwrap();
            std::fs::write(sc.path("upscalers/bad.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
            upscaler_profile(sc)
        } },
];

fn run_case(case: &Case) -> Result<(), String> {
    let scratch = corpus::scratch("hostile", case.name);
    let run = corpus::run(&scratch, &(case.setup)(&scratch));
    // Shown with --nocapture: the README's table quotes these.
    println!("{}: {}", case.name, run.line);
    let lower = run.err.to_lowercase();
    let mut problems = run.problems(1, case.expect);
    problems.extend(
        [
            (lower.contains("panicked") || lower.contains("unwrap"))
                .then(|| "panicked".to_string()),
            lower
                .contains("internal torch error")
                .then(|| "raw libtorch text".to_string()),
            (run.line.contains("checkpoint's tensor") && case.name.contains("LoRA"))
                .then(|| "blames the checkpoint".to_string()),
        ]
        .into_iter()
        .flatten(),
    );
    corpus::verdict(case.name, problems, &run.err)
}

#[test]
fn every_hostile_model_file_fails_in_one_line_naming_the_file_and_tensor() {
    assert!(CASES.len() >= 20, "{} cases", CASES.len());
    corpus::assert_all_hold(CASES.iter().map(run_case).collect());
}

/// The same LoRA at a sane weight runs: the refusals above are about the files, not LoRA.
#[test]
fn the_intact_lora_and_upscaler_the_cases_start_from_run() {
    let scratch = Scratch::new("hostile-intact");
    let args = with_lora(&scratch, "0.8", |_| {});
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = hiresfix(&scratch.0, &refs, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let scratch = Scratch::new("hostile-intact-upscaler");
    let args = esrgan(&scratch, |_| {});
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = hiresfix(&scratch.0, &refs, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// The corpus cases' names (README's reliability table lists each).
pub(crate) fn case_names() -> Vec<&'static str> {
    CASES.iter().map(|c| c.name).collect()
}
