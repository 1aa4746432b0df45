//! The Flux backend's `hiresfix info` on the tiny dev and schnell models of
//! scripts/make_flux_pipeline_reference.py in every layout (headers only: a BFL transformer
//! file without VAE or text encoders inspects fine): family flux-dev / flux-schnell, the
//! guidance embedding, the shift rule and the text encoders; and `check`'s memory table for a
//! 2-pass Flux profile.
use std::path::PathBuf;

use crate::common::*;
use crate::info::{field, info};

fn data(rel: &str) -> PathBuf {
    repo().join("tests/data/flux-tiny/pipeline").join(rel)
}

#[test]
fn info_shows_flux_variant_guidance_shift_rule_and_text_encoders_of_every_layout() {
    // The tiny models as scripts/make_flux_pipeline_reference.py builds them: 2 double + 2
    // single blocks of width 32; CLIP-L 2×32 and T5 2×96 (SD3 tiny's); dev's published
    // scheduler shifts by size, schnell's not at all.
    let dev = "flux-dev (Flux.1 dev, guidance embedding yes, 2 double + 2 single blocks, width 32)";
    let schnell =
        "flux-schnell (Flux.1 schnell, guidance embedding no, 2 double + 2 single blocks, width 32)";
    let by_size = "flow (shift by size: mu 0.5 at 256 tokens to 1.15 at 4096, shift = e^mu, from";
    let encoders = "CLIP-L (2 layers, 32, pooled only) + T5 (2 layers, 96)";
    let none = "none in the file (a transformer file's come from `[model] text_encoders`)";
    let cases = [
        ("dev/diffusers", "diffusers folder", dev, by_size, encoders),
        (
            "dev/flux1-dev-tiny.safetensors",
            "transformer file (VAE and text encoders from the profile)",
            dev,
            by_size,
            none,
        ),
        (
            "dev/flux1-dev-tiny-aio.safetensors",
            "single file (all-in-one)",
            dev,
            by_size,
            encoders,
        ),
        (
            "schnell/diffusers",
            "diffusers folder",
            schnell,
            "flow (shift 1, from the scheduler config)",
            encoders,
        ),
        (
            "schnell/flux1-schnell-tiny.safetensors",
            "transformer file (VAE and text encoders from the profile)",
            schnell,
            "flow (shift 1, from the published scheduler)",
            none,
        ),
    ];
    for (rel, format, family, prediction, text) in cases {
        let lines = info(&data(rel));
        assert_eq!(field(&lines, "format"), format, "{rel}");
        assert_eq!(field(&lines, "family"), family, "{rel}");
        assert!(
            field(&lines, "prediction").starts_with(prediction),
            "{rel}: {}",
            field(&lines, "prediction")
        );
        assert_eq!(field(&lines, "text encoders"), text, "{rel}");
        assert_eq!(field(&lines, "native size"), "1024 px", "{rel}");
    }
}

/// fp8 transformer files say so: the plain E4M3 file by its stored dtype (linear weights fp8,
/// biases and norms fp16), ComfyUI's scaled fp8 also by name, its scales not counted.
#[test]
fn info_names_fp8_and_scaled_fp8_transformer_files() {
    for (file, dtype) in [
        (
            "flux1-dev-tiny-fp8.safetensors",
            "F8_E4M3 (98% of the parameters; the rest F16)",
        ),
        (
            "flux1-dev-tiny-fp8-scaled.safetensors",
            "F8_E4M3 (98% of the parameters; the rest F16), ComfyUI scaled fp8 (each weight \
             times its scale_weight)",
        ),
    ] {
        let lines = info(&data("dev/fp8").join(file));
        assert!(field(&lines, "family").starts_with("flux-dev"), "{file}");
        assert_eq!(field(&lines, "stored dtype"), dtype, "{file}");
    }
}

#[test]
fn check_prints_a_memory_row_per_flux_pass() {
    let scratch = Scratch::new("flux-check");
    let checkpoint = toml::Value::from(data("dev/diffusers").to_str().unwrap());
    let text = format!(
        "prompt = \"a cat\"\ncfg = 1.0\ndevice = \"cpu\"\ndtype = \"fp32\"\n[model]\n\
         checkpoint = {checkpoint}\n[[pass]]\nwidth = 1024\nheight = 1024\nsteps = 4\n\
         sampler = \"euler\"\nschedule = \"simple\"\n[[pass]]\nscale = 2.0\nsteps = 4\n\
         denoise = 0.5\nsampler = \"euler\"\nschedule = \"simple\"\nupscaler = \"latent\"\n"
    );
    let path = scratch.write("p.toml", &text);
    let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    let row = |pass: &str, size: &str| memory_row(&lines, pass, size);
    // Transformer call at cfg 1 (batch 1), fp32: 20 buffers × (packed image tokens + 512 T5
    // tokens) × width 32 × 4 B with the tiny VAE's factor 2: 1024 px → (256² + 512) tokens =
    // 161.25 MiB; 2048 px → (512² + 512) tokens = 641.25 MiB.
    let (one, two) = (row("1", "1024x1024"), row("2", "2048x2048"));
    assert_eq!(one[4..6], ["161.2", "MiB"], "{one:?}");
    assert_eq!(two[4..6], ["641.2", "MiB"], "{two:?}");
}

/// `tiled = "auto"` on a Flux hires pass: at 16384 px (the tiny 2× VAE: 4096² packed tokens)
/// the whole transformer call is 20 × 4096² × 32 × 4 B = 40 GiB, more than any test machine
/// has free, so the pass is tiled (the extension's default tiles, 96 cells: 48² tokens + 512
/// T5 tokens a tile, 4 tiles a call; the merge buffers of the whole 16-channel latent); at
/// 2048 px it stays whole.
#[test]
fn check_tiles_a_flux_hires_pass_that_will_not_fit() {
    let scratch = Scratch::new("flux-check-auto");
    let checkpoint = toml::Value::from(data("dev/diffusers").to_str().unwrap());
    for (scale, tiled) in [(16.0, true), (2.0, false)] {
        let text = format!(
            "prompt = \"a cat\"\ndevice = \"cpu\"\ndtype = \"fp32\"\n[model]\n\
             checkpoint = {checkpoint}\n[[pass]]\nwidth = 1024\nheight = 1024\nsteps = 4\n\
             sampler = \"euler\"\nschedule = \"simple\"\n[[pass]]\nscale = {scale:?}\n\
             steps = 4\ndenoise = 0.5\nsampler = \"euler\"\nschedule = \"simple\"\n\
             upscaler = \"latent\"\ntiled = \"auto\"\n"
        );
        let path = scratch.write("p.toml", &text);
        let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let lines = stdout_lines(&out);
        let decision = lines
            .iter()
            .find(|l| l.starts_with("pass 2: tiled = \"auto\""))
            .unwrap_or_else(|| panic!("{lines:#?}"));
        let want = match tiled {
            true => "pass 2: tiled = \"auto\": tiled (",
            false => "pass 2: tiled = \"auto\": not tiled (",
        };
        assert!(decision.starts_with(want), "{scale}: {decision}");
        if tiled {
            // A call of 4 tiles of 96² cells, 20 × 4 × (48² + 512) × 32 × 4 B = 27.5 MiB, and
            // the whole-latent merge buffers of Flux's 16 channels: 8192² cells × 16 × 4 B ×
            // (latent, weights, one sum) = 12 GiB.
            let row = memory_row(&lines, "2", "16384x16384");
            assert_eq!(row[4..6], ["12.0", "GiB"], "{row:?}");
        }
    }
}
