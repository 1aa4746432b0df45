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
