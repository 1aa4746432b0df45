//! `/sdapi/v1/extra-single-image` and `/extra-batch-images` (A1111's Extras upscale) and
//! `hiresfix upscale`, with the request shapes of A1111's own API tests transcribed from
//! AUTOMATIC1111/stable-diffusion-webui `test/test_extras.py` (test_simple_upscaling_performed,
//! test_png_info_performed, test_interrogate_performed — all three post to
//! extra-single-image) and `test/test_utils.py` (test_options_write, test_get_api_url).
use base64::Engine;
use serde_json::{json, Value};

use crate::common::{hiresfix, repo, stderr, Scratch};
use crate::serve::{get, post, Server};

/// A `w` × `h` RGB PNG with a smooth pattern and a `parameters` text.
fn png(w: u32, h: u32) -> Vec<u8> {
    let pixels: Vec<u8> = (0..h)
        .flat_map(|y| (0..w).flat_map(move |x| [(x * 4) as u8, (y * 5) as u8, ((x + y) * 2) as u8]))
        .collect();
    hiresfix::output::encode_png(w, h, &pixels, "a cat\nSteps: 3, Seed: 7", "", None).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Width, height and text chunks of a base64 PNG.
fn decoded(b64: &str) -> (u32, u32, Vec<(String, String)>) {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let chunks =
        hiresfix::output::read_text_chunks_from(std::io::Cursor::new(&bytes), "image").unwrap();
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    (info.width, info.height, chunks)
}

fn text<'a>(chunks: &'a [(String, String)], key: &str) -> &'a str {
    chunks
        .iter()
        .find(|(k, _)| k == key)
        .map_or("", |(_, v)| v.as_str())
}

/// A folder with the tiny Real-ESRGAN ×2 fixture under A1111's file name for "R-ESRGAN 2x+".
fn upscaler_dir(scratch: &Scratch) -> std::path::PathBuf {
    let dir = scratch.path("upscalers");
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = repo().join("tests/data/upscalers/models/realesrgan-x2.safetensors");
    std::os::unix::fs::symlink(fixture, dir.join("RealESRGAN_x2plus.safetensors")).unwrap();
    dir
}

#[test]
fn a1111_extras_test_requests_answer_200_with_images_of_the_expected_size() {
    let scratch = Scratch::new("serve-extras-dir");
    let dir = upscaler_dir(&scratch);
    let server = Server::start("serve-extras", &["--upscalers", dir.to_str().unwrap()]);
    let image = b64(&png(64, 48));

    // test_simple_upscaling_performed, as sent (resize_mode 0: upscaling_resize 2 wins).
    let body = json!({
        "resize_mode": 0, "show_extras_results": true, "gfpgan_visibility": 0,
        "codeformer_visibility": 0, "codeformer_weight": 0, "upscaling_resize": 2,
        "upscaling_resize_w": 128, "upscaling_resize_h": 128, "upscaling_crop": true,
        "upscaler_1": "Lanczos", "upscaler_2": "None", "extras_upscaler_2_visibility": 0,
        "image": image,
    });
    let (status, response) = post(&server, "/sdapi/v1/extra-single-image", &body);
    assert_eq!(status, 200, "{response}");
    let (w, h, chunks) = decoded(response["image"].as_str().unwrap());
    assert_eq!((w, h), (128, 96));
    assert_eq!(
        text(&chunks, "postprocessing"),
        "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    );
    assert_eq!(text(&chunks, "parameters"), "a cat\nSteps: 3, Seed: 7");
    assert_eq!(
        response["html_info"],
        "<p>Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos</p>"
    );

    // test_png_info_performed and test_interrogate_performed: only the image (and `model`);
    // upscaler_1 defaults to "None", so the image comes back at its size.
    for body in [
        json!({"image": image}),
        json!({"image": image, "model": "clip"}),
        // Upscaler "None" runs nothing, whatever the factor.
        json!({"image": image, "upscaler_1": "None", "upscaling_resize": 1000}),
    ] {
        let (status, response) = post(&server, "/sdapi/v1/extra-single-image", &body);
        assert_eq!(status, 200, "{response}");
        let (w, h, chunks) = decoded(response["image"].as_str().unwrap());
        assert_eq!((w, h), (64, 48));
        assert_eq!(text(&chunks, "postprocessing"), "");
    }

    // resize_mode 1 with crop: exactly the size asked; without: the covering size.
    let to = |crop: bool| {
        json!({"image": image, "resize_mode": 1, "upscaling_resize_w": 100,
               "upscaling_resize_h": 100, "upscaling_crop": crop, "upscaler_1": "Nearest"})
    };
    let (status, response) = post(&server, "/sdapi/v1/extra-single-image", &to(true));
    assert_eq!(status, 200, "{response}");
    let (w, h, chunks) = decoded(response["image"].as_str().unwrap());
    assert_eq!((w, h), (100, 100));
    assert_eq!(
        text(&chunks, "postprocessing"),
        "Postprocess upscale to: 100x100, Postprocess crop to: 100x100, Postprocess upscaler: Nearest"
    );
    let (status, response) = post(&server, "/sdapi/v1/extra-single-image", &to(false));
    assert_eq!(status, 200, "{response}");
    // Scale max(100/64, 100/48) = 2.083: int(64 × 2.083) // 8 × 8 = 128, int(48 × 2.083) = 100 → 96.
    let (w, h, _) = decoded(response["image"].as_str().unwrap());
    assert_eq!((w, h), (128, 96));

    // A model file by A1111's name, blended with Lanczos; listed under that name.
    let body = json!({"image": image, "upscaler_1": "R-ESRGAN 2x+", "upscaler_2": "Lanczos",
                      "extras_upscaler_2_visibility": 0.4, "upscaling_resize": 1.5});
    let (status, response) = post(&server, "/sdapi/v1/extra-single-image", &body);
    assert_eq!(status, 200, "{response}");
    let (w, h, chunks) = decoded(response["image"].as_str().unwrap());
    assert_eq!((w, h), (96, 72));
    assert_eq!(
        text(&chunks, "postprocessing"),
        "Postprocess upscale by: 1.5, Postprocess upscaler: R-ESRGAN 2x+, Postprocess upscaler 2: Lanczos"
    );
    let upscalers = get(&server, "/sdapi/v1/upscalers");
    let listed = upscalers
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "R-ESRGAN 2x+")
        .unwrap_or_else(|| panic!("R-ESRGAN 2x+ not in {upscalers}"));
    assert_eq!(listed["scale"], 2);
    assert!(listed["model_path"]
        .as_str()
        .unwrap()
        .ends_with("RealESRGAN_x2plus.safetensors"));
    let realesrgan = get(&server, "/sdapi/v1/realesrgan-models");
    let listed = realesrgan
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == "R-ESRGAN 2x+")
        .unwrap_or_else(|| panic!("R-ESRGAN 2x+ not in {realesrgan}"));
    assert_eq!(listed["scale"], 2, "{realesrgan}");

    // extra-batch-images: imageList of {data, name} → images.
    let body = json!({"upscaler_1": "Lanczos", "upscaling_resize": 2,
        "imageList": [{"data": image, "name": "a.png"}, {"data": b64(&png(32, 32)), "name": "b.png"}]});
    let (status, response) = post(&server, "/sdapi/v1/extra-batch-images", &body);
    assert_eq!(status, 200, "{response}");
    let sizes: Vec<(u32, u32)> = response["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let (w, h, _) = decoded(i.as_str().unwrap());
            (w, h)
        })
        .collect();
    assert_eq!(sizes, vec![(128, 96), (64, 64)]);
    assert!(response["html_info"]
        .as_str()
        .unwrap()
        .starts_with("<p>Postprocess"));
}

#[test]
fn extras_refusals_are_one_line_422s() {
    let server = Server::start("serve-extras-bad", &[]);
    let image = b64(&png(16, 16));
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"image": image, "gfpgan_visibility": 0.5}),
            "gfpgan_visibility",
            "face restoration",
        ),
        (
            json!({"image": image, "codeformer_visibility": 1}),
            "codeformer_visibility",
            "send 0",
        ),
        (
            json!({"image": image, "upscaler_1": "4x-Nope"}),
            "upscaler_1",
            "unknown upscaler `4x-Nope`",
        ),
        (
            json!({"image": image, "upscaler_1": "../x.pth"}),
            "upscaler_1",
            "is a path",
        ),
        (
            json!({"image": image, "upscaler_1": "Latent"}),
            "upscaler_1",
            "upscales latents",
        ),
        (
            json!({"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 1000}),
            "",
            "not a factor",
        ),
        (
            json!({"image": image, "upscaler_1": "Lanczos", "upscaling_resize": 0.1}),
            "",
            "under 8 px",
        ),
        (
            json!({"image": image, "resize_mode": 3}),
            "resize_mode",
            "is not 0",
        ),
        (
            json!({"image": "bm90IGEgcG5n"}),
            "image",
            "is not a PNG, JPEG or WebP image",
        ),
        (json!({"image": "%%%"}), "image", "not base64"),
        (json!({}), "image", "send the image"),
        (json!({"imageList": "x"}), "imageList", "must be a list"),
    ];
    for (body, field, expect) in cases {
        let path = match body.get("imageList") {
            Some(_) => "/sdapi/v1/extra-batch-images",
            None => "/sdapi/v1/extra-single-image",
        };
        let (status, response) = post(&server, path, &body);
        let detail = response["detail"].as_str().unwrap_or_default().to_owned();
        assert_eq!(status, 422, "{body}: {response}");
        assert!(detail.contains(expect), "{body}: {detail}");
        assert!(!detail.contains('\n') && detail.len() <= 300, "{detail}");
        if !field.is_empty() {
            assert!(detail.contains(field), "{field}: {detail}");
        }
    }
    // The server goes on.
    let (status, _) = post(
        &server,
        "/sdapi/v1/extra-single-image",
        &json!({"image": image}),
    );
    assert_eq!(status, 200);
}

#[test]
fn a1111_utils_test_requests_answer_200() {
    let server = Server::start("serve-utils", &[]);
    // test_options_write: send_seed read, flipped, read back.
    let before = get(&server, "/sdapi/v1/options")["send_seed"]
        .as_bool()
        .expect("send_seed is a bool");
    let (status, _) = post(&server, "/sdapi/v1/options", &json!({"send_seed": !before}));
    assert_eq!(status, 200);
    assert_eq!(get(&server, "/sdapi/v1/options")["send_seed"], !before);
    post(&server, "/sdapi/v1/options", &json!({"send_seed": before}));
    // test_get_api_url's endpoints.
    for url in [
        "sdapi/v1/cmd-flags",
        "sdapi/v1/samplers",
        "sdapi/v1/upscalers",
        "sdapi/v1/sd-models",
        "sdapi/v1/hypernetworks",
        "sdapi/v1/face-restorers",
        "sdapi/v1/realesrgan-models",
        "sdapi/v1/prompt-styles",
        "sdapi/v1/embeddings",
    ] {
        get(&server, &format!("/{url}"));
    }
}

#[test]
fn upscale_command_writes_the_upscaled_png_or_nothing() {
    let scratch = Scratch::new("upscale-cli");
    let input = scratch.path("in.png");
    std::fs::write(&input, png(40, 24)).unwrap();
    let dirs = upscaler_dir(&scratch);
    let run = |args: &[&str]| hiresfix(&scratch.0, args, &[]);
    let out = run(&["-q", "upscale", "in.png", "--upscaler", "Lanczos"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = scratch.path("in-upscaled.png");
    let (w, h, _) = hiresfix::png_pixels::read_rgb8(&written).unwrap();
    assert_eq!((w, h), (80, 48));
    assert_eq!(
        crate::common::chunk(&written, "postprocessing"),
        "Postprocess upscale by: 2.0, Postprocess upscaler: Lanczos"
    );
    assert_eq!(
        crate::common::chunk(&written, "parameters"),
        "a cat\nSteps: 3, Seed: 7"
    );

    let out = run(&[
        "-q",
        "upscale",
        "in.png",
        "--upscaler",
        "R-ESRGAN 2x+",
        "--scale",
        "3",
        "--upscalers",
        dirs.to_str().unwrap(),
        "-o",
        "model.png",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (w, h, _) = hiresfix::png_pixels::read_rgb8(&scratch.path("model.png")).unwrap();
    assert_eq!((w, h), (120, 72));

    // Failures: one line naming the input, exit 1, nothing written.
    for (args, expect) in [
        (
            vec!["upscale", "in.png", "--upscaler", "4x-Nope", "-o", "x.png"],
            "unknown upscaler `4x-Nope`",
        ),
        (
            vec![
                "upscale",
                "in.png",
                "--upscaler",
                "Lanczos",
                "--scale",
                "0",
                "-o",
                "x.png",
            ],
            "--scale: 0 is not a factor",
        ),
        (
            vec![
                "upscale",
                "nope.png",
                "--upscaler",
                "Lanczos",
                "-o",
                "x.png",
            ],
            "nope.png",
        ),
        (
            vec![
                "upscale",
                "in.png",
                "--upscaler",
                "Lanczos",
                "-o",
                "model.png",
            ],
            "model.png exists",
        ),
    ] {
        let out = run(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{args:?}: {err}");
        assert!(!scratch.path("x.png").exists());
    }
}

/// How far a JPEG's decode may be from libjpeg's (PIL's), in 8-bit levels.
const JPEG_LEVELS: u8 = 4;

/// The references of `scripts/make_extras_reference.py`: A1111's Extras with its built-in
/// upscalers run by PIL, on a 100 × 60 image (PNG, and JPEG for one case).
#[test]
fn extras_match_a1111s_pil_transcription() {
    let server = Server::start("serve-extras-parity", &[]);
    let dir = repo().join("tests/data/extras");
    let input = std::fs::read(dir.join("input.png")).unwrap();
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("cases.json")).unwrap()).unwrap();
    for (name, case) in cases.as_object().unwrap() {
        let mut body = case["request"].clone();
        body["image"] = json!(match case["input"].as_str() {
            // A JPEG (decoded as img2img's init images are).
            Some(file) => b64(&std::fs::read(dir.join(file)).unwrap()),
            None => b64(&input),
        });
        let (status, response) = post(&server, "/sdapi/v1/extra-single-image", &body);
        assert_eq!(status, 200, "{name}: {response}");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(response["image"].as_str().unwrap())
            .unwrap();
        let (w, h, ours) = hiresfix::png_pixels::rgb8_from_bytes(&bytes, name).unwrap();
        let want =
            hiresfix::png_pixels::read_rgb8(&dir.join(case["png"].as_str().unwrap())).unwrap();
        assert_eq!(json!([w, h]), case["size"], "{name}");
        let worst = ours
            .iter()
            .zip(&want.2)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        eprintln!("{name}: at most {worst} levels from PIL");
        // Nearest is exact; PIL's Lanczos resamples in 8-bit fixed point, the pixel plugin's
        // in floats: within 2 levels (measured: 2 on each Lanczos case, 0 on nearest). The
        // JPEG is decoded by the `image` crate, not libjpeg: their IDCTs and chroma
        // upsampling differ by a few levels (measured 3).
        let bound = match name {
            n if n.starts_with("jpeg") => JPEG_LEVELS,
            n if n.starts_with("nearest") => 0,
            _ => 2,
        };
        assert!(worst <= bound, "{name}: {worst} levels from PIL");
    }
}
