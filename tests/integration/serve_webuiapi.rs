//! The webuiapi client (mix1009/sdwebuiapi 0.9.17, `webuiapi/webuiapi.py` at ce232f0c) against
//! `hiresfix serve`: every public `WebUIApi` method's request as the client builds it — the
//! JSON bodies below are transcribed from its `txt2img`, `img2img`, `extra_single_image`,
//! `extra_batch_images`, `png_info`, ... (defaults as in its signatures; width, height and
//! steps are what a caller passes, small for the CPU test model) — and the response fields it
//! reads (`_to_api_result`: images / image, info / html_info, parameters; the `util_*`
//! helpers: titles, names, `sd_model_checkpoint`, progress and job_count).
//!
//! Not offered, by design: `interrogate` (no CLIP/DeepDanbooru captioner), face restoration
//! (`restore_faces`, GFPGAN/CodeFormer visibility), the extension interfaces (ControlNet's
//! `controlnet_*`, `prompt_gen`, ADetailer, AnimateDiff, roop, ReActor, SAG, segment-anything,
//! tagger) and `get_artists` / `get_artist_categories` (gone from A1111 itself): those URLs
//! answer 404 with one line naming the endpoint.
use base64::Engine;
use serde_json::{json, Value};

use crate::serve::{call, decode, get, images, post, Server};

/// webuiapi's `b64_img`: a data URL of a PNG.
fn b64_img(png: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    )
}

/// `WebUIApi.txt2img(prompt=..., seed=..., width=64, height=64, steps=3, **hires)` as the
/// client builds the body (sampler "Euler a", scheduler "automatic" are its defaults).
fn txt2img_body(prompt: &str, seed: i64, hires: Option<(f64, &str)>) -> Value {
    let (enable_hr, hr_scale, hr_upscaler) = match hires {
        Some((scale, upscaler)) => (true, scale, upscaler),
        None => (false, 2.0, "Latent"),
    };
    let mut body = json!({
        "enable_hr": enable_hr, "hr_scale": hr_scale, "hr_upscaler": hr_upscaler,
        "hr_second_pass_steps": 0, "hr_resize_x": 0, "hr_resize_y": 0,
        "hr_checkpoint_name": null, "hr_sampler_name": null, "hr_scheduler": null,
        "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7,
        "firstphase_width": 0, "firstphase_height": 0, "prompt": prompt, "styles": [],
        "seed": seed, "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0,
        "seed_resize_from_w": 0, "batch_size": 1, "n_iter": 1, "steps": 3, "cfg_scale": 7.0,
    });
    merge(&mut body, common());
    body
}

/// The fields webuiapi's txt2img and img2img bodies share (their defaults).
fn common() -> Value {
    json!({
        "width": 64, "height": 64, "restore_faces": false, "tiling": false,
        "do_not_save_samples": false, "do_not_save_grid": false, "negative_prompt": "",
        "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
        "override_settings": {}, "override_settings_restore_afterwards": true,
        "sampler_name": "Euler a", "scheduler": "automatic", "sampler_index": "Euler a",
        "script_name": null, "script_args": [], "send_images": true, "save_images": false,
        "alwayson_scripts": {},
    })
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

/// `WebUIApi.img2img(images=[image], mask_image=mask, width=64, height=64, steps=3)`.
fn img2img_body(image: &str, mask: Option<&str>) -> Value {
    let mut body = json!({
        "init_images": [image], "resize_mode": 0, "denoising_strength": 0.75,
        "mask_blur": 4, "inpainting_fill": 0, "inpaint_full_res": true,
        "inpaint_full_res_padding": 0, "inpainting_mask_invert": 0,
        "initial_noise_multiplier": 1, "prompt": "a cat", "styles": [], "seed": 3,
        "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
        "batch_size": 1, "n_iter": 1, "steps": 3, "cfg_scale": 7.0, "image_cfg_scale": 1.5,
        "include_init_images": false,
    });
    merge(&mut body, common());
    if let Some(mask) = mask {
        body["mask"] = json!(mask);
    }
    body
}

/// `extra_single_image` / `extra_batch_images`' shared fields (their defaults) with
/// `upscaler_1` and `upscaling_resize` as a caller passes them.
fn extras_fields(upscaler_1: &str, resize: f64) -> serde_json::Map<String, Value> {
    let body = json!({
        "resize_mode": 0, "show_extras_results": true, "gfpgan_visibility": 0,
        "codeformer_visibility": 0, "codeformer_weight": 0, "upscaling_resize": resize,
        "upscaling_resize_w": 512, "upscaling_resize_h": 512, "upscaling_crop": true,
        "upscaler_1": upscaler_1, "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
        "upscale_first": false,
    });
    body.as_object().unwrap().clone()
}

/// `_to_api_result`'s images decoded (as PIL would open them): their sizes.
fn sizes(response: &Value) -> Vec<(u32, u32)> {
    let list: Vec<String> = match response.get("image") {
        Some(Value::String(one)) => vec![one.clone()],
        _ => images(response),
    };
    list.iter()
        .map(|b64| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            let reader = png::Decoder::new(std::io::Cursor::new(bytes))
                .read_info()
                .unwrap();
            (reader.info().width, reader.info().height)
        })
        .collect()
}

/// A PNG made by the server (txt2img), for the image-taking calls.
fn generated(server: &Server) -> Vec<u8> {
    let (status, response) = post(
        server,
        "/sdapi/v1/txt2img",
        &txt2img_body("a cat", 11, None),
    );
    assert_eq!(status, 200, "{response}");
    base64::engine::general_purpose::STANDARD
        .decode(&images(&response)[0])
        .unwrap()
}

#[test]
fn webuiapi_generation_calls_work_with_its_request_bodies() {
    let server = Server::start("webuiapi-gen", &[]);
    // WebUIApi() calls check_extensions → get_scripts: scripts["txt2img"] is read.
    let scripts = get(&server, "/sdapi/v1/scripts");
    assert!(scripts["txt2img"].is_array() && scripts["img2img"].is_array());

    // txt2img: images, info (JSON text), parameters (the request echoed).
    let (status, response) = post(
        &server,
        "/sdapi/v1/txt2img",
        &txt2img_body("a cat", 11, None),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(sizes(&response), vec![(64, 64)]);
    let info: Value = serde_json::from_str(response["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["seed"], 11);
    assert_eq!(info["prompt"], "a cat");
    assert_eq!(response["parameters"]["prompt"], "a cat");

    // txt2img with enable_hr (HiResUpscaler.Latent and .Lanczos).
    for upscaler in ["Latent", "Lanczos"] {
        let body = txt2img_body("a dog", 12, Some((2.0, upscaler)));
        let (status, response) = post(&server, "/sdapi/v1/txt2img", &body);
        assert_eq!(status, 200, "{upscaler}: {response}");
        assert_eq!(sizes(&response), vec![(128, 128)], "{upscaler}");
        let (_, _, _, parameters) = decode(&images(&response)[0]);
        assert!(
            parameters.contains(&format!("Hires upscaler: {upscaler}")),
            "{parameters}"
        );
    }

    // png_info(image): info, items, parameters.
    let png = generated(&server);
    let (status, response) = post(
        &server,
        "/sdapi/v1/png-info",
        &json!({"image": b64_img(&png)}),
    );
    assert_eq!(status, 200, "{response}");
    assert!(
        response["info"].as_str().unwrap().starts_with("a cat\n"),
        "{response}"
    );
    assert_eq!(response["parameters"]["Seed"], "11");

    // extra_single_image(image, upscaler_1="Lanczos", upscaling_resize=2).
    let mut body = extras_fields("Lanczos", 2.0);
    body.insert("image".into(), json!(b64_img(&png)));
    let (status, response) = post(
        &server,
        "/sdapi/v1/extra-single-image",
        &Value::Object(body),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(sizes(&response), vec![(128, 128)]);
    assert!(response["html_info"]
        .as_str()
        .unwrap()
        .contains("Postprocess upscaler: Lanczos"));

    // extra_batch_images(images, upscaler_1="Nearest", upscaling_resize=1.5): names
    // "image00001", ... as the client makes them.
    let mut body = extras_fields("Nearest", 1.5);
    body.insert(
        "imageList".into(),
        json!([{"data": b64_img(&png), "name": "image00001"},
               {"data": b64_img(&png), "name": "image00002"}]),
    );
    let (status, response) = post(
        &server,
        "/sdapi/v1/extra-batch-images",
        &Value::Object(body),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(sizes(&response), vec![(96, 96), (96, 96)]);

    // interrupt() and skip(): POSTs without a body.
    for path in ["/sdapi/v1/interrupt", "/sdapi/v1/skip"] {
        let (status, text) = call("POST", &server.url(path), None, &[]);
        assert_eq!(status, 200, "{path}: {text}");
    }
    // custom_post("sdapi/v1/unload-checkpoint") / reload: {}; the next request loads again.
    for path in ["/sdapi/v1/unload-checkpoint", "/sdapi/v1/reload-checkpoint"] {
        let (status, text) = call("POST", &server.url(path), None, &[]);
        assert_eq!((status, text.as_str()), (200, "{}"), "{path}");
    }
    assert_eq!(
        generated(&server),
        png,
        "reloaded after unload, the same image"
    );
}

#[test]
fn webuiapi_listing_option_and_util_calls_work() {
    let server = Server::start("webuiapi-lists", &[]);
    // get_* listings: each a JSON list (get_options, get_cmd_flags, get_memory,
    // get_embeddings, get_progress: objects).
    for path in [
        "samplers",
        "sd-vae",
        "upscalers",
        "latent-upscale-modes",
        "loras",
        "sd-models",
        "hypernetworks",
        "face-restorers",
        "realesrgan-models",
        "prompt-styles",
        "schedulers",
    ] {
        assert!(
            get(&server, &format!("/sdapi/v1/{path}")).is_array(),
            "{path}"
        );
    }
    // A1111's other listings (not webuiapi methods): empty lists here.
    for path in ["script-info", "extensions"] {
        assert_eq!(
            get(&server, &format!("/sdapi/v1/{path}")),
            json!([]),
            "{path}"
        );
    }
    for path in [
        "options",
        "cmd-flags",
        "memory",
        "embeddings",
        "progress",
        "scripts",
    ] {
        assert!(
            get(&server, &format!("/sdapi/v1/{path}")).is_object(),
            "{path}"
        );
    }
    // refresh_checkpoints(): POST without a body.
    let (status, _) = call(
        "POST",
        &server.url("/sdapi/v1/refresh-checkpoints"),
        None,
        &[],
    );
    assert_eq!(status, 200);

    // util_get_model_names: sorted titles, each `file [hash]` (the closest-title match of
    // util_set_model depends on it).
    let models = get(&server, "/sdapi/v1/sd-models");
    let title = models[0]["title"].as_str().unwrap().to_owned();
    let hash = models[0]["hash"].as_str().expect("a short hash").to_owned();
    assert_eq!(title, format!("tiny.safetensors [{hash}]"));
    assert_eq!(hash.len(), 10);
    assert_eq!(models[0]["sha256"].as_str().unwrap()[..10], hash);
    // util_get_sampler_names / util_get_scheduler_names.
    let samplers = get(&server, "/sdapi/v1/samplers");
    assert!(samplers
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "Euler a"));
    let schedulers = get(&server, "/sdapi/v1/schedulers");
    assert!(schedulers
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == "karras"));

    // util_set_model(name.lower(), closest match) → set_options({"sd_model_checkpoint":
    // title}); util_get_current_model → get_options()["sd_model_checkpoint"].
    let (status, body) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": title}),
    );
    assert_eq!(status, 200, "{body}");
    let options = get(&server, "/sdapi/v1/options");
    assert_eq!(options["sd_model_checkpoint"], title);
    assert_eq!(options["sd_checkpoint_hash"], models[0]["sha256"]);
    // get_options / set_options of any A1111 key: stored and returned.
    let (status, _) = post(
        &server,
        "/sdapi/v1/options",
        &json!({"jpeg_quality": 95, "send_size": false}),
    );
    assert_eq!(status, 200);
    let options = get(&server, "/sdapi/v1/options");
    assert_eq!(
        (
            options["jpeg_quality"].clone(),
            options["send_size"].clone()
        ),
        (json!(95), json!(false))
    );

    // util_wait_for_ready: idle is progress 0.0 and job_count 0.
    let progress = get(&server, "/sdapi/v1/progress");
    assert_eq!(
        (
            progress["progress"].as_f64(),
            progress["state"]["job_count"].as_u64()
        ),
        (Some(0.0), Some(0))
    );

    // Not offered: one-line 404s naming the endpoint.
    for (method, path) in [
        ("POST", "/sdapi/v1/interrogate"),
        ("GET", "/controlnet/version"),
        ("GET", "/controlnet/model_list"),
        ("GET", "/promptgen/list_models"),
        ("GET", "/sdapi/v1/artists"),
    ] {
        let body = (method == "POST").then_some("{}");
        let (status, text) = call(method, &server.url(path), body, &[]);
        assert_eq!(status, 404, "{path}: {text}");
        let detail: Value = serde_json::from_str(&text).unwrap();
        assert!(detail["detail"].as_str().unwrap().contains(path), "{text}");
    }
}

#[test]
fn webuiapi_img2img_calls_work_with_its_request_bodies() {
    let server = Server::start("webuiapi-img2img", &[]);
    let png = generated(&server);
    // img2img(images=[image]).
    let (status, response) = post(
        &server,
        "/sdapi/v1/img2img",
        &img2img_body(&b64_img(&png), None),
    );
    assert_eq!(status, 200, "{response}");
    assert_eq!(sizes(&response), vec![(64, 64)]);
    let info: Value = serde_json::from_str(response["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["seed"], 3);
    // img2img(images=[image], mask_image=mask): a white square to repaint on black.
    let mut mask = vec![0u8; 64 * 64 * 3];
    for y in 16..48 {
        for x in 16..48 {
            mask[(y * 64 + x) * 3..(y * 64 + x) * 3 + 3].copy_from_slice(&[255, 255, 255]);
        }
    }
    let mask = hiresfix::output::encode_png(64, 64, &mask, "", "", None).unwrap();
    let body = img2img_body(&b64_img(&png), Some(&b64_img(&mask)));
    let (status, response) = post(&server, "/sdapi/v1/img2img", &body);
    assert_eq!(status, 200, "{response}");
    assert_eq!(sizes(&response), vec![(64, 64)]);
    // include_init_images false: parameters carry no init_images back.
    assert!(
        response["parameters"]["init_images"].is_null(),
        "{}",
        response["parameters"]
    );
}

/// webuiapi's `util_set_model(name)` (find_closest): the title among `util_get_model_names()`
/// (sorted) with the highest `difflib.SequenceMatcher(None, name.lower(), title).ratio()`, the
/// last of equals winning (`>=`), then `set_options({"sd_model_checkpoint": title})`.
fn util_set_model(server: &Server, name: &str) -> String {
    let name = name.to_lowercase();
    let mut titles: Vec<String> = get(server, "/sdapi/v1/sd-models")
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["title"].as_str().unwrap().to_owned())
        .collect();
    titles.sort();
    let found = match titles.contains(&name) {
        true => name.clone(),
        false => {
            let (mut best, mut best_ratio) = (titles[0].clone(), 0.0f32);
            for title in &titles {
                let ratio =
                    difflib::sequencematcher::SequenceMatcher::new(name.as_str(), title.as_str())
                        .ratio();
                if ratio >= best_ratio {
                    (best, best_ratio) = (title.clone(), ratio);
                }
            }
            best
        }
    };
    let (status, body) = post(
        server,
        "/sdapi/v1/options",
        &json!({"sd_model_checkpoint": found}),
    );
    assert_eq!(status, 200, "{body}");
    found
}

#[test]
fn util_set_model_picks_the_named_model_among_four_right_after_start_up() {
    let data = crate::common::repo().join("tests/data");
    // Without `[hash]` in every title, "sd1-tiny" would match "sd2-tiny.safetensors" best
    // (ratio 0.50 against 0.39 for "sd1-tiny.safetensors [0123456789]").
    let server = Server::with_models(
        "webuiapi-set-model",
        &[
            (
                "sd1-tiny.safetensors",
                data.join("sd1-tiny/sd1-tiny.safetensors"),
            ),
            (
                "sd2-tiny.safetensors",
                data.join("sd2-tiny/sd2-tiny.safetensors"),
            ),
            (
                "sdxl-tiny.safetensors",
                data.join("sdxl-tiny/sdxl-tiny.safetensors"),
            ),
            (
                "sd1-inpaint-tiny.safetensors",
                data.join("sd1-inpaint-tiny/sd1-inpaint-tiny.safetensors"),
            ),
        ],
    );
    let models = get(&server, "/sdapi/v1/sd-models");
    assert_eq!(models.as_array().unwrap().len(), 4, "{models}");
    for m in models.as_array().unwrap() {
        let hash = m["hash"]
            .as_str()
            .expect("every title has its hash at once");
        assert_eq!(
            m["title"],
            format!("{}.safetensors [{hash}]", m["model_name"].as_str().unwrap())
        );
    }
    let chosen = util_set_model(&server, "sd1-tiny");
    assert!(chosen.starts_with("sd1-tiny.safetensors ["), "{chosen}");
    // util_get_current_model, and a generation runs that model.
    assert_eq!(
        get(&server, "/sdapi/v1/options")["sd_model_checkpoint"],
        chosen
    );
    let (status, body) = post(
        &server,
        "/sdapi/v1/txt2img",
        &json!({"prompt": "a fox", "steps": 2}),
    );
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["sd_model_name"], "sd1-tiny", "{info}");
    // The same titles on a second listing (stable, not recomputed differently).
    let again = get(&server, "/sdapi/v1/sd-models");
    assert_eq!(again, models);
    // And the others by their names.
    for name in ["sd2-tiny", "sdxl-tiny", "sd1-inpaint-tiny"] {
        let chosen = util_set_model(&server, name);
        assert!(
            chosen.starts_with(&format!("{name}.safetensors [")),
            "{name}: {chosen}"
        );
    }
}
