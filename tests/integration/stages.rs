//! The automatic stage plan (README "Stage plan"): `target` with one pass table plans the
//! passes; `check` prints them, `generate` runs them, and the resolved profile the PNG carries
//! holds them, so `replay` reproduces the image byte for byte.

use crate::common::*;
use hiresfix::profile::Profile;

/// `tiny_profile` with its pass 2 removed, `top` added and pass 1's `width = 32\nheight = 32`
/// replaced by `pass1`.
fn one_pass(top: &str, pass1: &str) -> String {
    let text = tiny_profile(&tiny_ldm(), top, "", "");
    let cut = text.rfind("[[pass]]").unwrap();
    text[..cut]
        .replace("width = 32\nheight = 32", pass1)
        .replace("steps = 3", "steps = 2")
}

#[test]
fn check_prints_the_stage_plan_from_the_native_area() {
    let scratch = Scratch::new("stages-check");
    // No size in pass 1: composed at SD 1.x's native 512² px area with the target's 16:9.
    let profile = scratch.write("p.toml", &one_pass("target = \"4096x2304\"", ""));
    let out = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    let model = tiny_ldm().display().to_string();
    let expected = [
        "stage plan: 4 stages to 4096x2304, ×2 per stage".to_owned(),
        format!("pass 1: 680x384, 2 steps, denoise 1, sampler euler, schedule normal, model {model} (sd1)"),
        format!("pass 2: 1360x768, 2 steps, denoise 0.7, sampler euler, schedule normal, upscaler latent, model {model} (sd1)"),
        format!("pass 3: 2720x1536, 2 steps, denoise 0.7, sampler euler, schedule normal, upscaler latent, model {model} (sd1)"),
        format!("pass 4: 4096x2304, 2 steps, denoise 0.7, sampler euler, schedule normal, upscaler latent, model {model} (sd1)"),
    ];
    for line in &expected {
        assert!(lines.contains(line), "missing {line:?} in {lines:#?}");
    }
    assert!(lines.contains(&"ok: 4 passes".to_owned()), "{lines:#?}");
    // `--target` is the same key; `stage_factor` changes the step.
    let profile = scratch.write("q.toml", &one_pass("stage_factor = 4.0", ""));
    let out = hiresfix(
        &scratch.0,
        &["check", profile.to_str().unwrap(), "--target", "2048x2048"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    assert!(
        lines.contains(&"stage plan: 2 stages to 2048x2048, ×4 per stage".to_owned()),
        "{lines:#?}"
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("pass 2: 2048x2048, 2 steps")));
}

#[test]
fn generate_follows_the_plan_and_replay_is_byte_identical() {
    let scratch = Scratch::new("stages-run");
    // Pass 1's 32 px side stands for the native size (cheap): 32² px at 16:9 is 42.7x24, so
    // 40x24, then ×2, then the target.
    let text = one_pass("target = \"128x72\"\nsave_passes = true", "width = 32");
    let profile = scratch.write("p.toml", &text);
    let out = hiresfix(&scratch.0, &["generate", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Each stage's image (`save_passes`), the last one the target.
    let written = stdout_lines(&out);
    let sizes = png_sizes(&scratch, &written);
    assert_eq!(sizes, [(40, 24), (80, 48), (128, 72)], "{written:?}");
    // The resolved profile holds the plan as plain passes, the target gone.
    let image = scratch.path(&written[2]);
    let resolved = Profile::parse(&chunk(&image, "hiresfix-profile"), "embedded").unwrap();
    assert_eq!(resolved.target, None);
    let plan: Vec<_> = resolved
        .passes
        .iter()
        .map(|p| (p.width, p.height, p.steps, p.denoise, p.upscaler.clone()))
        .collect();
    let latent = || Some("latent".to_owned());
    // Each stage fits whole at these sizes: `tiled = "auto"` decided untiled, the key removed.
    assert!(resolved.passes.iter().all(|p| p.tiled.is_none()));
    assert_eq!(
        plan,
        [
            (Some(40), Some(24), Some(2), None, None),
            (Some(80), Some(48), Some(2), Some(0.7), latent()),
            (Some(128), Some(72), Some(2), Some(0.7), latent()),
        ]
    );
    let out = hiresfix(&scratch.0, &["replay", &written[2], "-o", "again.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read(&image).unwrap() == std::fs::read(scratch.path("again.png")).unwrap(),
        "replay is not byte-identical"
    );
}

/// A stage whose whole-latent UNet call the estimate says will not fit is tiled (README
/// "Tiled diffusion", `tiled = "auto"`): 16384 px needs hundreds of GiB untiled on any machine,
/// 512 px well under one.
#[test]
fn check_tiles_the_stages_that_would_not_fit() {
    let scratch = Scratch::new("stages-auto-tiled");
    let text = one_pass(
        "target = \"16384x16384\"\nstage_factor = 16.0",
        "width = 32",
    );
    let profile = scratch.write("p.toml", &text);
    let out = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    let starts = |prefix: &str| lines.iter().any(|l| l.starts_with(prefix));
    assert!(
        starts("pass 2: tiled = \"auto\": not tiled ("),
        "{lines:#?}"
    );
    assert!(starts("pass 4: tiled = \"auto\": tiled ("), "{lines:#?}");
    let tiles = "pass 4: tiled multidiffusion (overlap 48): 28900 tiles of 96x96 latent cells, 7225 model calls a step of at most 4 tiles";
    assert!(lines.contains(&tiles.to_owned()), "{lines:#?}");
    assert!(!starts("pass 2: tiled multidiffusion"), "{lines:#?}");
    // Pass 1's `when = "auto"` table gives every stage its settings (pass 1 fits: whole).
    let auto = "width = 32\ntiled = { when = \"auto\", tile = 128, overlap = 16 }";
    let text = one_pass("target = \"16384x16384\"\nstage_factor = 16.0", auto);
    let profile = scratch.write("q.toml", &text);
    let out = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    let tiles = "pass 4: tiled multidiffusion (overlap 16): 5329 tiles of 128x128 latent cells, 1333 model calls a step of at most 4 tiles";
    assert!(lines.contains(&tiles.to_owned()), "{lines:#?}");
    assert!(lines
        .iter()
        .any(|l| l.starts_with("pass 1: tiled = \"auto\": not tiled (")));
    // A plain table on pass 1 tiles every stage with it, whether or not the call would fit.
    let always = "width = 32\ntiled = { tile = 128, overlap = 16 }";
    let text = one_pass("target = \"16384x16384\"\nstage_factor = 16.0", always);
    let profile = scratch.write("r.toml", &text);
    let out = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    let pass2 = "pass 2: tiled multidiffusion (overlap 16): 9 tiles of 128x128 latent cells, 3 model calls a step of at most 3 tiles";
    assert!(lines.contains(&pass2.to_owned()), "{lines:#?}");
    assert!(
        !lines.iter().any(|l| l.contains("tiled = \"auto\"")),
        "{lines:#?}"
    );
}

/// `tiled = "auto"` on a pass that fits: untiled, the same image as without the key, and the
/// resolved profile records the decision (no `tiled`), so replay runs it whole anywhere.
#[test]
fn auto_on_a_pass_that_fits_runs_it_whole() {
    let scratch = Scratch::new("auto-tiled-fits");
    let mut images = Vec::new();
    for (name, line) in [("plain", ""), ("auto", "tiled = \"auto\"")] {
        let out = generate_as(&scratch, name, &tiny_profile(&tiny_ldm(), "", "", line));
        assert!(out.status.success(), "{}", stderr(&out));
        if name == "auto" {
            assert!(stderr(&out).contains("note: pass 2: tiled = \"auto\": not tiled ("));
        }
        images.push(scratch.path(&format!("{name}.png")));
    }
    let pixels = |p: &std::path::Path| hiresfix::output::read_rgb8(p).unwrap().2;
    assert!(pixels(&images[0]) == pixels(&images[1]));
    let resolved = Profile::parse(&chunk(&images[1], "hiresfix-profile"), "embedded").unwrap();
    assert_eq!(resolved.passes[1].tiled, None);
}
