//! UNet patches from the profile: per-pass lists, errors before anything loads, infotext and
//! replay, a third-party patch built outside the workspace. (Numerical parity of the built-in
//! patches: plugins/stable-diffusion/tests/integration/patches.rs.)

use crate::common::*;
use hiresfix::output::{encode_png, read_rgb8};
use hiresfix::profile::Profile;

const SHRINK_AND_FREEU: &str = r#"patches = [{ name = "deep_shrink", block = 3, factor = 2.0, start = 0.0, end = 1.0 }, { name = "freeu", b1 = 1.3, b2 = 1.4, s1 = 0.9, s2 = 0.2 }]"#;

fn pixels(scratch: &Scratch, png: &str) -> Vec<u8> {
    read_rgb8(&scratch.path(png)).unwrap().2
}

#[test]
fn patches_in_pass_2_only_leave_pass_1_bit_identical() {
    let scratch = Scratch::new("patch-pass2");
    let plain = tiny_profile(&tiny_ldm(), "save_passes = true", "", "");
    let pass2 = tiny_profile(&tiny_ldm(), "save_passes = true", "", SHRINK_AND_FREEU);
    for (name, profile) in [("plain", &plain), ("pass2", &pass2)] {
        let out = generate_as(&scratch, name, profile);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    assert_eq!(
        pixels(&scratch, "pass2-pass1.png"),
        pixels(&scratch, "plain-pass1.png"),
        "pass 1 has no patches: it must be the unpatched run's, bit for bit"
    );
    assert_ne!(
        pixels(&scratch, "pass2.png"),
        pixels(&scratch, "plain.png"),
        "pass 2 ran with deep_shrink and freeu"
    );
    let params = hiresfix::infotext::parse(&chunk(&scratch.path("pass2.png"), "parameters"));
    assert_eq!(params.get("kohya_hrfix_enabled"), None);
    assert_eq!(params.get("Hires kohya_hrfix_enabled"), Some("True"));
    assert_eq!(params.get("Hires kohya_hrfix_end_percent"), Some("1.0"));
    assert_eq!(params.get("Hires freeu_b2"), Some("1.4"));
}

#[test]
fn top_level_patches_run_every_pass_are_recorded_and_replay_identically() {
    let scratch = Scratch::new("patch-top");
    // Top level for every pass; pass 2 turns them off with `patches = []`.
    let profile = tiny_profile(&tiny_ldm(), SHRINK_AND_FREEU, "", "patches = []");
    let out = generate_as(&scratch, "top", &profile);
    assert!(out.status.success(), "{}", stderr(&out));
    let plain = generate_as(&scratch, "plain", &tiny_profile(&tiny_ldm(), "", "", ""));
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert_ne!(pixels(&scratch, "top.png"), pixels(&scratch, "plain.png"));
    let text = chunk(&scratch.path("top.png"), "parameters");
    let params = hiresfix::infotext::parse(&text);
    for (key, value) in [
        ("kohya_hrfix_enabled", "True"),
        ("kohya_hrfix_block_number", "3"),
        ("kohya_hrfix_downscale_factor", "2.0"),
        ("kohya_hrfix_downscale_after_skip", "True"),
        ("kohya_hrfix_downscale_method", "bicubic"),
        ("freeu_enabled", "True"),
        ("freeu_version", "2"),
        ("freeu_b1", "1.3"),
        ("Hires patches", "None"),
    ] {
        assert_eq!(params.get(key), Some(value), "{key} in {text}");
    }
    let replay = hiresfix(&scratch.0, &["replay", "top.png", "-o", "again.png"], &[]);
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert_eq!(
        std::fs::read(scratch.path("again.png")).unwrap(),
        std::fs::read(scratch.path("top.png")).unwrap(),
        "replay carries the patches: byte-identical"
    );
}

#[test]
fn unknown_patch_names_and_options_are_errors_before_anything_loads() {
    let scratch = Scratch::new("patch-errors");
    let cases = [
        (
            r#"patches = [{ name = "deep_shrnk" }]"#,
            "unknown patch `deep_shrnk` — did you mean `deep_shrink`? available: deep_shrink, freeu, hypertile, tome",
        ),
        (
            r#"patches = [{ name = "freeu", b3 = 1.0 }]"#,
            "patch `freeu` has no option `b3` (it reads: version, b1, b2, s1, s2)",
        ),
        (
            r#"patches = [{ name = "deep_shrink", downscale_method = "lanczos" }]"#,
            "option `downscale_method` must be one of bicubic, bilinear, nearest-exact, area, got `lanczos`",
        ),
        (r#"patches = [{ factor = 2.0 }]"#, "missing field `name`"),
    ];
    for (i, (top, expected)) in cases.iter().enumerate() {
        let name = format!("bad{i}");
        let out = generate_as(&scratch, &name, &tiny_profile(&tiny_ldm(), top, "", ""));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{top}: {err}");
        assert!(err.contains(expected), "{top}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert!(!scratch.path(&format!("{name}.png")).exists());
    }
}

#[test]
fn out_of_workspace_patch_is_selected_by_name() {
    let lib = build_outside_plugin("examples/third-party-patch", "example_patch");
    let scratch = Scratch::new("ext-patch");
    let dir = plugin_dir(&scratch, "my-plugins", &[&lib]);
    let with = |patch: &str| {
        let top = format!("plugin_dirs = [\"{}\"]\n{patch}", dir.display());
        tiny_profile(&tiny_ldm(), &top, "", "")
    };
    let identity = with(r#"patches = [{ name = "example_skip_scale", scale = 1.0 }]"#);
    let scaled = with(r#"patches = [{ name = "Example skip scale", scale = 0.8 }]"#);
    let plain = with("");
    for (name, profile) in [
        ("identity", &identity),
        ("scaled", &scaled),
        ("plain", &plain),
    ] {
        let out = generate_as(&scratch, name, profile);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    // Scaling the skips by 1 is the plain UNet; by 0.8 it is not. A patched call runs every
    // CFG row through the whole UNet, the plain one shares each image's rows up to the first
    // cross-attention (`UNetModel::forward_cfg`): the same sums in another order, so the
    // identity may round one level apart.
    let largest_difference = |a: &str, b: &str| {
        let (a, b) = (pixels(&scratch, a), pixels(&scratch, b));
        assert_eq!(a.len(), b.len());
        a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap()
    };
    let identity = largest_difference("identity.png", "plain.png");
    assert!(
        identity <= 1,
        "identity patch: {identity} levels from plain"
    );
    let scaled = largest_difference("scaled.png", "plain.png");
    assert!(scaled > 8, "scale 0.8: only {scaled} levels from plain");
    let params = hiresfix::infotext::parse(&chunk(&scratch.path("scaled.png"), "parameters"));
    assert_eq!(params.get("Example skip scale"), Some("0.8"));
}

#[test]
fn forge_patch_fields_import_as_patches() {
    let scratch = Scratch::new("patch-import");
    // As Forge writes its built-in Kohya HRFix and FreeU extensions' fields.
    let text = "a castle\n\
Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 1024x1024, Model: base, \
kohya_hrfix_enabled: True, kohya_hrfix_block_number: 3, kohya_hrfix_downscale_factor: 2.0, \
kohya_hrfix_start_percent: 0.0, kohya_hrfix_end_percent: 0.35, kohya_hrfix_downscale_after_skip: True, \
kohya_hrfix_downscale_method: bicubic, kohya_hrfix_upscale_method: bicubic, \
freeu_enabled: True, freeu_b1: 1.01, freeu_b2: 1.02, freeu_s1: 0.99, freeu_s2: 0.95, \
Denoising strength: 0.5, Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Hires patches: None";
    let png = encode_png(8, 8, &[0; 8 * 8 * 3], text, "", None).unwrap();
    std::fs::write(scratch.path("forge.png"), png).unwrap();
    let out = hiresfix(&scratch.0, &["replay", "--to-profile", "forge.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let imported = Profile::parse(&String::from_utf8_lossy(&out.stdout), "imported").unwrap();
    let expected = Profile::parse(
        r#"
patches = [{ name = "deep_shrink", block = 3, factor = 2.0, start = 0.0, end = 0.35, after_skip = true, downscale_method = "bicubic", upscale_method = "bicubic" },
           { name = "freeu", b1 = 1.01, b2 = 1.02, s1 = 0.99, s2 = 0.95 }]
[[pass]]
patches = []
"#,
        "expected",
    )
    .unwrap();
    assert_eq!(imported.patches, expected.patches);
    assert_eq!(
        imported.passes[0].patches, None,
        "pass 1 runs the top-level list"
    );
    assert_eq!(imported.passes[1].patches, Some(Vec::new()));
    let notes = stderr(&out);
    assert!(
        !notes.contains("kohya_hrfix") && !notes.contains("freeu"),
        "{notes}"
    );
}

#[test]
fn deep_shrink_in_pass_1_silences_the_native_size_warning() {
    // The tiny model's pass 1 (32 px) is far from SD 1.x's 512: `check` warns, unless pass 1
    // runs deep_shrink, which exists to compose away from the native size.
    let scratch = Scratch::new("patch-lint");
    let warns = |name: &str, top: &str| {
        let path = scratch.write(name, &tiny_profile(&tiny_ldm(), top, "", ""));
        let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
        text.contains("far from")
    };
    assert!(warns("plain.toml", ""));
    assert!(!warns(
        "shrink.toml",
        r#"patches = [{ name = "deep_shrink" }]"#
    ));
    assert!(warns("freeu.toml", r#"patches = [{ name = "freeu" }]"#));
}

#[test]
fn hypertile_and_tome_change_pass_2_record_their_fields_and_replay_byte_identically() {
    // Pass 2 at 64 px: an 8 × 8 latent, tiled 2 × 1, 1 × 2 or 2 × 2 with 32 px tiles (4 cells).
    let scratch = Scratch::new("patch-attention");
    let attention = r#"patches = [{ name = "hypertile", tile_size = 32 }, { name = "tome" }]"#;
    let plain = tiny_profile(&tiny_ldm(), "", "", "");
    let patched = tiny_profile(&tiny_ldm(), "", "", attention);
    for (name, profile) in [("plain", &plain), ("patched", &patched)] {
        let out = generate_as(&scratch, name, profile);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
    }
    assert_ne!(
        pixels(&scratch, "patched.png"),
        pixels(&scratch, "plain.png")
    );
    let params = hiresfix::infotext::parse(&chunk(&scratch.path("patched.png"), "parameters"));
    for (key, value) in [
        ("Hires Hypertile U-Net", "True"),
        ("Hires Hypertile U-Net max tile size", "32"),
        ("Hires Hypertile U-Net swap size", "2"),
        ("Hires Token merging ratio", "0.5"),
        ("Hires Token merging sx", "2"),
        ("Hires Token merging random", "True"),
    ] {
        assert_eq!(params.get(key), Some(value), "{key}");
    }
    // `replay --to-profile` reads them back as the same patches.
    let out = hiresfix(&scratch.0, &["replay", "--to-profile", "patched.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let imported = Profile::parse(&String::from_utf8_lossy(&out.stdout), "imported").unwrap();
    let expected = Profile::parse(
        r#"
[[pass]]
[[pass]]
patches = [{ name = "hypertile", tile_size = 32, swap_size = 2, max_depth = 0, scale_depth = false },
           { name = "tome", ratio = 0.5, max_downsample = 1, sx = 2, sy = 2, use_rand = true }]
"#,
        "expected",
    )
    .unwrap();
    assert_eq!(imported.passes[1].patches, expected.passes[1].patches);
    let replay = hiresfix(
        &scratch.0,
        &["replay", "patched.png", "-o", "again.png"],
        &[],
    );
    assert!(replay.status.success(), "{}", stderr(&replay));
    assert_eq!(
        std::fs::read(scratch.path("again.png")).unwrap(),
        std::fs::read(scratch.path("patched.png")).unwrap(),
        "the choices come from the seed: a rerun is byte-identical"
    );
}

#[test]
fn a1111_token_merging_and_hypertile_fields_import_as_patches() {
    let scratch = Scratch::new("patch-import-a1111");
    // As A1111 1.7+ writes its built-in ToMe and Hypertile settings (pass 1 and hires alike).
    let text = "a castle\n\
Steps: 20, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 512x512, Model: base, \
Token merging ratio: 0.3, Hypertile U-Net: True, Hypertile U-Net max depth: 2, \
Hypertile U-Net max tile size: 128, Hypertile U-Net swap size: 3";
    let png = encode_png(8, 8, &[0; 8 * 8 * 3], text, "", None).unwrap();
    std::fs::write(scratch.path("a1111.png"), png).unwrap();
    let out = hiresfix(&scratch.0, &["replay", "--to-profile", "a1111.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let imported = Profile::parse(&String::from_utf8_lossy(&out.stdout), "imported").unwrap();
    let expected = Profile::parse(
        r#"
patches = [{ name = "tome", ratio = 0.3, use_rand = false },
           { name = "hypertile", max_depth = 2, tile_size = 128, swap_size = 3 }]
"#,
        "expected",
    )
    .unwrap();
    assert_eq!(imported.patches, expected.patches);
}
