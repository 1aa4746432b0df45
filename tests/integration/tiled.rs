//! Tiled diffusion (a pass's `tiled`): 2-pass runs on the tiny SD1 model whose hires pass is
//! MultiDiffusion or Mixture of Diffusers over 12 tiles in 3 calls (and SDXL's, Mixture), against
//! scripts/make_tiled_reference.py (the A1111 extension's tiles and weights around
//! k-diffusion Euler); and one tile covering the latent being the untiled pass itself.

use crate::common::tensors::{read_reference, rel_err};
use crate::common::*;
use hiresfix::generate::prepare;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::Tensor;

fn data(rel: &str) -> std::path::PathBuf {
    repo().join("tests/data/tiled").join(rel)
}

/// The reference's 2-pass run (48×40 then ×2, Euler), pass 2 with `tiled` lines (or none).
fn latents(tiled: &str) -> Vec<Tensor> {
    run(("a photo of a cat", &tiny_ldm()), (48, 40), tiled)
}

fn run(
    (prompt, checkpoint): (&str, &std::path::Path),
    (w, h): (u32, u32),
    tiled: &str,
) -> Vec<Tensor> {
    let text = reference_profile(
        (prompt, "", checkpoint),
        (w, h, 6),
        "sampler = \"euler\"",
        &format!("upscaler = \"latent\"\nsampler = \"euler\"\n{tiled}"),
    );
    let p = Profile::parse(&text, "tiled").unwrap();
    let registry = Registry::load(&[], &Default::default());
    let mut job = prepare(p, &registry, &repo()).unwrap();
    job.run_image(1234).unwrap().latents
}

/// The committed reference: its cases (run.json) and latents.
fn reference() -> (serde_json::Value, std::collections::HashMap<String, Tensor>) {
    let json = std::fs::read_to_string(data("run.json")).unwrap();
    let cases = serde_json::from_str::<serde_json::Value>(&json).unwrap()["cases"].take();
    (cases, read_reference(&data("run.safetensors")))
}

/// The profile line of a reference case's settings.
fn tiled_line(case: &serde_json::Value) -> String {
    let n = |k: &str| case[k].as_u64().unwrap();
    format!(
        "tiled = {{ method = \"{}\", tile = {}, overlap = {}, batch = {} }}",
        case["method"].as_str().unwrap(),
        n("tile"),
        n("overlap"),
        n("batch")
    )
}

#[test]
fn multidiffusion_and_mixture_match_the_extensions_algorithm() {
    let (cases, r) = reference();
    for name in ["multidiffusion", "mixture"] {
        let l = latents(&tiled_line(&cases[name]));
        let e1 = rel_err(&l[0], &r["latent1"]);
        let e2 = rel_err(&l[1], &r[&format!("{name}.latent2")]);
        // How far the tiling moves the pass: a run ignoring it could not match.
        let apart = rel_err(&r[&format!("{name}.latent2")], &r["untiled.latent2"]);
        eprintln!("{name}: pass 1 {e1:.2e}, pass 2 {e2:.2e} (untiled is {apart:.2e} away)");
        assert!(e1 < 1e-4 && e2 < 1e-4, "{name}: {e1} {e2}");
        assert!(apart > 1e-3, "{name}: {apart}");
    }
}

/// SDXL: the tiles keep the image's size conditioning (the extension repeats it per tile);
/// pass 2 of sdxl-tiny's parity run, Mixture of Diffusers over 15 tiles in calls of 4, 4, 4, 3.
#[test]
fn sdxl_tiles_match_the_extensions_algorithm() {
    let (cases, r) = reference();
    let sdxl = repo().join("tests/data/sdxl-tiny");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sdxl.join("reference.json")).unwrap())
            .unwrap();
    let prompt = settings["settings"]["long_prompt"].as_str().unwrap();
    let checkpoint = sdxl.join("sdxl-tiny.safetensors");
    let l = run((prompt, &checkpoint), (48, 32), &tiled_line(&cases["sdxl"]));
    let e2 = rel_err(&l[1], &r["sdxl.latent2"]);
    let untiled = read_reference(&sdxl.join("reference.safetensors"));
    let apart = rel_err(&r["sdxl.latent2"], &untiled["run.latent2"]);
    eprintln!("sdxl mixture: pass 2 {e2:.2e} (untiled is {apart:.2e} away)");
    assert!(e2 < 1e-4 && apart > 1e-3, "{e2} {apart}");
}

#[test]
fn one_tile_covering_the_latent_is_the_untiled_pass() {
    let untiled = latents("");
    // The default tile (96 cells) is larger than pass 2's 48×40 latent: one tile, clamped.
    let tiled = latents("tiled = { method = \"mixture\" }");
    assert_eq!(rel_err(&untiled[1], &tiled[1]), 0.0);
    assert!(untiled[1].equal(&tiled[1]));
}

/// A batch of images runs each image's tiles as its single run does (each equal to it).
#[test]
fn a_batch_of_two_tiled_images_is_each_images_single_run() {
    let text = reference_profile(
        ("a photo of a cat", "", &tiny_ldm()),
        (48, 40, 2),
        "sampler = \"euler\"",
        "upscaler = \"latent\"\nsampler = \"euler\"\ntiled = { method = \"mixture\", tile = 20, overlap = 8, batch = 5 }",
    );
    let p = Profile::parse(&text, "tiled").unwrap();
    let registry = Registry::load(&[], &Default::default());
    let mut job = prepare(p, &registry, &repo()).unwrap();
    let seeds = hiresfix::noise::ImageSeeds::plain;
    let batch = job.run_batch(&[seeds(7), seeds(8)], 2).unwrap();
    for (i, seed) in [7, 8].into_iter().enumerate() {
        let single = job.run_image(seed).unwrap();
        assert!(batch[i].latents[1].equal(&single.latents[1]), "image {i}");
    }
}

/// `check`'s UNet column of pass 2 (MiB) at `side` px, with `tiled` lines.
fn checked_unet(scratch: &Scratch, side: u32, tiled: &str) -> f64 {
    let text = tiny_profile(
        &tiny_ldm(),
        "",
        "",
        &format!("width = {side}\nheight = {side}\n{tiled}"),
    )
    .replace("scale = 2.0\n", "");
    let profile = scratch.write("p.toml", &text);
    let out = hiresfix(&scratch.0, &["check", profile.to_str().unwrap()], &[]);
    let row = stdout_lines(&out)
        .into_iter()
        .find(|l| l.starts_with("2 ") && l.contains(&format!("{side}x{side}")))
        .unwrap_or_else(|| panic!("no pass 2 row: {}", stderr(&out)));
    let cells: Vec<&str> = row.split_whitespace().collect();
    let value: f64 = cells[4].parse().unwrap();
    match cells[5] {
        "GiB" => value * 1024.0,
        _ => value,
    }
}

/// The memory estimate of a tiled pass: one call of at most `batch` tiles at the tile's size
/// (the backend's estimate there, as for an untiled pass of that size) plus the whole-latent
/// merge buffers (latent, two sums, weights: 4 × 4 channels × 4 bytes a cell).
#[test]
fn a_tiled_pass_is_estimated_as_one_call_of_tiles() {
    let scratch = Scratch::new("tiled-memory");
    // The tiny model's VAE is 2×: 96 cells are 192 px; 4096 px is 2048² cells.
    let tile_call = checked_unet(&scratch, 192, "");
    let whole = checked_unet(&scratch, 4096, "");
    let tiled = checked_unet(&scratch, 4096, "tiled = { batch = 1 }");
    let buffers = (2048.0 * 2048.0 * 4.0 * 4.0 * 4.0) / (1u64 << 20) as f64;
    eprintln!("UNet: whole {whole} MiB, tiled {tiled} MiB, a tile's call {tile_call} MiB");
    assert!(
        ((tiled - buffers) - tile_call).abs() < 1.0,
        "{tiled} {tile_call}"
    );
    assert!(tiled * 50.0 < whole, "{tiled} {whole}");
}

/// The infotext carries the A1111 extension's `Tiled Diffusion` field (a hires pass's behind
/// `Hires `), and importing the extension's field gives the table back.
#[test]
fn the_infotext_field_is_the_extensions_and_imports_back() {
    let scratch = Scratch::new("tiled-infotext");
    let line = "tiled = { method = \"mixture\", tile = 8, overlap = 4, batch = 2 }";
    let out = generate_as(&scratch, "t", &tiny_profile(&tiny_ldm(), "", "", line));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = chunk(&scratch.path("t.png"), "parameters");
    let field = "Hires Tiled Diffusion: \"{'Method': 'Mixture of Diffusers', 'Latent tile width': 8, 'Latent tile height': 8, 'Overlap': 4, 'Tile batch size': 2}\"";
    assert!(text.contains(field), "{text}");
    assert!(!text.contains(", Tiled Diffusion:"), "{text}");
    // The extension's own field (it tiles A1111's first pass), from its `str()` of a dict.
    let a1111 = "a cat\nSteps: 4, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, \
Tiled Diffusion: \"{'Method': 'MultiDiffusion', 'Latent tile width': 64, 'Latent tile height': 64, 'Overlap': 16, 'Tile batch size': 3}\"";
    let png = hiresfix::output::encode_png(8, 8, &[0; 8 * 8 * 3], a1111, "", None).unwrap();
    std::fs::write(scratch.path("a1111.png"), png).unwrap();
    let out = hiresfix(&scratch.0, &["replay", "--to-profile", "a1111.png"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let imported = Profile::parse(&String::from_utf8_lossy(&out.stdout), "imported").unwrap();
    let expected = hiresfix::tiled::Tiled {
        method: hiresfix::tiled::Method::MultiDiffusion,
        tile: 64,
        overlap: 16,
        batch: 3,
    };
    assert_eq!(
        imported.passes[0].tiled,
        Some(hiresfix::tiled::setting::TiledSetting::Table(expected))
    );
}

/// Seamless output (`tiling = true`) with a tiled pass runs and stays seamless: the image
/// continues across its edges as a plain run's does not (README "Tiled diffusion"). That the
/// tiles themselves wrap is `tiled::tests::wrapping_tiles_commute_with_a_roll` (this run at
/// denoise 0.5 keeps much of pass 1's wrap-around either way).
#[test]
fn a_seamless_tiled_pass_wraps_around() {
    let scratch = Scratch::new("tiled-seamless");
    // Pass 2 at 128 px: 16 latent cells a side, 4 wrapping tiles of 8 each way.
    let pass2 = "width = 128\nheight = 128\ntiled = { tile = 8, overlap = 4 }";
    let mut excess = Vec::new();
    for (name, top) in [("seamless", "tiling = true"), ("plain", "")] {
        let out = generate_as(&scratch, name, &tiny_profile(&tiny_ldm(), top, "", pass2));
        assert!(out.status.success(), "{}", stderr(&out));
        let (w, h, px) =
            hiresfix::output::read_rgb8(&scratch.path(&format!("{name}.png"))).unwrap();
        excess.push(crate::parity::seam_excess(w, h, &px));
    }
    eprintln!(
        "seam excess: seamless {:.3}, plain {:.3}",
        excess[0], excess[1]
    );
    assert!(excess[0] < 0.2 && excess[0] < excess[1] / 4.0, "{excess:?}");
}
