//! `hiresfix serve`'s A1111 variation seeds and sampler knobs: `subseed` / `subseed_strength`
//! / `seed_resize_from_*` change the image and come back in its infotext and `info`;
//! `eta`, `s_noise`, ... reach the samplers that have them, and are named in
//! `info.warnings` for one that has not.
use serde_json::{json, Value};

use crate::serve::{decode, get, images, info, post, Server};

fn txt2img(server: &Server, extra: Value) -> (Value, Vec<u8>, String) {
    let mut body = json!({
        "prompt": "a photo of a cat", "seed": 11, "steps": 3, "width": 64, "height": 64,
        "sampler_name": "Euler a", "cfg_scale": 5
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let (status, response) = post(server, "/sdapi/v1/txt2img", &body);
    assert_eq!(status, 200, "{body}: {response}");
    let (_, _, rgb, parameters) = decode(&images(&response)[0]);
    (info(&response), rgb, parameters)
}

fn differing(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).filter(|(x, y)| x != y).count()
}

#[test]
fn variation_seeds_and_sampler_knobs_are_honoured() {
    let server = Server::start("serve-seeds", &[]);
    let (plain_info, plain, plain_text) = txt2img(&server, json!({}));
    assert!(!plain_text.contains("Variation seed"), "{plain_text}");
    assert_eq!(plain_info.get("warnings"), None, "{plain_info}");

    // Variation seeds: 200, no warning for them, the infotext and info carry them.
    let (varied_info, varied, text) = txt2img(
        &server,
        json!({"subseed": 5678, "subseed_strength": 0.3, "seed_resize_from_w": 96, "seed_resize_from_h": 80}),
    );
    assert_eq!(varied_info.get("warnings"), None, "{varied_info}");
    let params = hiresfix::infotext::parse(&text);
    assert_eq!(params.get("Seed"), Some("11"), "{text}");
    assert_eq!(params.get("Variation seed"), Some("5678"), "{text}");
    assert_eq!(params.get("Variation seed strength"), Some("0.3"), "{text}");
    assert_eq!(params.get("Seed resize from"), Some("96x80"), "{text}");
    assert_eq!(varied_info["subseed"], json!(5678));
    assert_eq!(varied_info["subseed_strength"], json!(0.3));
    assert_eq!(varied_info["seed_resize_from_w"], json!(96));
    assert!(differing(&plain, &varied) > plain.len() / 10);

    // A batch with a strength keeps the seed and counts the subseed up (A1111).
    let (batch_info, _, _) = txt2img(
        &server,
        json!({"subseed": 5678, "subseed_strength": 0.3, "batch_size": 2}),
    );
    assert_eq!(batch_info["all_seeds"], json!([11, 11]), "{batch_info}");
    assert_eq!(
        batch_info["all_subseeds"],
        json!([5678, 5679]),
        "{batch_info}"
    );

    // eta for an ancestral sampler: honoured (another image than eta 1), written as "Eta".
    let (_, eta_one, one_text) = txt2img(&server, json!({"eta": 1.0}));
    assert!(
        !one_text.contains("Eta"),
        "eta 1 is the default: {one_text}"
    );
    assert_eq!(eta_one, plain, "eta 1 is Euler a's default");
    let (eta_info, eta_half, half_text) = txt2img(&server, json!({"eta": 0.5}));
    assert_eq!(eta_info.get("warnings"), None, "{eta_info}");
    assert!(half_text.contains("Eta: 0.5"), "{half_text}");
    assert!(differing(&eta_one, &eta_half) > plain.len() / 10);

    // s_noise for a sampler without it: the image is made, the field named.
    let (noise_info, _, _) = txt2img(&server, json!({"sampler_name": "DPM++ 2M", "s_noise": 1.2}));
    let warnings = noise_info["warnings"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(warnings.len(), 1, "{noise_info}");
    let warning = warnings[0].as_str().unwrap();
    assert!(
        warning.starts_with("s_noise = 1.2 was ignored") && warning.contains("dpmpp_2m"),
        "{warning}"
    );

    // PLMS is listed under A1111's name and runs (with a hires pass too).
    let listed = get(&server, "/sdapi/v1/samplers");
    let plms = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "PLMS");
    assert_eq!(
        plms.map(|s| s["aliases"][0].clone()),
        Some(json!("plms")),
        "{listed}"
    );
    let (_, _, plms_text) = txt2img(
        &server,
        json!({"sampler_name": "PLMS", "enable_hr": true, "denoising_strength": 0.5}),
    );
    assert!(plms_text.contains("Sampler: PLMS"), "{plms_text}");
    assert!(plms_text.contains("Schedule type: DDIM"), "{plms_text}");

    // Out of range: a 422 naming the field.
    for (field, value) in [("subseed_strength", json!(1.5)), ("s_noise", json!(1e9))] {
        let body = json!({"prompt": "x", "steps": 1, field: value});
        let (status, response) = post(&server, "/sdapi/v1/txt2img", &body);
        assert_eq!(
            (status, response["field"].as_str()),
            (422, Some(field)),
            "{response}"
        );
    }
}
