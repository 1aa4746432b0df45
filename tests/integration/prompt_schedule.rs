//! A1111 prompt editing and alternation through the host: 2-pass runs on the tiny SD1 model
//! whose conditioning switches at the same denoiser calls as A1111's (pass 1 Euler and Heun,
//! whose two calls a step advance the schedule twice; the hires pass counting its own steps),
//! against scripts/make_prompt_edit_reference.py; img2img counting the steps asked for; the
//! infotext keeping the prompt as written; and `hires_fix_use_firstpass_conds`.
//! (The schedules themselves: `prompt_schedule` unit tests against
//! scripts/make_prompt_schedule_reference.py.)

use std::collections::HashMap;

use crate::common::tensors::rel_err;
use crate::common::*;
use hiresfix::generate::{generate, prepare, RunOptions};
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::Tensor;

fn data(rel: &str) -> std::path::PathBuf {
    repo().join("tests/data/prompt_schedule").join(rel)
}

fn profile(prompt: &str, negative: &str, sampler1: &str, hires: &str, sampler2: &str) -> Profile {
    let q = |s: &str| toml::Value::from(s).to_string();
    let text = reference_profile(
        (prompt, negative, &tiny_ldm()),
        (32, 32, 6),
        &format!("sampler = {}", q(sampler1)),
        &format!(
            "upscaler = \"latent\"\nsampler = {}\nprompt = {}",
            q(sampler2),
            q(hires)
        ),
    );
    Profile::parse(&text, "prompt_schedule").unwrap()
}

#[test]
fn two_pass_runs_switch_conditionings_at_a1111s_denoiser_calls() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("run.json")).unwrap()).unwrap();
    let r: HashMap<String, Tensor> = Tensor::read_safetensors(data("run.safetensors"))
        .unwrap()
        .into_iter()
        .collect();
    let registry = Registry::load(&[], &Default::default());
    for name in ["edit", "alternate"] {
        let case = &json["cases"][name];
        let s = |k: &str| case[k].as_str().unwrap();
        let p = profile(
            s("prompt"),
            s("negative"),
            s("sampler1"),
            s("hires_prompt"),
            s("sampler2"),
        );
        let mut job = prepare(p, &registry, &repo()).unwrap();
        let result = job.run_image(1234).unwrap();
        let e1 = rel_err(&result.latents[0], &r[&format!("{name}.latent1")]);
        let e2 = rel_err(&result.latents[1], &r[&format!("{name}.latent2")]);
        eprintln!("{name}: pass 1 {e1:.2e}, pass 2 {e2:.2e}");
        assert!(e1 < 1e-4 && e2 < 1e-4, "{name}: {e1} {e2}");
    }
    // The references are not one conditioning: pass 1 of `edit` differs from `alternate`'s
    // switch points enough that a run ignoring the schedule could not match both.
    let apart = rel_err(&r["edit.latent1"], &r["alternate.latent1"]);
    assert!(apart > 1e-2, "{apart}");
}

#[test]
fn the_infotext_keeps_the_prompt_as_written() {
    let scratch = Scratch::new("prompt-schedule-infotext");
    let prompt = r"[red:blue:0.5], (a cat:1.2) [dog|fox|] BREAK \[x\] [[sky]::3]";
    let negative = "[ugly::0.25], [blurry|noisy]";
    let mut p = profile(prompt, negative, "euler", "", "euler");
    p.passes[1].prompt = None;
    p.output = scratch.path("out.png").to_string_lossy().into_owned();
    let registry = Registry::load(&[], &Default::default());
    let options = RunOptions {
        quiet: true,
        ..RunOptions::new(repo())
    };
    let png = generate(p, &registry, &options, &hiresfix::observer::SILENT)
        .unwrap()
        .remove(0);
    let text = chunk(&png, "parameters");
    let parsed = hiresfix::infotext::parse(&text);
    assert_eq!(parsed.prompt, prompt, "{text}");
    assert_eq!(parsed.negative, negative, "{text}");
    let imported = hiresfix::import::from_parameters(&text, &registry).unwrap();
    assert_eq!(imported.profile.prompt, prompt);
    assert_eq!(imported.profile.negative, negative);
}

/// A1111's `hires_fix_use_firstpass_conds`: pass 2 (no LoRA) encodes its prompt with pass 1's
/// LoRA set — the same as pass 2 running a tag of that LoRA with text-encoder weight 1 and
/// UNet weight 0 — and without the option it encodes with its own (none).
#[test]
fn firstpass_conds_encode_a_later_pass_with_pass_1s_loras() {
    let loras = repo().join("tests/data/loras");
    let run = |flag: bool, pass2_prompt: &str| {
        let mut p = profile("a photo of a cat", "", "euler", pass2_prompt, "euler");
        p.hires_fix_use_firstpass_conds = flag;
        p.lora_dirs = vec![loras.clone()];
        p.passes[0].loras = Some(vec![hiresfix::profile::LoraEntry {
            path: loras.join("sd1-kohya.safetensors").to_string_lossy().into(),
            weight: 1.0,
        }]);
        p.passes[1].loras = Some(Vec::new());
        let registry = Registry::load(&[], &Default::default());
        let mut job = prepare(p, &registry, &repo()).unwrap();
        job.run_image(1234).unwrap().latents
    };
    let with = run(true, "a photo of a cat");
    let tag = run(false, "a photo of a cat <lora:sd1-kohya:1:0>");
    let without = run(false, "a photo of a cat");
    assert_eq!(rel_err(&with[0], &without[0]), 0.0, "pass 1 is the same");
    let same = rel_err(&with[1], &tag[1]);
    let apart = rel_err(&with[1], &without[1]);
    eprintln!("pass 2: with vs tag {same:.2e}, with vs without {apart:.2e}");
    assert!(same < 1e-6 && apart > 1e-3, "{same} {apart}");
}

/// An img2img pass 1 builds its schedule for the steps asked for (A1111's `p.steps`) and runs
/// its last ones from call 0: 6 steps at denoise 0.6 run 4 calls (0..=3), so
/// `[red:blue:0.5]` (red through call 3) is `red` throughout, and `[red:blue:2]` is not.
#[test]
fn img2img_counts_the_steps_asked_for() {
    let registry = Registry::load(&[], &Default::default());
    let run = |prompt: &str| {
        let text = format!(
            r#"seed = 1234
prompt = {prompt}
cfg = 5.0
device = "cpu"
dtype = "fp32"
[model]
checkpoint = {checkpoint}
[[pass]]
width = 32
height = 32
steps = 6
sampler = "euler"
schedule = "normal"
init_image = "init.png"
denoise = 0.6
"#,
            prompt = toml::Value::from(prompt),
            checkpoint = toml::Value::from(tiny_ldm().to_string_lossy().as_ref()),
        );
        let p = Profile::parse(&text, "img2img.toml").unwrap();
        let dir = repo().join("tests/data/img2img");
        let mut job = prepare(p, &registry, &dir).unwrap();
        job.run_image(1234).unwrap().latents.remove(0)
    };
    let half = run("[red:blue:0.5]");
    assert_eq!(rel_err(&half, &run("red")), 0.0);
    let late = rel_err(&run("[red:blue:2]"), &half);
    assert!(late > 1e-3, "{late}");
}
