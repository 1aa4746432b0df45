//! `hiresfix check` lints the classic hires-fix failures: one profile per rule, each finding
//! with its pass, key and fix; a clean profile has none.

use std::path::{Path, PathBuf};

use crate::common::*;

/// A 2-pass profile on the tiny SD 1.x model composing at its family's native 512 px.
fn clean(checkpoint: &Path, top: &str, pass1: &str, pass2: &str) -> String {
    tiny_profile(checkpoint, top, pass1, pass2)
        .replace("width = 32\nheight = 32", "width = 512\nheight = 512")
        .replace("negative = \"blurry\"", "negative = \"blurry, lowres\"")
}

/// `check`'s stdout lines that are findings.
fn findings(scratch: &Scratch, text: &str) -> Vec<String> {
    let profile = scratch.write("p.toml", text);
    let out = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with("warning:") || l.starts_with("error:"))
        .map(String::from)
        .collect()
}

/// The tiny model with every float weight scaled: same family, another text encoder.
fn other_checkpoint(scratch: &Scratch) -> PathBuf {
    use host_api::tch::Tensor;
    let path = scratch.path("other.safetensors");
    let tensors: Vec<(String, Tensor)> = Tensor::read_safetensors(tiny_ldm())
        .unwrap()
        .into_iter()
        .map(
            |(k, t)| match t.is_floating_point() && !k.contains("alphas") && k != "betas" {
                true => (k, t * 0.9),
                false => (k, t),
            },
        )
        .collect();
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn each_rule_reports_its_finding_at_its_pass_and_key() {
    let scratch = Scratch::new("lint");
    let ckpt = tiny_ldm();
    let loras = repo().join("tests/data/loras");
    let other = other_checkpoint(&scratch);
    let lora = |name: &str, w: f64| {
        format!(
            "{{ path = \"{}\", weight = {w} }}",
            loras.join(format!("{name}.safetensors")).display()
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("clean", clean(&ckpt, "", "", ""), ""),
        ("upscale 4x", clean(&ckpt, "", "", "").replace("scale = 2.0", "scale = 4.0"),
            "warning: pass 2 `scale`: upscales 4× in one pass (512→2048 px wide): latent detail smears and the composition drifts — split it into passes of at most 2×: 512→1024→2048"),
        ("latent denoise", clean(&ckpt, "", "", "").replace("denoise = 0.5", "denoise = 0.3"),
            "warning: pass 2 `denoise`: 0.3 after the latent upscaler `latent` keeps its blur and grid artefacts — use denoise 0.5–0.6 after a latent upscaler, or a pixel upscaler (pixel-lanczos tolerates 0.2–0.35)"),
        ("repaint", clean(&ckpt, "", "", "").replace("denoise = 0.5", "denoise = 0.8"),
            "warning: pass 2 `denoise`: 0.8 repaints pass 1's composition — keep later passes at 0.6 or below (0.3–0.5 refines detail)"),
        ("dropped negative", clean(&ckpt, "", "", "negative = \"lowres\""),
            "warning: pass 2 `negative`: drops pass 1's negative terms: blurry — repeat them in pass 2's negative (the hires pass brings them back otherwise)"),
        ("contradiction", clean(&ckpt, "", "", "").replace("a photo of a cat", "a photo of a cat, (blurry:1.1)"),
            "warning: pass 1 `prompt`: asks for and against the same terms: blurry — remove them from the prompt or from the negative"),
        ("lora sum", clean(&ckpt, "", &format!("loras = [{}, {}]", lora("sd1-kohya", 1.0), lora("sd1-loha", 0.8)), ""),
            "warning: pass 1 `loras`: LoRA weights add up to 1.8"),
        ("native size", tiny_profile(&ckpt, "", "", "").replace("negative = \"blurry\"", "negative = \"blurry, lowres\"").replace("width = 32\nheight = 32", "width = 1024\nheight = 1024"),
            "warning: pass 1 `width`: 1024x1024 is far from Stable Diffusion 1.x's native 512 px: composing there repeats subjects or loses detail — compose near 512x512 in pass 1 and reach the final size in later passes"),
        ("text encoder switch", clean(&ckpt, "", "", &format!("checkpoint = \"{}\"", other.display())),
            "has another text encoder than pass 1's"),
        ("steps after switch", clean(&ckpt, "", "", &format!("checkpoint = \"{}\"", other.display())).replace("steps = 2", "steps = 12"),
            "warning: pass 2 `steps`: 12 steps after switching to"),
    ];
    for (name, text, expect) in cases {
        let found = findings(&scratch, &text);
        match expect {
            "" => assert!(found.is_empty(), "{name}: {found:?}"),
            _ => assert!(
                found.iter().any(|f| f.contains(expect)),
                "{name}: {found:?}"
            ),
        }
    }
}

#[test]
fn a_switch_to_another_family_after_a_latent_upscaler_is_an_error_in_check_and_generate_loads_nothing(
) {
    let scratch = Scratch::new("lint-family");
    let sdxl = repo().join("tests/data/sdxl-tiny/sdxl-tiny.safetensors");
    let text = tiny_profile(
        &tiny_ldm(),
        "",
        "",
        &format!("checkpoint = \"{}\"", sdxl.display()),
    );
    let profile = scratch.write("p.toml", &text);
    let out = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("pass 2: checkpoint")
            && stderr(&out).contains("is sdxl but pass 1 ran sd1, and upscaler `latent`"),
        "{}",
        stderr(&out)
    );
    let out = hiresfix(
        &scratch.0,
        &["generate", profile.to_str().unwrap()],
        &[("RUST_LOG", Path::new("info"))],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !stderr(&out).contains("loading checkpoint"),
        "{}",
        stderr(&out)
    );
    assert!(scratch.pngs().is_empty());
}

#[test]
fn check_prints_a_memory_table_per_pass() {
    let scratch = Scratch::new("check-memory");
    let profile = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(text.contains("memory (cpu, fp32, "), "{text}");
    // The weights column: every UNet, VAE and text-encoder parameter in fp32, counted here
    // from the file's header.
    let bytes = std::fs::read(tiny_ldm()).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let parameters: u64 = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            [
                "model.diffusion_model.",
                "first_stage_model.",
                "cond_stage_model.",
            ]
            .iter()
            .any(|p| k.starts_with(p))
        })
        .map(|(_, v)| {
            v["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .product::<u64>()
        })
        .sum();
    let weights = format!("{:.1} MiB", (parameters * 4) as f64 / (1u64 << 20) as f64);
    for (pass, size) in [("1", "32x32"), ("2", "64x64")] {
        let row = text
            .lines()
            .find(|l| l.split_whitespace().take(2).eq([pass, size]))
            .unwrap_or_else(|| panic!("no row for pass {pass}: {text}"));
        assert!(row.contains(&weights), "{row} (weights {weights})");
        assert!(
            text.contains(&format!(
                "pass {pass}: fits full, fits tiled; largest that fits: "
            )),
            "{text}"
        );
    }
}

/// `check … | head` (a reader that closes the pipe early) ends quietly, as `ls | head` does,
/// never with a panic about the broken pipe.
#[test]
fn check_into_a_closed_pipe_ends_without_a_panic() {
    use std::process::{Command, Stdio};
    let scratch = Scratch::new("check-closed-pipe");
    let profile = scratch.write("p.toml", &clean(&tiny_ldm(), "", "", ""));
    let mut child = Command::new(env!("CARGO_BIN_EXE_hiresfix"))
        .args(["check", profile.to_str().unwrap()])
        .env("HIRESFIX_CACHE_DIR", repo().join("target/test-cache"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away before the first line is written.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_ne!(out.status.code(), Some(101), "{err}");
}
