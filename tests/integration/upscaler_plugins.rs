//! Upscalers chosen by name in a profile, run by the hiresfix binary: a third-party plugin built
//! outside the workspace, and the pixel-space built-ins through the tiny model's real VAE.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::common::*;

/// The example crate, built once for this file's tests (they run in parallel).
fn example_upscaler() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| build_outside_plugin("examples/third-party-upscaler", "example_upscaler"))
}

/// A tiny-model profile whose plugin folder holds the example and whose hires pass uses
/// `upscaler`.
fn profile_with_example(scratch: &Scratch, upscaler: &str) -> PathBuf {
    let dir = plugin_dir(scratch, "my-plugins", &[example_upscaler()]);
    let top = format!("plugin_dirs = [\"{}\"]", dir.display());
    let pass2 = format!("upscaler = \"{upscaler}\"");
    scratch.write("p.toml", &tiny_profile(&tiny_ldm(), &top, "", &pass2))
}

#[test]
fn out_of_workspace_upscaler_is_used_by_name_and_named_in_the_infotext() {
    let scratch = Scratch::new("ext-upscaler");
    let profile = profile_with_example(&scratch, "example_sharp_bicubic");
    let out = hiresfix(&scratch.0, &["generate", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let pngs = scratch.pngs();
    assert_eq!(pngs.len(), 1, "{pngs:?}");
    let text = hiresfix::output::read_text_chunks(&pngs[0]).unwrap();
    let params =
        hiresfix::infotext::parse(&text.iter().find(|(k, _)| k == "parameters").unwrap().1);
    assert_eq!(params.get("Hires upscaler"), Some("Example Sharp Bicubic"));
}

#[test]
fn unknown_upscaler_error_lists_third_party_and_built_in_upscalers() {
    let scratch = Scratch::new("ext-upscaler-unknown");
    let profile = profile_with_example(&scratch, "lanczos9");
    let out = hiresfix(&scratch.0, &["generate", profile.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("unknown upscaler `lanczos9`"), "{err}");
    for name in ["example_sharp_bicubic", "latent-bislerp", "pixel-lanczos"] {
        assert!(err.contains(name), "`{name}` missing from: {err}");
    }
    assert!(scratch.pngs().is_empty());
}

#[test]
fn pixel_upscalers_run_a_hires_pass_through_the_models_vae() {
    let scratch = Scratch::new("pixel-upscalers");
    for name in ["Lanczos", "Nearest"] {
        let profile = scratch.write(
            &format!("{name}.toml"),
            &tiny_profile(&tiny_ldm(), "", "", &format!("upscaler = \"{name}\"")),
        );
        let png = scratch.path(&format!("{name}.png"));
        let args = [
            "generate",
            profile.to_str().unwrap(),
            "-o",
            png.to_str().unwrap(),
        ];
        let out = hiresfix(&scratch.0, &args, &[]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let (w, h, _) = hiresfix::output::read_rgb8(&png).unwrap();
        assert_eq!((w, h), (64, 64), "{name}");
        let text = hiresfix::output::read_text_chunks(&png).unwrap();
        let params =
            hiresfix::infotext::parse(&text.iter().find(|(k, _)| k == "parameters").unwrap().1);
        assert_eq!(params.get("Hires upscaler"), Some(name));
    }
}
