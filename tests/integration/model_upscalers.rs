//! Model upscalers (ESRGAN family) between passes: selected by file stem or A1111 name from
//! `upscaler_dirs`, named in the infotext, described by `check` and `plugins`; a `.pth` runs in
//! place (hostile ones: tests/integration/upscaler_names.rs). (Parity with Spandrel: upscalers/pixel/tests/models.rs.)

use std::path::PathBuf;

use crate::common::*;
use hiresfix::output::read_rgb8;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/data/upscalers/models").join(name)
}

/// A scratch upscaler folder holding `files` (fixture name → name in the folder).
fn models_dir(scratch: &Scratch, files: &[(&str, &str)]) -> PathBuf {
    let dir = scratch.path("upscalers");
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to) in files {
        std::fs::copy(fixture(from), dir.join(to)).unwrap();
    }
    dir
}

fn profile(dir: &std::path::Path, upscaler: &str) -> String {
    let top = format!("upscaler_dirs = [\"{}\"]", dir.display());
    tiny_profile(&tiny_ldm(), &top, "", &format!("upscaler = \"{upscaler}\""))
}

#[test]
fn a_model_by_stem_runs_between_passes_and_names_itself_in_the_infotext() {
    let scratch = Scratch::new("model-upscaler");
    let dir = models_dir(
        &scratch,
        &[
            ("realesrgan-x4.safetensors", "realesrgan-x4.safetensors"),
            ("compact-x4.safetensors", "RealESRGAN_x4plus.safetensors"),
        ],
    );
    let out = generate_as(&scratch, "model", &profile(&dir, "realesrgan-x4"));
    assert!(out.status.success(), "{}", stderr(&out));
    let lanczos = generate_as(&scratch, "lanczos", &profile(&dir, "pixel-lanczos"));
    assert!(lanczos.status.success(), "{}", stderr(&lanczos));
    let (w, h, px) = read_rgb8(&scratch.path("model.png")).unwrap();
    assert_eq!((w, h), (64, 64));
    assert_ne!(px, read_rgb8(&scratch.path("lanczos.png")).unwrap().2);
    let params = hiresfix::infotext::parse(&chunk(&scratch.path("model.png"), "parameters"));
    assert_eq!(params.get("Hires upscaler"), Some("realesrgan-x4"));
    // A1111's name for the file it downloads selects that file and is what the infotext says.
    let out = generate_as(&scratch, "a1111", &profile(&dir, "R-ESRGAN 4x+"));
    assert!(out.status.success(), "{}", stderr(&out));
    let params = hiresfix::infotext::parse(&chunk(&scratch.path("a1111.png"), "parameters"));
    assert_eq!(params.get("Hires upscaler"), Some("R-ESRGAN 4x+"));
}

#[test]
fn a_pth_runs_in_place_as_its_safetensors_and_an_unknown_name_is_a_clear_error() {
    let scratch = Scratch::new("model-upscaler-pth");
    let dir = models_dir(
        &scratch,
        &[
            ("realesrgan-x2.pth", "4x-UltraSharp.pth"),
            ("realesrgan-x2.safetensors", "2x-test.safetensors"),
        ],
    );
    // The same tensors as .pth (read by the restricted pickle reader) and .safetensors.
    let out = generate_as(&scratch, "pickle", &profile(&dir, "4x-UltraSharp"));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = generate_as(&scratch, "safetensors", &profile(&dir, "2x-test"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        read_rgb8(&scratch.path("pickle.png")).unwrap().2,
        read_rgb8(&scratch.path("safetensors.png")).unwrap().2
    );
    let params = hiresfix::infotext::parse(&chunk(&scratch.path("pickle.png"), "parameters"));
    assert_eq!(params.get("Hires upscaler"), Some("4x-UltraSharp"));
    let out = generate_as(&scratch, "unknown", &profile(&dir, "8x-Missing"));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown upscaler `8x-Missing`"), "{err}");
    assert!(err.contains("model files: 2x-test, 4x-UltraSharp"), "{err}");
    assert!(!scratch.path("unknown.png").exists());
}

#[test]
fn check_and_plugins_describe_the_model_files() {
    let scratch = Scratch::new("model-upscaler-list");
    let dir = models_dir(
        &scratch,
        &[
            ("esrgan-old-x4.safetensors", "old.safetensors"),
            ("compact-x4.safetensors", "compact.safetensors"),
        ],
    );
    let path = scratch.write("p.toml", &profile(&dir, "old"));
    let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains("upscaler old (RRDBNet (ESRGAN layout), 4x, 1 block, 12 features)"),
        "{text}"
    );
    let out = hiresfix(
        &scratch.0,
        &["plugins"],
        &[("HIRESFIX_UPSCALER_PATH", &dir)],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("upscaler compact: SRVGGNetCompact, 4x"),
        "{text}"
    );
    assert!(
        text.contains("upscaler old: RRDBNet (ESRGAN layout), 4x"),
        "{text}"
    );
}
