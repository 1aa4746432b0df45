//! LoRA through the host: `<lora:name:w>` tags resolved in `lora_dirs`, the same image as the
//! LoRA listed in the profile, weight 0 giving the base image, per-pass sets, and A1111's
//! infotext (`Lora hashes`, tags in the prompt).

use std::path::{Path, PathBuf};

use crate::common::*;

fn loras() -> PathBuf {
    repo().join("tests/data/loras")
}

/// Renders `profile_text` and returns the image's pixels and its `parameters` text.
fn render(scratch: &Scratch, name: &str, profile_text: &str) -> (Vec<u8>, String) {
    let profile = scratch.write(&format!("{name}.toml"), profile_text);
    let png = format!("{name}.png");
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", &png],
        &[],
    );
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    let (_, _, pixels) = hiresfix::output::read_rgb8(&scratch.path(&png)).unwrap();
    (pixels, chunk(&scratch.path(&png), "parameters"))
}

fn with_prompt(text: &str, prompt: &str) -> String {
    text.replace(
        "prompt = \"a photo of a cat\"",
        &format!("prompt = \"{prompt}\""),
    )
}

/// A1111's "addnet" hash of a safetensors file: sha256 of what follows the header.
fn addnet_hash(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    sha256_12(&bytes[8 + n..])
}

#[test]
fn a_prompt_tag_gives_the_image_of_the_profile_lora_and_weight_zero_the_base_image() {
    let scratch = Scratch::new("lora-tag");
    let dirs = format!("lora_dirs = [\"{}\"]", loras().display());
    let base = tiny_profile(&tiny_ldm(), &dirs, "", "");
    let (plain, _) = render(&scratch, "plain", &base);
    let (tagged, params) = render(
        &scratch,
        "tag",
        &with_prompt(&base, "a photo of a cat <lora:sd1-kohya:1>"),
    );
    let listed = base.replace(
        "[model]",
        &format!(
            "[model]\nloras = [{{ path = \"{}\", weight = 1.0 }}]",
            loras().join("sd1-kohya.safetensors").display()
        ),
    );
    let (profile_lora, listed_params) = render(&scratch, "listed", &listed);
    assert_eq!(
        tagged, profile_lora,
        "a tag and a profile entry are the same LoRA"
    );
    assert_ne!(tagged, plain, "the LoRA changed the image");
    let (zero, _) = render(
        &scratch,
        "zero",
        &with_prompt(&base, "a photo of a cat <lora:sd1-kohya:0>"),
    );
    assert_eq!(zero, plain, "weight 0 is the base image");
    let hash = addnet_hash(&loras().join("sd1-kohya.safetensors"));
    let parsed = hiresfix::infotext::parse(&params);
    assert!(parsed.prompt.contains("<lora:sd1-kohya:1>"), "{params}");
    assert_eq!(
        parsed.get("Lora hashes"),
        Some(format!("sd1-kohya: {hash}").as_str()),
        "{params}"
    );
    // A LoRA the profile lists is written as its tag, so A1111 and Civitai see it.
    let listed = hiresfix::infotext::parse(&listed_params);
    assert!(
        listed.prompt.ends_with("<lora:sd1-kohya:1>"),
        "{listed_params}"
    );
}

#[test]
fn each_pass_runs_its_own_set_and_a_pass_without_one_runs_the_base_weights() {
    let scratch = Scratch::new("lora-passes");
    let path = loras().join("sd1-loha.safetensors");
    let entry = format!(
        "loras = [{{ path = \"{}\", weight = 1.0 }}]",
        path.display()
    );
    let base = tiny_profile(&tiny_ldm(), "save_passes = true", "", "");
    // LoRA in pass 1 only (pass 2: `loras = []`), against no LoRA at all.
    let pass1_only = tiny_profile(&tiny_ldm(), "save_passes = true", &entry, "loras = []");
    let profile = scratch.write("a.toml", &pass1_only);
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "a.png"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let profile = scratch.write("b.toml", &base);
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap(), "-o", "b.png"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let pixels = |p: &str| hiresfix::output::read_rgb8(&scratch.path(p)).unwrap().2;
    assert_ne!(
        pixels("a-pass1.png"),
        pixels("b-pass1.png"),
        "pass 1 ran with the LoRA"
    );
    let params = chunk(&scratch.path("a.png"), "parameters");
    let parsed = hiresfix::infotext::parse(&params);
    assert!(parsed.prompt.ends_with("<lora:sd1-loha:1>"), "{params}");
    assert_eq!(
        parsed.get("Hires prompt"),
        Some("a photo of a cat"),
        "{params}"
    );
}
