//! Checkpoint merging (`hiresfix merge`, `[model] merge`) and per-pass checkpoint switching:
//! the merged weights equal the weighted sum / add-difference computed here, the result loads
//! and generates, a switch loads each checkpoint once, and `check` warns about the switch.

use std::path::{Path, PathBuf};

use crate::common::*;
use host_api::tch::{Kind, Tensor};

/// A second tiny SD 1.x checkpoint: every float weight of the first scaled by 0.9 (another
/// text encoder and UNet, the same family and architecture).
fn second_checkpoint(scratch: &Scratch) -> PathBuf {
    let path = scratch.path("other.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(tiny_ldm())
        .unwrap()
        .into_iter()
        .map(|(k, t)| {
            let scaled = match t.is_floating_point() && !k.contains("alphas") && k != "betas" {
                true => t * 0.9,
                false => t,
            };
            (k, scaled)
        })
        .collect();
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

fn tensors(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn run(scratch: &Scratch, args: &[&str]) -> std::process::Output {
    let out = hiresfix(&scratch.0, args, &[]);
    assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    out
}

/// The largest difference between `out` and `expected(a, b, …)` over the float tensors of `out`.
fn worst(out: &Path, inputs: &[PathBuf], expected: impl Fn(&[&Tensor]) -> Tensor) -> f64 {
    let out = tensors(out);
    let inputs: Vec<_> = inputs.iter().map(|p| tensors(p)).collect();
    let mut worst = 0f64;
    for (key, merged) in &out {
        if !merged.is_floating_point() {
            continue;
        }
        let parts: Vec<&Tensor> = inputs.iter().map(|t| &t[key]).collect();
        let want = expected(&parts);
        let diff = f64::try_from(
            (merged.to_kind(Kind::Double) - want.to_kind(Kind::Double))
                .abs()
                .max(),
        )
        .unwrap();
        worst = worst.max(diff);
    }
    worst
}

#[test]
fn merge_writes_the_weighted_sum_and_the_add_difference() {
    let scratch = Scratch::new("merge");
    let (a, b) = (tiny_ldm(), second_checkpoint(&scratch));
    let sum = scratch.path("sum.safetensors");
    let spec = |p: &Path, w: &str| format!("{}:{w}", p.display());
    run(
        &scratch,
        &[
            "merge",
            sum.to_str().unwrap(),
            &spec(&a, "0.7"),
            &spec(&b, "0.3"),
        ],
    );
    let err = worst(&sum, &[a.clone(), b.clone()], |t| t[0] * 0.7 + t[1] * 0.3);
    assert!(err <= 1e-7, "weighted sum off by {err}");
    let diff = scratch.path("diff.safetensors");
    let c = scratch.path("c.safetensors");
    std::fs::copy(&a, &c).unwrap();
    run(
        &scratch,
        &[
            "merge",
            diff.to_str().unwrap(),
            "--add-difference",
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            &spec(&c, "0.5"),
        ],
    );
    let err = worst(&diff, &[a.clone(), b.clone(), c.clone()], |t| {
        t[0] + (t[1] - t[2]) * 0.5
    });
    assert!(err <= 1e-6, "add-difference off by {err}");
    let recipe = hiresfix_safetensors_metadata(&sum);
    assert!(recipe.contains("sd1-tiny:0.7 + other:0.3"), "{recipe}");
    // The result loads and generates.
    let profile = scratch.write("p.toml", &tiny_profile(&sum, "", "", ""));
    run(&scratch, &["generate", profile.to_str().unwrap()]);
    assert_eq!(scratch.pngs().len(), 1);
}

/// The `hiresfix_merge` entry of a safetensors file's metadata.
fn hiresfix_safetensors_metadata(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    header["__metadata__"]["hiresfix_merge"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_profile_merge_renders_like_the_merged_file() {
    let scratch = Scratch::new("profile-merge");
    let (a, b) = (tiny_ldm(), second_checkpoint(&scratch));
    let merged = scratch.path("merged.safetensors");
    let spec = |p: &Path, w: &str| format!("{}:{w}", p.display());
    run(
        &scratch,
        &[
            "merge",
            merged.to_str().unwrap(),
            &spec(&a, "0.6"),
            &spec(&b, "0.4"),
        ],
    );
    let from_file = scratch.write("file.toml", &tiny_profile(&merged, "", "", ""));
    run(
        &scratch,
        &["generate", from_file.to_str().unwrap(), "-o", "file.png"],
    );
    let recipe = format!(
        "[model]\nmerge = [{{ checkpoint = \"{}\", weight = 0.6 }}, {{ checkpoint = \"{}\", weight = 0.4 }}]",
        a.display(),
        b.display()
    );
    let text = tiny_profile(&a, "", "", "").replace(
        &format!("[model]\ncheckpoint = \"{}\"", a.display()),
        &recipe,
    );
    let in_profile = scratch.write("merge.toml", &text);
    run(
        &scratch,
        &["generate", in_profile.to_str().unwrap(), "-o", "merge.png"],
    );
    let (_, _, x) = hiresfix::output::read_rgb8(&scratch.path("file.png")).unwrap();
    let (_, _, y) = hiresfix::output::read_rgb8(&scratch.path("merge.png")).unwrap();
    let worst = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (*p as i32 - *q as i32).abs())
        .max()
        .unwrap();
    assert!(worst <= 1, "max pixel difference {worst}");
}

#[test]
fn a_pass_switching_checkpoints_loads_each_once_and_check_warns() {
    let scratch = Scratch::new("switch");
    let other = second_checkpoint(&scratch);
    let pass2 = format!("checkpoint = \"{}\"", other.display());
    let text =
        tiny_profile(&tiny_ldm(), "batch = 2", "", &pass2).replace("steps = 2", "steps = 12");
    let profile = scratch.write("p.toml", &text);
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap()],
        &[("RUST_LOG", Path::new("info"))],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(scratch.pngs().len(), 2);
    for checkpoint in [tiny_ldm(), other.clone()] {
        let loads = log
            .matches(&format!("loading checkpoint {}", checkpoint.display()))
            .count();
        assert_eq!(
            loads,
            1,
            "{} loaded {loads} times:\n{log}",
            checkpoint.display()
        );
    }
    assert!(log.contains("warning: pass 2 `checkpoint`:"), "{log}");
    let check = run(&scratch, &["check", profile.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        text.contains(&format!(
            "warning: pass 2 `checkpoint`: {} has another text encoder than pass 1's",
            other.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("warning: pass 2 `steps`: 12 steps after switching to"),
        "{text}"
    );
}

/// A standalone VAE file (LDM keys without the checkpoint prefix) whose decoder output layer is
/// the tiny checkpoint's halved: another VAE of the same architecture.
fn other_vae(scratch: &Scratch) -> PathBuf {
    let path = scratch.path("other-vae.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(tiny_ldm())
        .unwrap()
        .into_iter()
        .filter_map(|(k, t)| {
            let k = k.strip_prefix("first_stage_model.")?.to_owned();
            let t = match k.starts_with("decoder.conv_out.") {
                true => t * 0.5,
                false => t,
            };
            Some((k, t))
        })
        .collect();
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

/// A per-pass VAE is swapped into the loaded model (the checkpoint loads once) and each pass's
/// image is decoded with its own VAE: pass 1 with the checkpoint's, pass 2 with the override,
/// exactly as runs using one VAE throughout.
#[test]
fn a_per_pass_vae_swaps_in_without_loading_the_checkpoint_again() {
    let scratch = Scratch::new("vae-swap");
    let vae = other_vae(&scratch);
    let pass2 = format!("vae = \"{}\"", vae.display());
    let swapped = scratch.write(
        "swapped.toml",
        &tiny_profile(&tiny_ldm(), "save_passes = true", "", &pass2),
    );
    let out = hiresfix(
        &scratch.0,
        &["generate", swapped.to_str().unwrap(), "-o", "s.png"],
        &[("RUST_LOG", Path::new("hiresfix_engine::models=debug"))],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("loading checkpoint").count(), 1, "{log}");
    assert!(log.contains("VAE swapped"), "{log}");
    let whole = scratch.write(
        "whole.toml",
        &tiny_profile(&tiny_ldm(), "save_passes = true", "", "")
            .replace("[model]", &format!("[model]\nvae = \"{}\"", vae.display())),
    );
    run(
        &scratch,
        &["-q", "generate", whole.to_str().unwrap(), "-o", "w.png"],
    );
    let plain = scratch.write(
        "plain.toml",
        &tiny_profile(&tiny_ldm(), "save_passes = true", "", ""),
    );
    run(
        &scratch,
        &["-q", "generate", plain.to_str().unwrap(), "-o", "p.png"],
    );
    let pixels = |name: &str| hiresfix::output::read_rgb8(&scratch.path(name)).unwrap();
    assert!(
        pixels("w.png") != pixels("p.png"),
        "the two VAEs decode alike"
    );
    assert!(
        pixels("s.png") == pixels("w.png"),
        "pass 2 not decoded with its VAE"
    );
    assert!(
        pixels("s-pass1.png") == pixels("p-pass1.png"),
        "pass 1 not decoded with the checkpoint's VAE"
    );
}
