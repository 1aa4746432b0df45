//! The A1111 options hiresfix honours change what a request makes (README "Options"); the
//! others are stored and returned.
use serde_json::json;

use crate::serve::{decode, get, images, post, Server};

#[test]
fn eta_noise_seed_delta_changes_ancestral_noise_and_is_written() {
    let server = Server::start("serve-ensd", &[]);
    let body = json!({"prompt": "a cat", "seed": 4, "sampler_name": "Euler a", "steps": 3,
                      "width": 64, "height": 64});
    let make = |body: &serde_json::Value| {
        let (status, response) = post(&server, "/sdapi/v1/txt2img", body);
        assert_eq!(status, 200, "{response}");
        decode(&images(&response)[0])
    };
    let (_, _, plain, parameters) = make(&body);
    assert!(!parameters.contains("ENSD"), "{parameters}");
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"eta_noise_seed_delta": 31337}),
    );
    assert_eq!(status, 200);
    assert_eq!(
        get(&server, "/sdapi/v1/options")["eta_noise_seed_delta"],
        31337
    );
    let (_, _, ensd, parameters) = make(&body);
    assert!(parameters.contains("ENSD: 31337"), "{parameters}");
    assert_ne!(plain, ensd, "Euler a's step noise did not change");
    // override_settings: this request only.
    let mut one = body.clone();
    one["override_settings"] = json!({"eta_noise_seed_delta": 5});
    let (_, _, _, parameters) = make(&one);
    assert!(parameters.contains("ENSD: 5"), "{parameters}");
    // Back to 0: the first image again.
    post(
        &server,
        "/sdapi/v1/options",
        &json!({"eta_noise_seed_delta": 0}),
    );
    let (_, _, again, _) = make(&body);
    assert_eq!(plain, again);
    let (status, text) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"eta_noise_seed_delta": "x"}),
    );
    assert_eq!(status, 422, "{text}");
}

/// `hires_fix_use_firstpass_conds` (here per request, in `override_settings`): the hires pass,
/// whose `hr_prompt` drops pass 1's LoRA tag, is conditioned with pass 1's LoRA set — the
/// same pixels as an `hr_prompt` carrying the LoRA on the text encoder only (`:1:0`).
#[test]
fn firstpass_conds_condition_the_hires_pass_with_pass_1s_loras() {
    let loras = crate::common::repo().join("tests/data/loras");
    let server = Server::start("serve-firstpass", &["--loras", loras.to_str().unwrap()]);
    let body = |hr_prompt: &str, firstpass: bool| {
        json!({"prompt": "a cat <lora:sd1-kohya:1>", "hr_prompt": hr_prompt, "seed": 3,
               "steps": 1, "width": 64, "height": 64, "enable_hr": true, "hr_scale": 1.5,
               "hr_upscaler": "Latent", "denoising_strength": 0.5, "hr_second_pass_steps": 1,
               "override_settings": {"hires_fix_use_firstpass_conds": firstpass}})
    };
    let pixels = |body: &serde_json::Value| {
        let (status, response) = post(&server, "/sdapi/v1/txt2img", body);
        assert_eq!(status, 200, "{response}");
        decode(&images(&response)[0]).2
    };
    let own = pixels(&body("a cat", false));
    let firstpass = pixels(&body("a cat", true));
    let text_encoder_only = pixels(&body("a cat <lora:sd1-kohya:1:0>", false));
    assert_ne!(own, firstpass, "the option changed nothing");
    assert_eq!(firstpass, text_encoder_only);
}
