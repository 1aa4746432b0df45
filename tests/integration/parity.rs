//! Parity through the host and the plugin ABI with diffusers + k-diffusion (A1111's rules):
//! a full 2-pass Euler run with README "Semantics" slicing and noise, from both checkpoint formats, for
//! SD 1.x, SD 2.x (eps and v) and SDXL — the latter three with a long weighted prompt (3
//! chunks, BREAK) against a 1-chunk negative and each pass's own size conditioning — and the
//! written PNGs. References: scripts/make_sd1_reference.py, scripts/make_family_reference.py.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::tensors::rel_err;
use crate::common::*;
use hiresfix::generate::{generate, prepare, RunOptions};
use hiresfix::noise::initial_noise;
use hiresfix::plan::pass_sigmas;
use hiresfix::profile::{PredictionChoice, Profile};
use hiresfix::registry::Registry;
use host_api::tch::Tensor;
use host_api::ModelSigmas;

/// One tiny model and its reference run.
struct Case {
    dir: &'static str,
    /// Pass-1 size.
    width: u32,
    height: u32,
    /// reference.json keys of the prompt and the negative (`None`: the empty negative).
    prompt_key: &'static str,
    negative_key: Option<&'static str>,
}

const CASES: [Case; 4] = [
    Case {
        dir: "sd1-tiny",
        width: 32,
        height: 32,
        prompt_key: "prompt",
        negative_key: Some("negative"),
    },
    Case {
        dir: "sd2-tiny",
        width: 32,
        height: 32,
        prompt_key: "long_prompt",
        negative_key: Some("negative_prompt"),
    },
    Case {
        dir: "sd2v-tiny",
        width: 32,
        height: 32,
        prompt_key: "long_prompt",
        negative_key: Some("negative_prompt"),
    },
    // A1111 conditions SDXL's empty negative with zeros.
    Case {
        dir: "sdxl-tiny",
        width: 48,
        height: 32,
        prompt_key: "long_prompt",
        negative_key: None,
    },
];

impl Case {
    fn dir(&self) -> PathBuf {
        repo().join("tests/data").join(self.dir)
    }

    fn reference(&self) -> HashMap<String, Tensor> {
        Tensor::read_safetensors(self.dir().join("reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect()
    }

    /// The single file and the diffusers folder.
    fn formats(&self) -> [PathBuf; 2] {
        [
            self.dir().join(format!("{}.safetensors", self.dir)),
            self.dir().join("diffusers"),
        ]
    }

    fn profile(&self, checkpoint: &Path) -> Profile {
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(self.dir().join("reference.json")).unwrap(),
        )
        .unwrap();
        let setting = |k: &str| json["settings"][k].as_str().unwrap().to_owned();
        let negative = self.negative_key.map_or(String::new(), setting);
        let text = reference_profile(
            (&setting(self.prompt_key), &negative, checkpoint),
            (self.width, self.height, 6),
            "sampler = \"euler\"",
            "upscaler = \"latent\"\nsampler = \"euler\"",
        );
        Profile::parse(&text, self.dir).unwrap()
    }
}

#[test]
fn initial_noise_matches_torch_manual_seed_randn() {
    for case in &CASES {
        let r = case.reference();
        for key in ["run.noise1", "run.noise2"] {
            let shape = r[key].size();
            let ours = initial_noise(1234, &shape[1..]).unsqueeze(0);
            assert_eq!(rel_err(&ours, &r[key]), 0.0, "{} {key}", case.dir);
        }
    }
}

#[test]
fn two_pass_runs_through_the_host_match_the_references_from_both_formats() {
    let registry = Registry::load(&[], &Default::default());
    for case in &CASES {
        let r = case.reference();
        for checkpoint in case.formats() {
            let shown = checkpoint.display();
            let mut job = prepare(case.profile(&checkpoint), &registry, &repo()).unwrap();
            let (model, info) = job
                .models
                .get(&job.settings, &job.plans[0].checkpoint, None, &[])
                .unwrap();
            let table = ModelSigmas::new(info.sigmas.to_vec()).unwrap();
            for (i, key) in [(0, "run.sigmas1"), (1, "run.sigmas2")] {
                let ours = Tensor::from_slice(&pass_sigmas(&job.plans[i], &table).unwrap());
                assert!(rel_err(&ours, &r[key]) < 1e-6, "{key} from {shown}");
            }
            let result = job.run_image(1234).unwrap();
            let e1 = rel_err(&result.latents[0], &r["run.latent1"]);
            let e2 = rel_err(&result.latents[1], &r["run.latent2"]);
            let image = ((model.decode(&result.latents[1]).unwrap() + 1.0) / 2.0).clamp(0.0, 1.0);
            let e3 = rel_err(&image, &r["run.image"]);
            eprintln!("{shown}: pass 1 {e1:.2e}, pass 2 {e2:.2e}, image {e3:.2e}");
            assert!(
                e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4,
                "{shown}: {e1} {e2} {e3}"
            );
        }
    }
}

/// `tiling = true`: circular padding in every convolution, as A1111's "Tiling" (reference:
/// scripts/make_seamless_reference.py), from both formats; the PNG says `Tiling: True`.
#[test]
fn seamless_runs_match_the_circular_padding_reference() {
    let registry = Registry::load(&[], &Default::default());
    let case = &CASES[0];
    let plain = case.reference();
    let r: HashMap<String, Tensor> =
        Tensor::read_safetensors(case.dir().join("seamless.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    // The reference must differ from the zero-padded run, or this test would prove nothing.
    assert!(rel_err(&r["run.latent2"], &plain["run.latent2"]) > 1e-2);
    for checkpoint in case.formats() {
        let mut profile = case.profile(&checkpoint);
        profile.tiling = true;
        let mut job = prepare(profile, &registry, &repo()).unwrap();
        let result = job.run_image(1234).unwrap();
        let e1 = rel_err(&result.latents[0], &r["run.latent1"]);
        let e2 = rel_err(&result.latents[1], &r["run.latent2"]);
        assert!(
            e1 < 1e-4 && e2 < 1e-4,
            "{}: {e1} {e2}",
            checkpoint.display()
        );
    }
    let scratch = Scratch::new("parity-seamless");
    let png = |tiling: bool| {
        let mut profile = case.profile(&case.formats()[0]);
        profile.tiling = tiling;
        profile.output = scratch
            .path(&format!("{tiling}.png"))
            .to_string_lossy()
            .into_owned();
        let options = RunOptions {
            quiet: true,
            ..RunOptions::new(repo())
        };
        generate(profile, &registry, &options, &hiresfix::observer::SILENT)
            .unwrap()
            .remove(0)
    };
    let (seamless, plain) = (png(true), png(false));
    let (w, h, px) = hiresfix::output::read_rgb8(&seamless).unwrap();
    let expected = Vec::<u8>::try_from(r["run.image_u8"].flatten(0, -1)).unwrap();
    let worst = px
        .iter()
        .zip(&expected)
        .map(|(a, b)| (*a as i32 - *b as i32).abs())
        .max();
    assert!(worst.unwrap() <= 1, "max pixel difference {worst:?}");
    // The edges continue each other: the first/last row and column differ about as much as
    // neighbouring pixels do, unlike a plain run's.
    let tiled = seam_excess(w, h, &px);
    let (_, _, plain_px) = hiresfix::output::read_rgb8(&plain).unwrap();
    let untiled = seam_excess(w, h, &plain_px);
    eprintln!("seam excess: tiled {tiled:.3}, plain {untiled:.3}");
    assert!(
        tiled < 0.2 && tiled < untiled / 4.0,
        "tiled {tiled}, plain {untiled}"
    );
    let chunks = hiresfix::output::read_text_chunks(&seamless).unwrap();
    let parameters = &chunks.iter().find(|(k, _)| k == "parameters").unwrap().1;
    assert!(parameters.contains("Tiling: True"), "{parameters}");
}

/// How much more the wrap-around edges (last column → first, last row → first) differ than
/// neighbouring pixels do on average: 0 for an image that tiles like its interior.
pub fn seam_excess(w: u32, h: u32, rgb: &[u8]) -> f64 {
    let (w, h) = (w as usize, h as usize);
    let at = |x: usize, y: usize, c: usize| rgb[(y * w + x) * 3 + c] as f64;
    let (mut edge, mut edges, mut inner, mut inners) = (0.0, 0.0, 0.0, 0.0);
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let right = (at(x, y, c) - at((x + 1) % w, y, c)).abs();
                let down = (at(x, y, c) - at(x, (y + 1) % h, c)).abs();
                match x + 1 == w {
                    true => (edge += right, edges += 1.0),
                    false => (inner += right, inners += 1.0),
                };
                match y + 1 == h {
                    true => (edge += down, edges += 1.0),
                    false => (inner += down, inners += 1.0),
                };
            }
        }
    }
    (edge / edges) / (inner / inners) - 1.0
}

#[test]
fn written_pngs_match_the_reference_images_within_one_level() {
    let registry = Registry::load(&[], &Default::default());
    let scratch = Scratch::new("parity-png");
    for case in &CASES {
        let [single, _] = case.formats();
        let mut profile = case.profile(&single);
        profile.output = scratch
            .path(&format!("{}.png", case.dir))
            .to_string_lossy()
            .into_owned();
        let options = RunOptions {
            quiet: true,
            ..RunOptions::new(repo())
        };
        let written = generate(profile, &registry, &options, &hiresfix::observer::SILENT).unwrap();
        let (w, h, px) = hiresfix::output::read_rgb8(&written[0]).unwrap();
        assert_eq!((w, h), (case.width * 2, case.height * 2));
        let expected =
            Vec::<u8>::try_from(case.reference()["run.image_u8"].flatten(0, -1)).unwrap();
        let worst = px
            .iter()
            .zip(&expected)
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        assert!(worst <= 1, "{}: max pixel difference {worst}", case.dir);
    }
}

#[test]
fn a_profile_prediction_override_runs_the_eps_file_as_v() {
    // sd2v-tiny is sd2-tiny's weights marked v: overriding sd2-tiny gives sd2v's run.
    let registry = Registry::load(&[], &Default::default());
    let (eps, v) = (&CASES[1], &CASES[2]);
    let [single, _] = eps.formats();
    let mut profile = v.profile(&single);
    profile.model.prediction = Some(PredictionChoice::V);
    let mut job = prepare(profile, &registry, &repo()).unwrap();
    let result = job.run_image(1234).unwrap();
    let err = rel_err(&result.latents[1], &v.reference()["run.latent2"]);
    assert!(err < 1e-4, "{err}");
}
