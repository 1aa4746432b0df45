//! `POST /sdapi/v1/img2img` on loopback. The request shapes are transcribed from
//! AUTOMATIC1111's own API test, `test/test_img2img.py` of stable-diffusion-webui (its
//! `simple_img2img_request` fixture and the four tests built on it: simple, masked, inverted
//! mask, "sd upscale"); A1111's fixture images are replaced by the committed
//! tests/data/img2img/init.png and mask.png. Plus img2img + enable_hr (which A1111 lacks) and
//! the one-line 422s for bad images.
use base64::Engine;
use serde_json::{json, Value};

use crate::common::repo;
use crate::serve::{call, decode, images, post, Server};

fn b64(name: &str) -> String {
    let bytes = std::fs::read(repo().join("tests/data/img2img").join(name)).unwrap();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A `w` × `h` RGB PNG of a colour pattern, base64.
fn pattern_png(w: u32, h: u32) -> String {
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
    let png = hiresfix::output::encode_png(w, h, &rgb, "", "", None).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

/// A1111's `simple_img2img_request` (test/test_img2img.py), with its init image ours.
fn simple_request() -> Value {
    json!({
        "batch_size": 1,
        "cfg_scale": 7,
        "denoising_strength": 0.75,
        "eta": 0,
        "height": 64,
        "include_init_images": false,
        "init_images": [b64("init.png")],
        "inpaint_full_res": false,
        "inpaint_full_res_padding": 0,
        "inpainting_fill": 0,
        "inpainting_mask_invert": false,
        "mask": null,
        "mask_blur": 4,
        "n_iter": 1,
        "negative_prompt": "",
        "override_settings": {},
        "prompt": "example prompt",
        "resize_mode": 0,
        "restore_faces": false,
        "s_churn": 0,
        "s_noise": 1,
        "s_tmax": 0,
        "s_tmin": 0,
        "sampler_index": "Euler a",
        "seed": -1,
        "seed_resize_from_h": -1,
        "seed_resize_from_w": -1,
        "steps": 3,
        "styles": [],
        "subseed": -1,
        "subseed_strength": 0,
        "tiling": false,
        "width": 64,
    })
}

/// The one image of a 200 answer: its size and infotext.
fn one_image(status: u16, body: &Value) -> (u32, u32, String) {
    assert_eq!(status, 200, "{body}");
    let list = images(body);
    assert_eq!(list.len(), 1, "{body}");
    let (w, h, rgb, parameters) = decode(&list[0]);
    assert_eq!(rgb.len(), (w * h * 3) as usize);
    (w, h, parameters)
}

#[test]
fn a1111s_img2img_test_requests_answer_200_with_images_of_the_asked_size() {
    let server = Server::start("serve-img2img", &[]);
    // test_img2img_simple_performed
    let (status, body) = post(&server, "/sdapi/v1/img2img", &simple_request());
    let (w, h, parameters) = one_image(status, &body);
    assert_eq!((w, h), (64, 64));
    assert!(
        parameters.contains("Denoising strength: 0.75"),
        "{parameters}"
    );
    assert!(parameters.contains("Steps: 3,"), "{parameters}");
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(info["denoising_strength"], json!(0.75));
    assert_eq!(body["parameters"]["init_images"], Value::Null);

    // test_inpainting_masked_performed
    let mut masked = simple_request();
    masked["mask"] = json!(b64("mask.png"));
    let (status, body) = post(&server, "/sdapi/v1/img2img", &masked);
    let (w, h, parameters) = one_image(status, &body);
    assert_eq!((w, h), (64, 64));
    assert!(parameters.contains("Mask blur: 4"), "{parameters}");
    assert!(parameters.contains("Masked content: fill"), "{parameters}");

    // test_inpainting_with_inverted_masked_performed
    masked["inpainting_mask_invert"] = json!(true);
    let (status, body) = post(&server, "/sdapi/v1/img2img", &masked);
    let (_, _, parameters) = one_image(status, &body);
    assert!(
        parameters.contains("Mask mode: Inpaint not masked"),
        "{parameters}"
    );

    // test_img2img_sd_upscale_performed: A1111's fixture image is bigger than ours, so a
    // 64x64 one: 2x Lanczos to 128x128, 3 x 3 tiles of 64x64 with 8 px overlap.
    let mut upscale = simple_request();
    upscale["init_images"] = json!([pattern_png(64, 64)]);
    upscale["script_name"] = json!("sd upscale");
    upscale["script_args"] = json!(["", 8, "Lanczos", 2.0]);
    upscale["seed"] = json!(11);
    let (status, body) = post(&server, "/sdapi/v1/img2img", &upscale);
    let (w, h, parameters) = one_image(status, &body);
    assert_eq!((w, h), (128, 128));
    assert!(parameters.contains("Seed: 11,"), "{parameters}");
    let info: Value = serde_json::from_str(body["info"].as_str().unwrap()).unwrap();
    assert_eq!(
        info["extra_generation_params"]["SD upscale overlap"],
        json!(8)
    );
    upscale["script_args"] = json!(["", 8, "R-ESRGAN 4x+", 2.0]);
    let (status, body) = post(&server, "/sdapi/v1/img2img", &upscale);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("R-ESRGAN 4x+"),
        "{body}"
    );

    // Not in A1111: img2img → upscale → re-denoise in one request, both passes in the text.
    let mut hires = simple_request();
    hires["seed"] = json!(5);
    hires["denoising_strength"] = json!(0.6);
    hires["enable_hr"] = json!(true);
    hires["hr_scale"] = json!(2);
    hires["hr_second_pass_steps"] = json!(2);
    hires["hr_denoising_strength"] = json!(0.4);
    hires["include_init_images"] = json!(true);
    let (status, body) = post(&server, "/sdapi/v1/img2img", &hires);
    assert_eq!(status, 200, "{body}");
    let list = images(&body);
    assert_eq!(list.len(), 2, "the image and the init image");
    let (w, h, _, parameters) = decode(&list[0]);
    assert_eq!((w, h), (128, 128));
    for want in [
        "Denoising strength: 0.6",
        "Hires upscale: 2",
        "Hires steps: 2",
        "Hires denoising strength: 0.4",
    ] {
        assert!(parameters.contains(want), "{want} not in {parameters}");
    }
    assert_eq!(list[1], b64("init.png"));
    // A data: URL prefix is accepted too.
    let mut with_url = simple_request();
    with_url["init_images"] = json!([format!("data:image/png;base64,{}", b64("init.png"))]);
    with_url["steps"] = json!(1);
    let (status, body) = post(&server, "/sdapi/v1/img2img", &with_url);
    one_image(status, &body);
}

#[test]
fn bad_init_images_are_one_line_422s_naming_the_field() {
    let server = Server::start("serve-img2img-bad", &[]);
    let text = base64::engine::general_purpose::STANDARD.encode(b"just some text");
    let truncated_png = {
        let bytes = std::fs::read(repo().join("tests/data/img2img/init.png")).unwrap();
        base64::engine::general_purpose::STANDARD.encode(&bytes[..40])
    };
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "not base64",
            json!(["%%% not base64 %%%"]),
            "init_images[0] is not base64",
        ),
        ("not an image", json!([text]), "not a PNG, JPEG or WebP"),
        ("a cut PNG", json!([truncated_png]), "init_images[0]"),
        ("no list", json!("abc"), "init_images must be a list"),
        ("an empty list", json!([]), "init_images must be a list"),
    ];
    for (name, init, want) in cases {
        let mut request = simple_request();
        request["init_images"] = init;
        let (status, body) = post(&server, "/sdapi/v1/img2img", &request);
        assert_eq!(status, 422, "{name}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(want), "{name}: `{want}` not in {detail}");
        assert!(
            !detail.contains('\n') && detail.len() <= 300,
            "{name}: {detail}"
        );
        assert!(
            !detail.contains("/tmp/"),
            "{name}: the temporary path leaks: {detail}"
        );
    }
    let mut request = simple_request();
    request["mask"] = json!(pattern_png(16, 16));
    let (status, body) = post(&server, "/sdapi/v1/img2img", &request);
    assert_eq!(status, 422, "{body}");
    let detail = body["detail"].as_str().unwrap();
    assert!(
        detail.contains("mask is 16x16 but init_images[0] is 40x24"),
        "{detail}"
    );
    let mut request = simple_request();
    request["mask"] = json!(b64("mask.png"));
    request["inpainting_fill"] = json!(7);
    let (status, body) = post(&server, "/sdapi/v1/img2img", &request);
    assert_eq!(status, 422, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("inpainting_fill = 7"),
        "{body}"
    );
    // The native endpoint takes no server path as an init image or mask.
    for body in [
        r#"{"pass": [{"init_image": "/etc/hostname"}]}"#,
        r#"{"pass": [{"init_image": "in.png", "mask": "/etc/hostname"}]}"#,
    ] {
        let (status, text) = call(
            "POST",
            &server.url("/hiresfix/v1/generate"),
            Some(body),
            &[],
        );
        assert_eq!(status, 422, "{text}");
        assert!(text.contains("is a file on the server"), "{text}");
    }
}
