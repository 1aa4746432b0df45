//! Tiled diffusion (a pass's `tiled`): 2-pass runs on the tiny SD1 model whose hires pass is
//! MultiDiffusion or Mixture of Diffusers over 12 tiles in 3 calls, against
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
    let text = reference_profile(
        ("a photo of a cat", "", &tiny_ldm()),
        (48, 40, 6),
        "sampler = \"euler\"",
        &format!("upscaler = \"latent\"\nsampler = \"euler\"\n{tiled}"),
    );
    let p = Profile::parse(&text, "tiled").unwrap();
    let registry = Registry::load(&[], &Default::default());
    let mut job = prepare(p, &registry, &repo()).unwrap();
    job.run_image(1234).unwrap().latents
}

#[test]
fn multidiffusion_and_mixture_match_the_extensions_algorithm() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data("run.json")).unwrap()).unwrap();
    let r = read_reference(&data("run.safetensors"));
    for name in ["multidiffusion", "mixture"] {
        let case = &json["cases"][name];
        let n = |k: &str| case[k].as_u64().unwrap();
        let tiled = format!(
            "tiled = {{ method = \"{}\", tile = {}, overlap = {}, batch = {} }}",
            case["method"].as_str().unwrap(),
            n("tile"),
            n("overlap"),
            n("batch")
        );
        let l = latents(&tiled);
        let e1 = rel_err(&l[0], &r["latent1"]);
        let e2 = rel_err(&l[1], &r[&format!("{name}.latent2")]);
        // How far the tiling moves the pass: a run ignoring it could not match.
        let apart = rel_err(&r[&format!("{name}.latent2")], &r["untiled.latent2"]);
        eprintln!("{name}: pass 1 {e1:.2e}, pass 2 {e2:.2e} (untiled is {apart:.2e} away)");
        assert!(e1 < 1e-4 && e2 < 1e-4, "{name}: {e1} {e2}");
        assert!(apart > 1e-3, "{name}: {apart}");
    }
}

#[test]
fn one_tile_covering_the_latent_is_the_untiled_pass() {
    let untiled = latents("");
    // The default tile (96 cells) is larger than pass 2's 48×40 latent: one tile, clamped.
    let tiled = latents("tiled = { method = \"mixture\" }");
    assert_eq!(rel_err(&untiled[1], &tiled[1]), 0.0);
    assert!(untiled[1].equal(&tiled[1]));
}
