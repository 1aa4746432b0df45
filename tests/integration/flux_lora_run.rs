//! Flux LoRA through the host: a profile's `[model] loras` and a pass's own `loras` on the tiny
//! dev pipeline of scripts/make_flux_pipeline_reference.py, against diffusers'
//! `load_lora_weights` of the same kohya file (scripts/make_flux_lora_reference.py →
//! tests/data/flux-tiny/pipeline/dev/lora-reference.safetensors: one denoiser call on the
//! pipeline reference's conditioning, D(x, σ) = x − σ·v, with no LoRA, the LoRA at weight 1 and at 0.5; fp32 CPU, 1e-5).
use std::collections::HashMap;
use std::path::PathBuf;

use crate::common::tensors::rel_err;
use crate::common::*;
use hiresfix::generate::prepare;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::Tensor;
use host_api::LoraSpec;

const TOLERANCE: f64 = 1e-5;

fn data() -> PathBuf {
    repo().join("tests/data/flux-tiny/pipeline/dev")
}

fn kohya() -> PathBuf {
    repo().join("tests/data/flux-tiny/dev/lora/kohya.safetensors")
}

/// The 2-pass profile of flux_run.rs (48×32 px, 4 + 4 Euler steps): the kohya LoRA at weight 1
/// for every pass without its own list, pass 2 (the last table) its own at 0.5.
fn profile() -> String {
    let lora = toml::Value::from(kohya().to_string_lossy().as_ref()).to_string();
    let model_lines = format!("loras = [{{ path = {lora} }}]\n");
    let text = crate::flux_run::profile(&data().join("diffusers"), &model_lines, 3.5);
    format!("{text}loras = [{{ path = {lora}, weight = 0.5 }}]\n")
}

#[test]
fn flux_loras_through_the_host_match_diffusers_load_lora_weights() {
    let read = |p: PathBuf| -> HashMap<String, Tensor> {
        Tensor::read_safetensors(p).unwrap().into_iter().collect()
    };
    let r = read(data().join("lora-reference.safetensors"));
    let run_ref = read(data().join("reference.safetensors"));
    let registry = Registry::load(&[], &Default::default());
    let mut job = prepare(
        Profile::parse(&profile(), "flux").unwrap(),
        &registry,
        &repo(),
    )
    .unwrap();
    let (model, _) = job.models.for_pass(&job.settings, &job.plans[0]).unwrap();
    let result = job.run_image(1234).unwrap();
    // The LoRA moved both passes away from the run without it.
    let e1 = rel_err(&result.latents[0], &run_ref["run.latent1"]);
    let e2 = rel_err(&result.latents[1], &run_ref["run.latent2"]);
    eprintln!("flux LoRA run: pass 1 {e1:.2e}, pass 2 {e2:.2e} from the run without LoRA");
    assert!(e1 > 1e-2 && e2 > 1e-2, "{e1} {e2}");
    let cond = [
        run_ref["text.prompt"].shallow_clone(),
        run_ref["text.pooled"].shallow_clone(),
        r["input.guidance"].shallow_clone(),
    ];
    let sigma = f64::try_from(&r["input.sigma"]).unwrap();
    let d = || {
        model
            .denoise(&r["input.latent"], sigma, &[&cond[..]])
            .unwrap()
            .remove(0)
    };
    // The last pass's own set (weight 0.5) is the one applied after the run.
    let spec = |weight: f64| LoraSpec {
        path: kohya().to_string_lossy().as_ref().into(),
        name: "kohya".into(),
        te: weight,
        unet: weight,
    };
    let mut worst: f64 = 0.0;
    for (label, set) in [
        ("kohya@0.5", None),
        ("kohya", Some(vec![spec(1.0)])),
        ("base", Some(vec![])),
        ("kohya@0.5", Some(vec![spec(0.5)])),
    ] {
        if let Some(set) = set {
            assert!(model.set_loras(&set).unwrap().is_empty(), "{label}");
        }
        let err = rel_err(&d(), &r[&format!("{label}.output")]);
        eprintln!("flux LoRA {label:<10} D relative error {err:.2e}");
        assert!(err <= TOLERANCE, "{label}: {err:e}");
        worst = worst.max(err);
    }
    eprintln!("flux LoRA through the host: worst {worst:.2e}");
    // Before the final decodes the host frees the transformer (and the base weights kept).
    model.release(host_api::backend::release::UNET).unwrap();
    let e = model
        .denoise(&r["input.latent"], sigma, &[&cond[..]])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "cannot run the transformer: it was freed for the run's last decodes"
    );
    let image = model.decode(&r["input.latent"]).unwrap();
    assert_eq!(image.size(), [1, 3, 32, 48]);
}
