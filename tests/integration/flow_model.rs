//! A rectified-flow model through the whole run (host-api 1.5 `model_sampling`): the toy flow
//! backend of tests/fixtures/flow-toy, whose denoiser is exact for Gaussian data, so a run that
//! noises and samples as a flow model must end with cells of the data's mean and std — pass 1
//! from pure noise, and the hires pass from the upscaled latent noised as
//! `(1 − σ)·latent + σ·noise`. Heun in both passes keeps the discretisation error small: on
//! this linear ODE its sigmas take N(0, 1) to N(0.25, 0.4995²) in pass 1 and the hires start to
//! std 0.4997 (worked out in closed form, the affine map of each step); noised the discrete
//! way, `latent + σ·noise` (σ₀ ≈ 0.74), the hires pass would end at mean 0.37, std 0.59.
use std::path::PathBuf;

use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::{Kind, Tensor};

use crate::common::*;

/// The toy's data: every latent cell `N(MEAN, STD²)`.
const MEAN: f64 = 0.25;
const STD: f64 = 0.5;

/// A toy flow checkpoint and a plugin folder holding its backend, in `scratch`.
pub fn flow_toy(scratch: &Scratch) -> (PathBuf, PathBuf) {
    let lib = build_outside_plugin("tests/fixtures", "flow_toy_plugin");
    let dir = plugin_dir(scratch, "flow-plugins", &[&lib]);
    let checkpoint = scratch.write(
        "toy.flow",
        &format!("hiresfix flow toy model\nmean = {MEAN}\nstd = {STD}\nshift = 3.0\n"),
    );
    (checkpoint, dir)
}

fn mean_std(latent: &Tensor) -> (f64, f64) {
    let x = latent.to_kind(Kind::Double);
    (
        f64::try_from(x.mean(Kind::Double)).unwrap(),
        f64::try_from(x.std(true)).unwrap(),
    )
}

#[test]
fn a_flow_model_run_ends_in_its_data_distribution_after_both_passes() {
    let scratch = Scratch::new("flow-model");
    let (checkpoint, dir) = flow_toy(&scratch);
    let text = format!(
        "seed = 7\nprompt = \"x\"\ncfg = 1.0\ndevice = \"cpu\"\ndtype = \"fp32\"\n\
         [model]\ncheckpoint = \"{}\"\n\
         [[pass]]\nwidth = 256\nheight = 256\nsteps = 30\nsampler = \"heun\"\n\
         [[pass]]\nscale = 2.0\nupscaler = \"latent-nearest\"\nsteps = 20\ndenoise = 0.5\n\
         sampler = \"heun\"\n",
        checkpoint.display()
    );
    let registry = Registry::load(&[dir], &Default::default());
    let mut job = hiresfix::generate::prepare(
        Profile::parse(&text, "flow").unwrap(),
        &registry,
        &scratch.0,
    )
    .unwrap();
    let result = job.run_image(7).unwrap();
    // 4 × 32 × 32 and 4 × 64 × 64 cells: the sample std of the mean is ~0.008 and ~0.004.
    for (pass, latent) in result.latents.iter().enumerate() {
        let (mean, std) = mean_std(latent);
        eprintln!("pass {}: mean {mean:.4}, std {std:.4}", pass + 1);
        assert!((mean - MEAN).abs() < 0.03, "pass {}: mean {mean}", pass + 1);
        assert!(
            (std / STD - 1.0).abs() < 0.04,
            "pass {}: std {std}",
            pass + 1
        );
    }
}
