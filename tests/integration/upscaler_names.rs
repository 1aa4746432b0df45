//! An A1111 user's upscaler folder as it is: `.pth` and `.safetensors` ESRGAN-family files
//! under A1111's file names and their own, a SwinIR file and two hostile pickles. Every
//! upscaler `/sdapi/v1/upscalers` lists as usable runs by the name it is listed under, through
//! the API (extras, txt2img's hires pass) and the CLI (`upscale`, a profile's `upscaler`); the
//! A1111 names are all listed with their files and scales; the hostile pickles are listed as
//! refused, every use of them is a one-line error naming the file and the global, and the
//! marker file their pickles would create never appears. One server for all of it.
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use base64::Engine;
use serde_json::{json, Value};

use crate::common::{generate_as, hiresfix, repo, stderr, tiny_ldm, tiny_profile, Scratch};
use crate::serve::{get, post, Server};

/// The file the hostile pickles would create: `$HIRESFIX_TEST_MARKER`, set once for this test
/// binary (every hiresfix process it starts inherits it).
pub fn marker() -> &'static Path {
    static MARKER: OnceLock<PathBuf> = OnceLock::new();
    MARKER.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("hiresfix-marker-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        std::env::set_var("HIRESFIX_TEST_MARKER", &path);
        path
    })
}

/// (fixture under tests/data/upscalers, name in the folder).
const FOLDER: &[(&str, &str)] = &[
    ("models/realesrgan-x2.pth", "4x-UltraSharp.pth"),
    ("models/compact-x4.pth", "RealESRGAN_x4plus.pth"),
    ("models/realesrgan-x4-params-ema.pth", "ESRGAN_4x.pth"),
    ("models/esrgan-old-x4.safetensors", "old-x4.safetensors"),
    ("models/realesrgan-x1.pth", "mine-x1.pth"),
    ("pth/compact-x4-legacy.pt", "legacy-x4.pt"),
    ("pth/marker-os-system.pth", "marker-os-system.pth"),
    ("pth/marker-eval.pth", "marker-eval.pth"),
    // Named as A1111's SwinIR file: refused by its architecture, never opened.
    ("pth/marker-eval.pth", "SwinIR_4x.pth"),
];

/// Usable upscalers: (listed name, scale from the file).
const USABLE: &[(&str, i64)] = &[
    ("4x-UltraSharp", 2),
    ("ESRGAN_4x", 4),
    ("legacy-x4", 4),
    ("mine-x1", 1),
    ("old-x4", 4),
    ("R-ESRGAN 4x+", 4),
];

fn folder(scratch: &Scratch) -> PathBuf {
    let dir = scratch.path("ESRGAN");
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to) in FOLDER {
        std::fs::copy(repo().join("tests/data/upscalers").join(from), dir.join(to)).unwrap();
    }
    dir
}

fn png_b64(w: u32, h: u32) -> String {
    let pixels: Vec<u8> = (0..w * h)
        .flat_map(|i| [(i * 7) as u8, (i * 3) as u8, 90])
        .collect();
    let png = hiresfix::output::encode_png(w, h, &pixels, "", "", None).unwrap();
    base64::engine::general_purpose::STANDARD.encode(png)
}

fn by_name<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {list}"))
}

fn detail(v: &Value) -> String {
    v["detail"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn every_listed_upscaler_runs_by_its_listed_name_and_hostile_pickles_are_refused() {
    let marker = marker();
    let scratch = Scratch::new("upscaler-names");
    let dir = folder(&scratch);
    let server = Server::start(
        "upscaler-names-serve",
        &["--upscalers", dir.to_str().unwrap()],
    );

    // The listing: every A1111 name, with its file and scale; files by stem; refusals.
    let upscalers = get(&server, "/sdapi/v1/upscalers");
    for name in [
        "R-ESRGAN 4x+",
        "R-ESRGAN 4x+ Anime6B",
        "R-ESRGAN 2x+",
        "R-ESRGAN General 4xV3",
        "R-ESRGAN General WDN 4xV3",
        "R-ESRGAN AnimeVideo",
        "ESRGAN_4x",
        "4x-UltraSharp",
        "SwinIR_4x",
        "LDSR",
        "ScuNET",
    ] {
        let entry = by_name(&upscalers, name);
        for key in ["model_name", "model_path", "model_url", "scale"] {
            assert!(entry.get(key).is_some(), "{name}: no {key} in {entry}");
        }
    }
    for (name, scale) in USABLE {
        let entry = by_name(&upscalers, name);
        assert_eq!(entry["scale"], *scale, "{entry}");
        assert!(entry.get("refused").is_none(), "{entry}");
        let path = entry["model_path"].as_str().unwrap();
        assert!(Path::new(path).starts_with(&dir), "{entry}");
    }
    assert!(by_name(&upscalers, "R-ESRGAN 4x+")["model_path"]
        .as_str()
        .unwrap()
        .ends_with("RealESRGAN_x4plus.pth"));
    // No file: A1111's scale, no path.
    let missing = by_name(&upscalers, "R-ESRGAN 2x+");
    assert_eq!(
        (&missing["model_path"], &missing["scale"]),
        (&Value::Null, &json!(2))
    );
    for (name, global) in [
        ("marker-os-system", "os.system"),
        ("marker-eval", "builtins.eval"),
    ] {
        let entry = by_name(&upscalers, name);
        assert_eq!(entry["scale"], Value::Null, "{entry}");
        let why = entry["refused"].as_str().unwrap();
        assert!(
            why.contains(&format!("refused: the pickle calls {global}")),
            "{why}"
        );
    }
    let swinir = by_name(&upscalers, "SwinIR_4x");
    assert!(swinir["model_path"]
        .as_str()
        .unwrap()
        .ends_with("SwinIR_4x.pth"));
    assert!(swinir["refused"]
        .as_str()
        .unwrap()
        .contains("a SwinIR model"));
    let realesrgan = get(&server, "/sdapi/v1/realesrgan-models");
    assert_eq!(by_name(&realesrgan, "4x-UltraSharp")["scale"], 2);
    assert_eq!(by_name(&realesrgan, "mine-x1")["scale"], 1);
    assert!(by_name(&realesrgan, "marker-eval")["refused"].is_string());
    assert!(!realesrgan.to_string().contains("SwinIR"), "{realesrgan}");

    // Every usable name through extras and the CLI; one through txt2img's hires pass.
    let image = png_b64(16, 12);
    let input = scratch.path("in.png");
    std::fs::write(
        &input,
        base64::engine::general_purpose::STANDARD
            .decode(&image)
            .unwrap(),
    )
    .unwrap();
    for (name, _) in USABLE {
        let body = json!({"image": image, "upscaler_1": name, "upscaling_resize": 2});
        let (status, response) = post(&server, "/sdapi/v1/extra-single-image", &body);
        assert_eq!(status, 200, "{name}: {response}");
        assert!(response["html_info"].as_str().unwrap().contains(name));
        let out = upscale_cli(&scratch, name, &format!("{name}.png"));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let (w, h, _) =
            hiresfix::png_pixels::read_rgb8(&scratch.path(&format!("{name}.png"))).unwrap();
        assert_eq!((w, h), (32, 24), "{name}");
    }
    // A file listed under A1111's name is also used by its stem.
    let out = hiresfix(
        &scratch.0,
        &[
            "-q",
            "upscale",
            "in.png",
            "--upscaler",
            "RealESRGAN_x4plus",
            "--upscalers",
            "ESRGAN",
            "-o",
            "stem.png",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let hires = json!({"prompt": "a cat", "seed": 3, "steps": 2, "enable_hr": true,
        "hr_scale": 1.5, "hr_second_pass_steps": 1, "denoising_strength": 0.5,
        "hr_upscaler": "4x-UltraSharp"});
    let (status, response) = post(&server, "/sdapi/v1/txt2img", &hires);
    assert_eq!(status, 200, "{response}");
    let info: Value = serde_json::from_str(response["info"].as_str().unwrap()).unwrap();
    assert!(info["infotexts"][0]
        .as_str()
        .unwrap()
        .contains("Hires upscaler: 4x-UltraSharp"));

    // img2img's SD upscale script with a model upscaler, by name and by its index in
    // /upscalers (A1111's `upscaler_index`): 32 px ×2 is one 64 px tile.
    let index = upscalers
        .as_array()
        .unwrap()
        .iter()
        .position(|u| u["name"] == "4x-UltraSharp")
        .unwrap();
    for arg in [json!("4x-UltraSharp"), json!(index)] {
        let body = json!({"init_images": [png_b64(32, 32)], "script_name": "SD upscale",
            "script_args": ["", 8, arg, 2], "steps": 2, "denoising_strength": 0.3, "seed": 4});
        let (status, response) = post(&server, "/sdapi/v1/img2img", &body);
        assert_eq!(status, 200, "{arg}: {response}");
        let (w, h, _, _) = crate::serve::decode(response["images"][0].as_str().unwrap());
        assert_eq!((w, h), (64, 64), "{arg}");
        let info: Value = serde_json::from_str(response["info"].as_str().unwrap()).unwrap();
        assert_eq!(
            info["extra_generation_params"]["SD upscale upscaler"],
            "4x-UltraSharp"
        );
    }
    let body = json!({"init_images": [png_b64(32, 32)], "script_name": "SD upscale",
        "script_args": ["", 8, "marker-eval", 2]});
    let (status, response) = post(&server, "/sdapi/v1/img2img", &body);
    assert_eq!(status, 422, "{response}");
    assert!(
        detail(&response).contains("refused: the pickle calls builtins.eval"),
        "{response}"
    );

    // Refusals: one line naming the file and what it calls, the A1111 file to fetch, the
    // architecture.
    let refusals = [
        ("marker-os-system", "`marker-os-system.pth`: refused: the pickle calls os.system — "),
        ("marker-eval", "`marker-eval.pth`: refused: the pickle calls builtins.eval — "),
        ("R-ESRGAN 2x+", "R-ESRGAN 2x+ needs RealESRGAN_x2plus.pth in "),
        ("SwinIR_4x", "SwinIR_4x is a SwinIR model (a Swin transformer), an architecture hiresfix does not run"),
        ("ScuNET GAN", "ScuNET is a ScuNET model"),
    ];
    for (name, expect) in refusals {
        let body = json!({"image": image, "upscaler_1": name});
        let (status, response) = post(&server, "/sdapi/v1/extra-single-image", &body);
        assert_eq!(status, 422, "{name}: {response}");
        assert!(detail(&response).contains(expect), "{name}: {response}");
        let body = json!({"enable_hr": true, "hr_upscaler": name});
        let (status, response) = post(&server, "/sdapi/v1/txt2img", &body);
        assert_eq!(
            (status, response["field"].as_str()),
            (422, Some("hr_upscaler"))
        );
        assert!(detail(&response).contains(expect), "{name}: {response}");
        if !name.starts_with("marker") {
            continue; // the CLI's wording of the others: the bad-input corpus
        }
        let out = upscale_cli(&scratch, name, "no.png");
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        assert!(err.contains(expect), "{err}");
    }
    assert!(!scratch.path("no.png").exists());
    // A profile naming a hostile pickle fails before anything runs.
    let top = format!("upscaler_dirs = [\"{}\"]", dir.display());
    let profile = tiny_profile(&tiny_ldm(), &top, "", "upscaler = \"marker-os-system\"");
    let out = generate_as(&scratch, "evil", &profile);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("refused: the pickle calls os.system"));
    assert!(!scratch.path("evil.png").exists());

    drop(server);
    assert!(
        !marker.exists(),
        "a hostile pickle ran: {} exists",
        marker.display()
    );
}

/// `hiresfix upscale in.png --upscaler NAME --upscalers ESRGAN -o OUT` in the scratch folder.
fn upscale_cli(scratch: &Scratch, name: &str, out: &str) -> std::process::Output {
    hiresfix(
        &scratch.0,
        &[
            "-q",
            "upscale",
            "in.png",
            "--upscaler",
            name,
            "--upscalers",
            "ESRGAN",
            "-o",
            out,
        ],
        &[],
    )
}
