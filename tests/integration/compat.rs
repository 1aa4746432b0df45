//! The stable ABI, kept by a test: the examples (sampler, upscaler, patch) and a minimal
//! third-party backend, built against the frozen host-api 1.0.0 in `compat/`, load into the
//! current host and make the same images as the same code built against today's `host-api/`;
//! plugins claiming a newer minor or another major are refused with both versions named.
use std::path::PathBuf;

use crate::common::*;
use hiresfix::output::read_rgb8;

/// Each example crate and its library name.
const EXAMPLES: [(&str, &str); 4] = [
    ("examples/third-party-sampler", "example_sampler"),
    ("examples/third-party-upscaler", "example_upscaler"),
    ("examples/third-party-patch", "example_patch"),
    ("examples/third-party-backend", "example_backend"),
];

/// A 2-pass profile on the tiny SD1 model using the example sampler, upscaler and patch.
fn sd_profile(plugins: &std::path::Path) -> String {
    let top = format!(
        "plugin_dirs = [\"{}\"]\npatches = [{{ name = \"example_skip_scale\", scale = 0.9 }}]",
        plugins.display()
    );
    tiny_profile(
        &tiny_ldm(),
        &top,
        "sampler = \"example_euler\"",
        "upscaler = \"example_sharp_bicubic\"",
    )
}

/// A 2-pass profile on the example backend's toy model (its checkpoint is a text file).
fn toy_profile(scratch: &Scratch, plugins: &std::path::Path) -> String {
    let model = scratch.write("toy.model", "hiresfix toy model\nmean = 0.25\nstd = 0.5\n");
    format!(
        r#"seed = 11
prompt = "a lighthouse"
negative = "blurry"
cfg = 3.0
device = "cpu"
plugin_dirs = ["{}"]
[model]
checkpoint = "{}"
[[pass]]
width = 64
height = 64
steps = 4
sampler = "euler_ancestral"
[[pass]]
scale = 2.0
steps = 3
denoise = 0.5
upscaler = "pixel-lanczos"
"#,
        plugins.display(),
        model.display()
    )
}

/// Generates `profile` as `name.png` and returns its pixels.
fn pixels(scratch: &Scratch, name: &str, profile: &str) -> Vec<u8> {
    let out = generate_as(scratch, name, profile);
    assert!(out.status.success(), "{name}: {}", stderr(&out));
    read_rgb8(&scratch.path(&format!("{name}.png"))).unwrap().2
}

#[test]
fn plugins_built_against_frozen_1_0_load_and_match_their_current_builds() {
    let frozen: Vec<PathBuf> = EXAMPLES
        .iter()
        .map(|(dir, lib)| build_outside_plugin(dir, lib))
        .collect();
    let current: Vec<PathBuf> = EXAMPLES
        .iter()
        .map(|(dir, lib)| build_against_current_host_api(dir, lib))
        .collect();
    let scratch = Scratch::new("compat-1-0");
    let frozen_dir = plugin_dir(
        &scratch,
        "frozen",
        &frozen.iter().map(|p| p.as_path()).collect::<Vec<_>>(),
    );
    let current_dir = plugin_dir(
        &scratch,
        "current",
        &current.iter().map(|p| p.as_path()).collect::<Vec<_>>(),
    );

    let listing = hiresfix(
        &scratch.0,
        &["plugins"],
        &[("HIRESFIX_PLUGIN_PATH", &frozen_dir)],
    );
    let text = String::from_utf8_lossy(&listing.stdout);
    for (_, lib) in EXAMPLES {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("lib{lib}.so")))
            .unwrap_or_else(|| panic!("lib{lib}.so not listed:\n{text}"));
        assert!(line.contains("(host-api 1.0.0,"), "{line}");
        assert!(!line.contains("REFUSED"), "{line}");
    }

    let sd_frozen = pixels(&scratch, "sd-frozen", &sd_profile(&frozen_dir));
    let sd_current = pixels(&scratch, "sd-current", &sd_profile(&current_dir));
    assert_eq!(sd_frozen.len(), 64 * 64 * 3);
    assert_eq!(
        sd_frozen, sd_current,
        "sampler + upscaler + patch: frozen vs current build"
    );

    let toy_frozen = pixels(&scratch, "toy-frozen", &toy_profile(&scratch, &frozen_dir));
    let toy_current = pixels(
        &scratch,
        "toy-current",
        &toy_profile(&scratch, &current_dir),
    );
    assert_eq!(toy_frozen.len(), 128 * 128 * 3);
    assert_eq!(
        toy_frozen, toy_current,
        "minimal backend: frozen vs current build"
    );
    // The toy model's images are not flat: the backend really ran.
    let (lo, hi) = (toy_frozen.iter().min(), toy_frozen.iter().max());
    assert!(hi.unwrap() - lo.unwrap() > 40, "{lo:?}..{hi:?}");
}

#[test]
fn a_backend_without_the_tools_table_generates_but_info_says_what_it_lacks() {
    let lib = build_outside_plugin("examples/third-party-backend", "example_backend");
    let scratch = Scratch::new("compat-no-tools");
    let dir = plugin_dir(&scratch, "plugins", &[&lib]);
    let profile = scratch.write("toy.toml", &toy_profile(&scratch, &dir));
    let check = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    assert!(check.status.success(), "{}", stderr(&check));
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("(toy_gaussian)") && said.contains("ok: 2 passes"),
        "{said}"
    );
    let model = scratch.path("toy.model");
    let info = hiresfix(
        &scratch.0,
        &["info", model.to_str().unwrap()],
        &[("HIRESFIX_PLUGIN_PATH", &dir)],
    );
    assert_eq!(info.status.code(), Some(1));
    let err = stderr(&info);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("family toy_gaussian has no `hiresfix info` support"),
        "{err}"
    );
}

#[test]
fn plugins_of_a_newer_minor_or_another_major_are_refused_naming_both_versions() {
    let minor = build_outside_plugin("tests/fixtures", "future_minor_plugin");
    let major = build_outside_plugin("tests/fixtures", "future_major_plugin");
    let scratch = Scratch::new("compat-future");
    let dir = plugin_dir(&scratch, "plugins", &[&minor, &major]);
    let listing = hiresfix(&scratch.0, &["plugins"], &[("HIRESFIX_PLUGIN_PATH", &dir)]);
    let text = String::from_utf8_lossy(&listing.stdout);
    let line = |lib: &str| {
        text.lines()
            .find(|l| l.contains(lib))
            .unwrap_or_else(|| panic!("{lib} not listed:\n{text}"))
            .to_owned()
    };
    let minor_line = line("libfuture_minor_plugin.so");
    assert!(
        minor_line.contains(
            "REFUSED: built against host-api 1.99.0, newer than this host's host-api 1.5.0"
        ),
        "{minor_line}"
    );
    let major_line = line("libfuture_major_plugin.so");
    assert!(
        major_line
            .contains("REFUSED: built against host-api 2.0.0, this host speaks host-api 1.5.0"),
        "{major_line}"
    );
    assert!(
        text.contains("euler_ancestral"),
        "the others still load:\n{text}"
    );
}

/// A backend older than host-api 1.3 reads no embeddings: a prompt naming one is a warning that
/// says so, once, and the image is still made.
#[test]
fn an_embedding_named_for_a_1_0_backend_is_one_warning_naming_the_plugin_age() {
    let lib = build_outside_plugin("examples/third-party-backend", "example_backend");
    let scratch = Scratch::new("compat-embeddings");
    let dir = plugin_dir(&scratch, "plugins", &[&lib]);
    let embeddings = scratch.path("embeddings");
    std::fs::create_dir_all(&embeddings).unwrap();
    std::fs::copy(
        repo().join("tests/data/embeddings/sd1/tinyneg.safetensors"),
        embeddings.join("tinyneg.safetensors"),
    )
    .unwrap();
    let profile = toy_profile(&scratch, &dir)
        .replace("a lighthouse", "a lighthouse, tinyneg")
        .replace("cfg = 3.0", "cfg = 3.0\nembedding_dirs = [\"embeddings\"]");
    let out = generate_as(&scratch, "toy", &profile);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("tinyneg")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].starts_with("warning: ") && lines[0].contains("host-api 1.2 or older"),
        "{err}"
    );
}
