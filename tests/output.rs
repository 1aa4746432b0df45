//! Output contract: determinism, A1111 infotext, the embedded profile, never overwriting.
mod common;

use common::*;
use hiresfix::infotext;
use hiresfix::profile::Profile;

#[test]
fn same_profile_and_seed_give_byte_identical_png() {
    let scratch = Scratch::new("determinism");
    let profile = scratch.write(
        "p.toml",
        &tiny_profile(&tiny_ldm(), "", "sampler = \"euler_ancestral\"", ""),
    );
    for name in ["a.png", "b.png"] {
        let out = hiresfix(
            &scratch.0,
            &["generate", profile.to_str().unwrap(), "-o", name],
            &[],
        );
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let a = std::fs::read(scratch.path("a.png")).unwrap();
    let b = std::fs::read(scratch.path("b.png")).unwrap();
    assert_eq!(a, b);
}

#[test]
fn parameters_chunk_parses_back_to_the_profile_values() {
    use sha2::Digest;
    let scratch = Scratch::new("infotext");
    let profile = scratch.write(
        "p.toml",
        &tiny_profile(
            &tiny_ldm(),
            "",
            "",
            "sampler = \"dpmpp_2m\"\nschedule = \"karras\"",
        ),
    );
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "--seed", "42"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let png = scratch.path("out/img-42-0.png");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "out/img-42-0.png"
    );
    let params = infotext::parse(&chunk(&png, "parameters"));
    assert_eq!(params.prompt, "a photo of a cat");
    assert_eq!(params.negative, "blurry");
    let hash: String = sha2::Sha256::digest(std::fs::read(tiny_ldm()).unwrap())
        .iter()
        .take(5)
        .map(|b| format!("{b:02x}"))
        .collect();
    for (key, value) in [
        ("Steps", "3"),
        ("Sampler", "Euler"),
        ("Schedule type", "Normal"),
        ("CFG scale", "5"),
        ("Seed", "42"),
        ("Size", "32x32"),
        ("Model hash", hash.as_str()),
        ("Model", "sd1-tiny"),
        ("Denoising strength", "0.5"),
        ("Hires upscale", "2"),
        ("Hires steps", "2"),
        ("Hires upscaler", "Latent"),
        ("Hires sampler", "DPM++ 2M"),
        ("Hires schedule type", "Karras"),
    ] {
        assert_eq!(params.get(key), Some(value), "{key}");
    }
    let resolved = Profile::parse(&chunk(&png, "hiresfix-profile"), "embedded").unwrap();
    assert_eq!(resolved.seed, 42);
    assert_eq!(resolved.passes[0].width, Some(32));
    assert_eq!(resolved.passes[1].denoise, Some(0.5));
    assert_eq!(resolved.passes[1].schedule.as_deref(), Some("karras"));
}

#[test]
fn batch_uses_consecutive_seeds_and_never_overwrites() {
    let scratch = Scratch::new("batch");
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &[
            "generate",
            profile.to_str().unwrap(),
            "--batch",
            "2",
            "-o",
            "same.png",
            "-q",
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let written: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    assert_eq!(written, ["same.png", "same-1.png"]);
    let seeds: Vec<String> = written
        .iter()
        .map(|p| {
            infotext::parse(&chunk(&scratch.path(p), "parameters"))
                .get("Seed")
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(seeds, ["7", "8"]);
}

#[test]
fn replay_reproduces_the_image_from_its_embedded_profile() {
    let scratch = Scratch::new("replay");
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "first.png"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let out = hiresfix(&scratch.0, &["replay", "first.png", "-o", "again.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read(scratch.path("first.png")).unwrap(),
        std::fs::read(scratch.path("again.png")).unwrap()
    );
}
