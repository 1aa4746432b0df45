//! SPEC §7: every user-caused failure is one clear line, exit code 1, and no output file.
mod common;

use common::*;

/// Runs `generate` on `profile` and checks the failure contract; returns the error line.
fn fails_cleanly(name: &str, profile: &str) -> String {
    let scratch = Scratch::new(name);
    let path = scratch.write("p.toml", profile);
    let out = hiresfix(&scratch.0, &["generate", path.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{name}: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{name}: expected one line, got:\n{err}");
    assert!(lines[0].starts_with("error: "), "{name}: {err}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{name}: {err}"
    );
    assert!(scratch.pngs().is_empty(), "{name}: left an output file");
    lines[0].to_owned()
}

#[test]
fn missing_checkpoint_names_the_file() {
    let err = fails_cleanly(
        "missing",
        &tiny_profile(std::path::Path::new("models/nope.safetensors"), "", "", ""),
    );
    assert!(err.contains("models/nope.safetensors not found"), "{err}");
}

#[test]
fn truncated_safetensors_is_reported_not_panicked() {
    let scratch = Scratch::new("truncated-src");
    let bytes = std::fs::read(tiny_ldm()).unwrap();
    let cut = scratch.path("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let err = fails_cleanly("truncated", &tiny_profile(&cut, "", "", ""));
    assert!(err.contains("cut.safetensors"), "{err}");
    assert!(
        err.to_lowercase().contains("truncated") || err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn bad_safetensors_header_is_reported() {
    let scratch = Scratch::new("badheader-src");
    let bad = scratch.path("bad.safetensors");
    std::fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}").unwrap();
    let err = fails_cleanly("badheader", &tiny_profile(&bad, "", "", ""));
    assert!(err.contains("bad.safetensors"), "{err}");
}

#[test]
fn unknown_sampler_lists_the_available_ones() {
    let err = fails_cleanly(
        "sampler",
        &tiny_profile(&tiny_ldm(), "", "", "sampler = \"eulr\""),
    );
    assert!(err.contains("unknown sampler `eulr`"), "{err}");
    for name in [
        "euler (Euler)",
        "euler_ancestral (Euler a)",
        "ddim (DDIM)",
        "dpmpp_2m (DPM++ 2M)",
    ] {
        assert!(err.contains(name), "{name} missing from: {err}");
    }
}

#[test]
fn unknown_upscaler_lists_the_available_ones() {
    let err = fails_cleanly(
        "upscaler",
        &tiny_profile(&tiny_ldm(), "", "", "upscaler = \"lanczos9\""),
    );
    assert!(err.contains("unknown upscaler `lanczos9`"), "{err}");
    assert!(err.contains("latent-bicubic"), "{err}");
}

#[test]
fn unknown_profile_key_gets_line_column_and_suggestion() {
    let err = fails_cleanly("key", &tiny_profile(&tiny_ldm(), "", "stpes = 3", ""));
    assert!(
        err.contains("p.toml:17:1: unknown key `stpes`; did you mean `steps`?"),
        "{err}"
    );
}

#[test]
fn zero_steps_is_refused() {
    let err = fails_cleanly(
        "steps0",
        &tiny_profile(&tiny_ldm(), "", "", "").replace("steps = 3", "steps = 0"),
    );
    assert!(
        err.contains("p.toml:15:9: steps must be between 1 and 10000"),
        "{err}"
    );
}

#[test]
fn denoise_outside_zero_one_is_refused() {
    for bad in ["0.0", "1.5", "-0.2"] {
        let profile = tiny_profile(&tiny_ldm(), "", "", "")
            .replace("denoise = 0.5", &format!("denoise = {bad}"));
        let err = fails_cleanly(&format!("denoise{bad}"), &profile);
        assert!(err.contains("denoise must be in (0, 1]"), "{err}");
    }
}

#[test]
fn bad_set_override_is_a_clear_error() {
    let scratch = Scratch::new("badset");
    let path = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    let out = hiresfix(
        &scratch.0,
        &[
            "generate",
            path.to_str().unwrap(),
            "--set",
            "pass.2.denoise=2",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("denoise must be in (0, 1]"),
        "{}",
        stderr(&out)
    );
    assert!(scratch.pngs().is_empty());
}

#[test]
fn usage_errors_exit_with_two() {
    let scratch = Scratch::new("usage");
    let out = hiresfix(&scratch.0, &["generate"], &[]);
    assert_eq!(out.status.code(), Some(2));
}
