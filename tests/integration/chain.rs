//! Multi-stage chains: any number of passes, each with its own size, upscaler, steps, sampler
//! and prompt; every pass recorded in the infotext and the resolved profile.

use crate::common::*;
use hiresfix::infotext;
use hiresfix::output::read_rgb8;
use hiresfix::profile::Profile;

const THREE_PASSES: &str = r#"
[[pass]]
width = 64
steps = 2
denoise = 0.4
upscaler = "Latent (nearest-exact)"
sampler = "DPM++ 2M Karras"
prompt = "a photo of a cat, sharp focus"
"#;

#[test]
fn three_pass_chain_records_every_pass_and_saves_earlier_ones() {
    let scratch = Scratch::new("chain3");
    let mut text = tiny_profile(
        &tiny_ldm(),
        "save_passes = true",
        "",
        "upscaler = \"latent-bicubic\"",
    );
    text = text.replace("scale = 2.0", "scale = 1.5");
    text.push_str(THREE_PASSES);
    let profile = scratch.write("p.toml", &text);
    let out = hiresfix(&scratch.0, &["generate", profile.to_str().unwrap()], &[]);
    let written = stdout_lines(&out);
    assert_eq!(
        written,
        [
            "out/img-7-0-pass1.png",
            "out/img-7-0-pass2.png",
            "out/img-7-0.png"
        ]
    );
    let sizes = png_sizes(&scratch, &written);
    assert_eq!(sizes, [(32, 32), (48, 48), (64, 64)]);

    let params = infotext::parse(&chunk(&scratch.path("out/img-7-0.png"), "parameters"));
    for (key, value) in [
        ("Size", "32x32"),
        ("Hires upscale", "1.5"),
        ("Hires steps", "2"),
        ("Hires upscaler", "Latent (bicubic)"),
        ("Denoising strength", "0.5"),
        ("Hires 2 resize", "64x64"),
        ("Hires 2 steps", "2"),
        ("Hires 2 denoising strength", "0.4"),
        ("Hires 2 upscaler", "Latent (nearest-exact)"),
        ("Hires 2 sampler", "DPM++ 2M"),
        ("Hires 2 schedule type", "Karras"),
        ("Hires 2 prompt", "a photo of a cat, sharp focus"),
    ] {
        assert_eq!(params.get(key), Some(value), "{key}");
    }
    let resolved = Profile::parse(
        &chunk(&scratch.path("out/img-7-0.png"), "hiresfix-profile"),
        "embedded",
    )
    .unwrap();
    assert_eq!(resolved.passes.len(), 3);
    assert_eq!(resolved.passes[1].scale, Some(1.5));
    assert_eq!(
        resolved.passes[1].upscaler.as_deref(),
        Some("latent-bicubic")
    );
    assert_eq!(resolved.passes[2].width, Some(64));
    assert_eq!(resolved.passes[2].steps, Some(2));
}

#[test]
fn width_and_height_cover_then_centre_crop() {
    let scratch = Scratch::new("cover");
    let text =
        tiny_profile(&tiny_ldm(), "", "", "").replace("scale = 2.0", "width = 64\nheight = 40");
    let profile = scratch.write("p.toml", &text);
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "c.png"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (w, h, _) = read_rgb8(&scratch.path("c.png")).unwrap();
    assert_eq!((w, h), (64, 40));
    let params = infotext::parse(&chunk(&scratch.path("c.png"), "parameters"));
    assert_eq!(params.get("Hires resize"), Some("64x40"));
}

#[test]
fn sizes_are_rounded_to_the_vae_factor_with_a_note() {
    let scratch = Scratch::new("rounding");
    let text = tiny_profile(&tiny_ldm(), "", "", "")
        .replace("width = 32\nheight = 32", "width = 33\nheight = 31");
    let profile = scratch.write("p.toml", &text);
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "r.png"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("pass 1: 33x31 rounded to 32x30 (multiples of 2)"),
        "{}",
        stderr(&out)
    );
    let (w, h, _) = read_rgb8(&scratch.path("r.png")).unwrap();
    assert_eq!((w, h), (64, 60));
}

/// A1111's zero-strength hires pass (`denoising_strength: 0`, as its own API test sends):
/// the schedule has no step, so a pass at the same size gives pass 1's image exactly, and a
/// ×2 pass the upscaled latent decoded.
#[test]
fn a_pass_of_denoise_0_only_upscales() {
    let scratch = Scratch::new("chain-denoise0");
    let same = tiny_profile(&tiny_ldm(), "", "", "")
        .replace("scale = 2.0", "scale = 1.0")
        .replace("denoise = 0.5", "denoise = 0.0");
    let out = generate_as(&scratch, "same", &same);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = tiny_profile(&tiny_ldm(), "", "", "");
    let path = scratch.write("first.toml", &first);
    let out = hiresfix(
        &scratch.0,
        &[
            "generate",
            path.to_str().unwrap(),
            "-o",
            "first.png",
            "--passes",
            "1",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let (w, h, zero) = read_rgb8(&scratch.path("same.png")).unwrap();
    let (w1, h1, pass1) = read_rgb8(&scratch.path("first.png")).unwrap();
    assert_eq!((w, h), (w1, h1));
    assert!(
        zero == pass1,
        "a same-size pass of denoise 0 changed the image"
    );
    let double = tiny_profile(&tiny_ldm(), "", "", "").replace("denoise = 0.5", "denoise = 0");
    let out = generate_as(&scratch, "double", &double);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_rgb8(&scratch.path("double.png")).unwrap().0, 64);
    let params = chunk(&scratch.path("double.png"), "parameters");
    assert!(params.contains("Denoising strength: 0"), "{params}");
}
