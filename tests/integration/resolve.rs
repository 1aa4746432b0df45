//! One request, three ways in — a TOML profile, an A1111 `/sdapi/v1/txt2img` body (mapped by
//! the server's own function, no server started) and an A1111 infotext (`replay
//! --to-profile`'s import) — resolves to one profile: every default and range rule lives in
//! `hiresfix::defaults`, and every entry point goes through `Profile::validate` / `resolve`.
use std::path::{Path, PathBuf};

use crate::common::{hiresfix, stderr, tiny_ldm, tiny_profile, Scratch};
use hiresfix::import::from_parameters;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use hiresfix::serve::txt2img::request_profile;
use serde_json::json;

fn registry() -> Registry {
    Registry::load(&[] as &[PathBuf], &Default::default())
}

/// The request as a profile's author writes it: samplers, schedules and upscalers by their
/// registry ids (a profile keeps a name as written, so an A1111 name would stay one).
const TOML: &str = r#"
seed = 1234
prompt = "a red fox in the snow"
negative = "blurry, lowres"
cfg = 6.5

[[pass]]
width = 512
height = 768
steps = 12
sampler = "dpmpp_2m"
schedule = "karras"

[[pass]]
scale = 1.5
upscaler = "latent"
steps = 8
denoise = 0.55
"#;

/// The same request as A1111 writes it under a PNG (its names: "DPM++ 2M Karras", "Latent").
const INFOTEXT: &str = "a red fox in the snow
Negative prompt: blurry, lowres
Steps: 12, Sampler: DPM++ 2M Karras, CFG scale: 6.5, Seed: 1234, Size: 512x768, Model hash: 0123456789, Model: sd1-tiny, Denoising strength: 0.55, Hires upscale: 1.5, Hires steps: 8, Hires upscaler: Latent, Version: v1.10.1";

fn a1111_body() -> serde_json::Map<String, serde_json::Value> {
    let body = json!({
        "prompt": "a red fox in the snow",
        "negative_prompt": "blurry, lowres",
        "seed": 1234,
        "steps": 12,
        "cfg_scale": 6.5,
        "sampler_name": "DPM++ 2M Karras",
        "width": 512,
        "height": 768,
        "enable_hr": true,
        "hr_scale": 1.5,
        "hr_upscaler": "Latent",
        "hr_second_pass_steps": 8,
        "denoising_strength": 0.55,
    });
    body.as_object().unwrap().clone()
}

#[test]
fn the_same_request_as_toml_a1111_body_and_infotext_resolves_to_the_same_profile() {
    let registry = registry();
    let mut from_toml = Profile::parse(TOML, "request.toml").unwrap();
    // Without a server nothing server-side is set (model, VAE, folders, device, dtype): no
    // field needs normalising before the comparison.
    let mut from_body = request_profile(&registry, &a1111_body()).unwrap();
    let imported = from_parameters(INFOTEXT, &registry).unwrap();
    // The model is named by file, which an infotext does not give: reported, not guessed.
    assert!(
        imported
            .unmapped
            .iter()
            .any(|u| u.starts_with("Model: sd1-tiny")),
        "{:?}",
        imported.unmapped
    );
    let mut from_infotext = imported.profile;
    for profile in [&mut from_toml, &mut from_body, &mut from_infotext] {
        profile.resolve_defaults(512).unwrap();
    }
    let text = |p: &Profile| toml::to_string(p).unwrap();
    assert_eq!(text(&from_body), text(&from_toml), "A1111 body vs TOML");
    assert_eq!(text(&from_infotext), text(&from_toml), "infotext vs TOML");
    assert_eq!(from_body, from_toml);
    assert_eq!(from_infotext, from_toml);
    // Resolved means resolved: pass 2 inherits pass 1's sampler and schedule, and resolving
    // again changes nothing.
    let hires = &from_toml.passes[1];
    assert_eq!(
        (hires.sampler.as_deref(), hires.schedule.as_deref()),
        (Some("dpmpp_2m"), Some("karras"))
    );
    let mut again = from_toml.clone();
    again.resolve_defaults(1024).unwrap();
    assert_eq!(again, from_toml);
}

#[test]
fn a_denoise_outside_its_range_is_refused_by_the_same_rule_at_every_entry_point() {
    let registry = registry();
    let rule = "denoise must be in [0, 1]";
    let toml_error = Profile::parse(&TOML.replace("0.55", "1.5"), "request.toml")
        .unwrap_err()
        .to_string();
    assert!(toml_error.contains(rule), "{toml_error}");
    let mut body = a1111_body();
    body.insert("denoising_strength".into(), json!(1.5));
    let body_error = request_profile(&registry, &body).unwrap_err();
    assert_eq!(body_error.field.as_deref(), Some("denoising_strength"));
    assert!(body_error.message.contains(rule), "{}", body_error.message);
    let imported = from_parameters(&INFOTEXT.replace("0.55", "1.5"), &registry).unwrap();
    assert!(
        imported
            .unmapped
            .iter()
            .any(|u| u.starts_with("Denoising strength: 1.5") && u.contains(rule)),
        "{:?}",
        imported.unmapped
    );
    assert_eq!(imported.profile.passes[1].denoise, None);
}

/// Resolved once means detected once too: a 2-pass run (families checked, model loaded,
/// lint, memory plan) asks which backend reads its checkpoint once, not once per question.
#[test]
fn a_run_detects_its_checkpoints_backend_once() {
    let scratch = Scratch::new("resolve-detect-once");
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "p.png"],
        &[("RUST_LOG", Path::new("hiresfix_engine::models=debug"))],
    );
    let log = stderr(&out);
    assert!(out.status.success(), "{log}");
    assert_eq!(log.matches("` reads ").count(), 1, "{log}");
}
