//! `generate --preview FILE`: the run's live previews written to one PNG, replaced in place
//! (atomically: no temporary file is left beside it), every `preview_every` steps.
use crate::common::*;

/// Runs the tiny 2-pass profile with `top` keys and `--preview live.png`; the final image's
/// size and the preview's size and pixels.
fn generate_with_preview(name: &str, top: &str) -> ((u32, u32), (u32, u32, Vec<u8>)) {
    let scratch = Scratch::new(name);
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), top, "", ""));
    let out = hiresfix(
        &scratch.0,
        &[
            "generate",
            profile.to_str().unwrap(),
            "-o",
            "final.png",
            "--preview",
            "live.png",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (w, h, _) = hiresfix::output::read_rgb8(&scratch.path("final.png")).unwrap();
    let preview = hiresfix::output::read_rgb8(&scratch.path("live.png")).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&scratch.0)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["final.png", "live.png", "p.toml"]);
    ((w, h), preview)
}

#[test]
fn preview_file_holds_the_last_preview_as_a_png() {
    // Latent-to-RGB: one pixel per latent cell (the tiny VAE has 2 px a cell), the last
    // preview being pass 2's.
    let ((w, h), (pw, ph, pixels)) = generate_with_preview("preview-file", "preview_every = 1");
    assert_eq!((pw, ph), (w / 2, h / 2));
    assert!(pixels.iter().any(|&v| v != pixels[0]), "a flat preview");
    // A TAESD decoder in vae_approx_dirs (the random tiny one of
    // scripts/make_taesd_reference.py): 8 px a latent cell.
    let top = format!(
        "preview_every = 2\nvae_approx_dirs = [\"{}\"]",
        repo().join("tests/data/live_preview").display()
    );
    let ((w, h), (pw, ph, _)) = generate_with_preview("preview-file-taesd", &top);
    assert_eq!((pw, ph), (w * 4, h * 4));
}
