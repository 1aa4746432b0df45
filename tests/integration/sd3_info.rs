//! The SD3 backend's tools through the host: `hiresfix info` on the tiny SD 3.5 model of
//! scripts/make_sd3_reference.py in its three layouts (headers only: a split transformer file
//! without VAE or text encoders inspects fine), `check`'s memory table for an SD3 profile, and
//! a latent hand-off between SD3 and SDXL refused in one line before anything loads.
use std::path::{Path, PathBuf};

use crate::common::*;
use crate::info::{field, info};
use hiresfix::generate::prepare;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;

fn data(rel: &str) -> PathBuf {
    repo().join("tests/data/sd3-tiny").join(rel)
}

#[test]
fn info_shows_family_shift_and_text_encoders_of_every_sd3_layout() {
    // The tiny model's shapes as scripts/make_sd3_reference.py builds it: MMDiT of 3 blocks
    // (dual attention in 0 and 1), width 32; CLIP-L 2×32, CLIP-G 2×48, T5 2×96; the
    // scheduler's shift 3.0.
    let encoders = "CLIP-L (2 layers, 32) + OpenCLIP bigG (2 layers, 48) + T5 (2 layers, 96)";
    let family = "sd3 (Stable Diffusion 3.5, MMDiT 3 blocks (2 with dual attention), width 32)";
    let cases = [
        (
            "diffusers",
            "diffusers folder",
            "flow (shift 3.0 from scheduler config)",
            encoders,
            "16 channels, 1/2 of the image side, scaling factor 1.5305",
        ),
        (
            "sd3-tiny.safetensors",
            "single file",
            "flow (shift 3.0 from SD3's default)",
            encoders,
            "16 channels, 1/2 of the image side, scaling factor 1.5305",
        ),
        (
            "split/transformer.safetensors",
            "split transformer file (VAE and text encoders from the profile)",
            "flow (shift 3.0 from SD3's default)",
            "none in the file (a split file's come from `[model] text_encoders`)",
            "16 channels, 1/8 of the image side, scaling factor 1.5305",
        ),
    ];
    for (rel, format, prediction, text, latent) in cases {
        let lines = info(&data(rel));
        assert_eq!(field(&lines, "format"), format, "{rel}");
        assert_eq!(field(&lines, "family"), family, "{rel}");
        assert_eq!(field(&lines, "prediction"), prediction, "{rel}");
        assert_eq!(field(&lines, "text encoders"), text, "{rel}");
        assert_eq!(field(&lines, "latent"), latent, "{rel}");
        assert_eq!(field(&lines, "native size"), "1024 px", "{rel}");
    }
}

/// A 2-pass SD3 profile at `width` px, pass 2 at twice the size through `upscaler`; pass 2's
/// `[model]` switch to `second` where given.
fn profile(width: u32, upscaler: &str, second: Option<&Path>) -> String {
    let switch = second.map_or(String::new(), |p| {
        format!("\ncheckpoint = {}", toml::Value::from(p.to_str().unwrap()))
    });
    reference_profile(
        ("a photo of a cat", "blurry", &data("diffusers")),
        (width, width, 6),
        "sampler = \"euler\"",
        &format!("sampler = \"euler\"\nupscaler = \"{upscaler}\"{switch}"),
    )
}

#[test]
fn check_prints_a_memory_row_per_sd3_pass() {
    let scratch = Scratch::new("sd3-check");
    let path = scratch.write("p.toml", &profile(1024, "latent", None));
    let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    let row = |pass: &str, size: &str| memory_row(&lines, pass, size);
    // Transformer call at CFG (batch 2), fp32: 12 buffers × 2 × tokens × width 32 × 4 B, the
    // tiny VAE's factor 2 and patch 2: 1024 px → (256² + 333) tokens = 193.0 MiB; 2048 px →
    // (512² + 333) tokens = 769.0 MiB.
    let (one, two) = (row("1", "1024x1024"), row("2", "2048x2048"));
    assert_eq!(one[4..6], ["193.0", "MiB"], "{one:?}");
    assert_eq!(two[4..6], ["769.0", "MiB"], "{two:?}");
}

/// `[model] t5 = "cpu"` reaches the backend's estimate (`MemoryRequest.options`): accepted by
/// `check`, and on a CPU run nothing leaves the device row (T5 is on the CPU either way; on a
/// GPU the row loses T5's weights — plugins/flow's `sd3_memory_estimate_…` test).
#[test]
fn check_accepts_t5_on_the_cpu_and_a_cpu_run_keeps_its_weights_row() {
    let scratch = Scratch::new("sd3-check-t5");
    let weights = |model_lines: &str| -> String {
        let text = profile(64, "latent", None).replacen(
            "[model]\n",
            &format!("[model]\n{model_lines}"),
            1,
        );
        let path = scratch.write("p.toml", &text);
        let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let lines = stdout_lines(&out);
        let row = lines
            .iter()
            .find(|l| l.split_whitespace().take(2).eq(["1", "64x64"]))
            .unwrap_or_else(|| panic!("{lines:?}"));
        row.split_whitespace()
            .skip(2)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    let whole = weights("");
    // The tiny folder's parameters in fp32: 19.0 MiB.
    assert_eq!(whole, "19.0 MiB");
    assert_eq!(weights("t5 = \"cpu\"\n"), whole);
}

#[test]
fn a_latent_switch_between_sd3_and_sdxl_is_refused_in_one_line() {
    let registry = Registry::load(&[], &Default::default());
    let sdxl = repo().join("tests/data/sdxl-tiny/sdxl-tiny.safetensors");
    let p = Profile::parse(&profile(32, "latent", Some(&sdxl)), "sd3-switch").unwrap();
    let err = match prepare(p, &registry, &repo()) {
        Ok(_) => panic!("a latent hand-off from sd3 to sdxl was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(!err.contains('\n'), "{err}");
    for want in [
        "pass 2: checkpoint",
        "is sdxl but pass 1 ran sd3, and upscaler `latent` keeps its latent",
        "switch families through a pixel upscaler",
    ] {
        assert!(err.contains(want), "{want:?} not in {err}");
    }
}
