//! Flux.1 through the host: the tiny dev and schnell pipelines of
//! scripts/make_flux_pipeline_reference.py in a full 2-pass run (Euler, `simple` schedule — for
//! Flux's 10000-entry flow table diffusers' `linspace(1, 1/n, n)` sigmas — 4 steps at 48×32 px,
//! then latent (bilinear) ×2 and 4 steps at denoise 0.5; cfg 1 (Flux's default), guidance 3.5,
//! seed 1234), each
//! pass with the shift of its own token count, from the diffusers folder, the BFL transformer
//! with split clip_l / t5xxl / ae files and (dev) the all-in-one file, against diffusers'
//! FluxPipeline → FluxImg2ImgPipeline (reference.safetensors `run.*`).
use std::path::PathBuf;

use crate::common::tensors::{read_reference, rel_err};
use crate::common::*;
use hiresfix::generate::prepare;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;

fn data() -> PathBuf {
    repo().join("tests/data/flux-tiny/pipeline")
}

/// Checkpoint and the extra `[model]` lines of each layout of `variant`.
fn layouts(variant: &str) -> Vec<(&'static str, PathBuf, String)> {
    let (d, v) = (data(), data().join(variant));
    let q = |p: PathBuf| toml::Value::from(p.to_string_lossy().as_ref()).to_string();
    let tokenizer = format!("t5_tokenizer = {}\n", q(v.join("diffusers/tokenizer_2")));
    let mut all = vec![
        ("folder", v.join("diffusers"), String::new()),
        (
            "BFL + split",
            v.join(format!("flux1-{variant}-tiny.safetensors")),
            format!(
                "{tokenizer}vae = {}\ntext_encoders = [{}, {}]\n",
                q(d.join("ae.safetensors")),
                q(d.join("clip_l.safetensors")),
                q(d.join("t5xxl.safetensors"))
            ),
        ),
    ];
    if variant == "dev" {
        all.push((
            "all-in-one",
            v.join("flux1-dev-tiny-aio.safetensors"),
            tokenizer,
        ));
    }
    all
}

/// The 2-pass profile; pass 1 takes the default guidance (3.5), pass 2 sets `guidance2`; no
/// `cfg`: Flux's default is 1 (one conditioning row, no negative).
pub(crate) fn profile(checkpoint: &std::path::Path, model_lines: &str, guidance2: f64) -> String {
    let q = |s: &str| toml::Value::from(s).to_string();
    format!(
        r#"seed = 1234
prompt = "a photo of a cat"
device = "cpu"
dtype = "fp32"
[model]
{model_lines}checkpoint = {checkpoint}
[[pass]]
width = 48
height = 32
steps = 4
sampler = "euler"
schedule = "simple"
[[pass]]
scale = 2.0
steps = 4
denoise = 0.5
sampler = "euler"
schedule = "simple"
upscaler = "latent"
guidance = {guidance2:?}
"#,
        checkpoint = q(&checkpoint.to_string_lossy()),
    )
}

#[test]
fn flux_two_pass_runs_through_the_host_match_diffusers_in_every_layout() {
    let registry = Registry::load(&[], &Default::default());
    for variant in ["dev", "schnell"] {
        let r = read_reference(&data().join(variant).join("reference.safetensors"));
        for (label, checkpoint, model_lines) in layouts(variant) {
            let text = profile(&checkpoint, &model_lines, 3.5);
            let profile = Profile::parse(&text, "flux").unwrap();
            let mut job = prepare(profile, &registry, &repo()).unwrap();
            let (model, info) = job.models.for_pass(&job.settings, &job.plans[0]).unwrap();
            assert_eq!(info.family.as_str(), format!("flux-{variant}"), "{label}");
            assert!(
                job.plans.iter().all(|p| p.cfg == 1.0),
                "{label}: Flux's cfg default"
            );
            // Each pass's shift is its own size's (dev: exp(calculate_shift(tokens))).
            for (size, key) in [((48, 32), "run.shift1"), ((96, 64), "run.shift2")] {
                let got = model.model_sampling(size.0, size.1).unwrap().shift;
                let want = f64::try_from(&r[key]).unwrap();
                assert!(
                    (got - want).abs() < 1e-12,
                    "{variant} {label} {key}: {got} {want}"
                );
            }
            let result = job.run_image(1234).unwrap();
            let e1 = rel_err(&result.latents[0], &r["run.latent1"]);
            let e2 = rel_err(&result.latents[1], &r["run.latent2"]);
            let image = ((model.decode(&result.latents[1]).unwrap() + 1.0) / 2.0).clamp(0.0, 1.0);
            let e3 = rel_err(&image, &r["run.image"]);
            eprintln!("flux {variant} {label}: pass 1 {e1:.2e}, pass 2 {e2:.2e}, image {e3:.2e}");
            assert!(
                e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4,
                "{variant} {label}: {e1} {e2} {e3}"
            );
        }
    }
}

/// The hires pass's own guidance reaches the model (Forge's `hr_distilled_cfg`): dev's pass 2
/// at guidance 1.5 leaves pass 1 as it was and moves pass 2 away from the 3.5 reference;
/// schnell has no guidance embedding and ignores it.
#[test]
fn flux_guidance_is_per_pass_and_ignored_by_schnell() {
    let registry = Registry::load(&[], &Default::default());
    for (variant, moves) in [("dev", true), ("schnell", false)] {
        let r = read_reference(&data().join(variant).join("reference.safetensors"));
        let checkpoint = data().join(variant).join("diffusers");
        let text = profile(&checkpoint, "", 1.5);
        let mut job = prepare(Profile::parse(&text, "flux").unwrap(), &registry, &repo()).unwrap();
        let result = job.run_image(1234).unwrap();
        let e1 = rel_err(&result.latents[0], &r["run.latent1"]);
        let e2 = rel_err(&result.latents[1], &r["run.latent2"]);
        eprintln!("flux {variant} pass-2 guidance 1.5: pass 1 {e1:.2e}, pass 2 {e2:.2e}");
        assert!(e1 < 1e-4, "{variant}: {e1}");
        assert_eq!(e2 > 1e-3, moves, "{variant}: {e2}");
    }
}

/// Forge's A1111-API fields for Flux: `distilled_cfg_scale` is the profile's guidance,
/// `hr_distilled_cfg` the hires pass's; out of range is the field's one-line 422.
#[test]
fn forge_distilled_cfg_fields_map_to_guidance() {
    use hiresfix::serve::txt2img::request_profile;
    let registry = Registry::load(&[], &Default::default());
    let body = serde_json::json!({
        "prompt": "a cat", "steps": 4, "cfg_scale": 1, "enable_hr": true, "hr_scale": 2,
        "denoising_strength": 0.5, "distilled_cfg_scale": 3.5, "hr_distilled_cfg": 2.5
    });
    let profile = request_profile(&registry, body.as_object().unwrap()).unwrap();
    assert_eq!(profile.guidance, Some(3.5));
    assert_eq!(profile.passes[1].guidance, Some(2.5));
    let mut wrong = body.clone();
    wrong["hr_distilled_cfg"] = serde_json::json!(-1);
    let e = request_profile(&registry, wrong.as_object().unwrap()).unwrap_err();
    assert!(
        format!("{e:?}").contains("guidance must be between 0 and"),
        "{e:?}"
    );
}

/// Forge's infotext fields for Flux: `Distilled CFG Scale` and `Hires Distilled CFG Scale`
/// import to the profile's and the hires pass's guidance.
#[test]
fn forge_distilled_cfg_infotext_imports_to_guidance() {
    let registry = Registry::load(&[], &Default::default());
    let text = "a cat\nSteps: 20, Sampler: Euler, Schedule type: Simple, CFG scale: 1, \
Distilled CFG Scale: 3.5, Seed: 1, Size: 512x512, Denoising strength: 0.5, \
Hires Distilled CFG Scale: 2.5, Hires upscale: 2, Hires upscaler: Latent";
    let imported = hiresfix::import::from_parameters(text, &registry).unwrap();
    assert_eq!(imported.profile.guidance, Some(3.5));
    assert_eq!(imported.profile.passes[1].guidance, Some(2.5));
    assert!(imported.unmapped.is_empty(), "{:?}", imported.unmapped);
}

/// Schnell's own steps where the profile gives none: 4 for pass 1 (its published default) and
/// so for the hires pass (pass 1's, as A1111); the resolved profile says it. Dev keeps
/// A1111's 20; steps the profile sets stay.
#[test]
fn flux_schnell_defaults_to_4_steps_where_the_profile_sets_none() {
    let registry = Registry::load(&[], &Default::default());
    for (variant, first_steps, want) in [
        ("schnell", "", 4),
        ("dev", "", 20),
        ("schnell", "steps = 8\n", 8),
    ] {
        let checkpoint = data().join(variant).join("diffusers");
        let text = profile(&checkpoint, "", 3.5)
            .replace("steps = 4\n", "")
            .replacen("[[pass]]\n", &format!("[[pass]]\n{first_steps}"), 1);
        let job = prepare(Profile::parse(&text, "flux").unwrap(), &registry, &repo()).unwrap();
        let steps: Vec<usize> = job.plans.iter().map(|p| p.steps).collect();
        assert_eq!(steps, [want, want], "{variant} {first_steps:?}");
        assert_eq!(job.profile.passes[0].steps, Some(want as u32));
        // `check` plans as `generate` does.
        let scratch = Scratch::new("flux-schnell-steps");
        let path = scratch.write("p.toml", &text);
        let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let line = format!("pass 1: 48x32, {want} steps,");
        assert!(
            stdout_lines(&out).iter().any(|l| l.starts_with(&line)),
            "{variant}: {:?}",
            stdout_lines(&out)
        );
    }
}

/// fp8 files (scripts/make_flux_fp8_reference.py): the plain E4M3 transformer and T5 (Civitai's
/// `flux1-dev-fp8`, ComfyUI's `t5xxl_fp8_e4m3fn`) and ComfyUI's scaled fp8 ones (`scaled_fp8`,
/// `X.scale_weight`: `*_fp8_scaled`, `t5xxl_fp8_e4m3fn_scaled`) run the 2-pass job as diffusers
/// does on the weights ComfyUI computes with (fp8 → fp32, times the scale); each run is 6–8 %
/// away from the fp16 one, so a loader that skipped a scale could not match.
#[test]
fn flux_fp8_files_match_diffusers_on_their_dequantized_weights() {
    let registry = Registry::load(&[], &Default::default());
    let fp8 = data().join("dev/fp8");
    let r = read_reference(&fp8.join("reference.safetensors"));
    let split = &layouts("dev")[1].2;
    let t5 = data()
        .join("t5xxl.safetensors")
        .to_string_lossy()
        .into_owned();
    for (key, file, t5_file) in [
        (
            "fp8",
            "flux1-dev-tiny-fp8.safetensors",
            "t5xxl_fp8_e4m3fn.safetensors",
        ),
        (
            "scaled",
            "flux1-dev-tiny-fp8-scaled.safetensors",
            "t5xxl_fp8_e4m3fn_scaled.safetensors",
        ),
    ] {
        let fp8_t5 = fp8.join(t5_file).to_string_lossy().into_owned();
        assert!(split.contains(&t5));
        let lines = split.replace(&t5, &fp8_t5);
        let text = profile(&fp8.join(file), &lines, 3.5);
        let mut job = prepare(Profile::parse(&text, "flux").unwrap(), &registry, &repo()).unwrap();
        let (model, info) = job.models.for_pass(&job.settings, &job.plans[0]).unwrap();
        assert_eq!(info.family.as_str(), "flux-dev", "{key}");
        let result = job.run_image(1234).unwrap();
        let e1 = rel_err(&result.latents[0], &r[&format!("{key}.run.latent1")]);
        let e2 = rel_err(&result.latents[1], &r[&format!("{key}.run.latent2")]);
        let image = ((model.decode(&result.latents[1]).unwrap() + 1.0) / 2.0).clamp(0.0, 1.0);
        let e3 = rel_err(&image, &r[&format!("{key}.run.image")]);
        eprintln!("flux {key}: pass 1 {e1:.2e}, pass 2 {e2:.2e}, image {e3:.2e}");
        assert!(e1 < 1e-4 && e2 < 1e-4 && e3 < 1e-4, "{key}: {e1} {e2} {e3}");
    }
}

/// A Flux hires pass as tiled diffusion (`tiled = { method, tile, overlap }`, MultiDiffusion and
/// Mixture of Diffusers): each tile packed on its own with RoPE ids from its corner, an odd
/// tile padded to even sides as ComfyUI pads (circular) — pass 2 of the dev run against
/// scripts/make_flux_tiled_reference.py (diffusers' transformer per tile); the tiling moves the
/// pass 80 % from the untiled one.
#[test]
fn flux_tiled_hires_pass_matches_multidiffusion_over_diffusers_tiles() {
    let registry = Registry::load(&[], &Default::default());
    let tiled = data().join("dev/tiled");
    let r = read_reference(&tiled.join("reference.safetensors"));
    let checkpoint = data().join("dev/diffusers");
    for (case, tile, method) in [
        ("even", 16, "multidiffusion"),
        ("odd", 15, "multidiffusion"),
        ("mixture", 16, "mixture"),
    ] {
        let text = profile(&checkpoint, "", 3.5)
            + &format!(
                "tiled = {{ method = \"{method}\", tile = {tile}, overlap = 4, batch = 4 }}\n"
            );
        let mut job = prepare(Profile::parse(&text, "flux").unwrap(), &registry, &repo()).unwrap();
        let result = job.run_image(1234).unwrap();
        let e = rel_err(&result.latents[1], &r[&format!("{case}.latent2")]);
        eprintln!("flux tiled {case} (tile {tile}): pass 2 {e:.2e}");
        assert!(e < 1e-4, "{case}: {e}");
    }
}

/// `[model] weight_dtype = "fp8_e4m3fn"` (ComfyUI's weight_dtype, Forge's "Diffusion in Low
/// Bits"): the fp16 transformer file held in fp8 runs as the fp8 file that torch's
/// `.to(float8_e4m3fn)` made of it (the same rounding) — the `fp8` reference of
/// scripts/make_flux_fp8_reference.py, with its fp8 T5; a LoRA merges into the fp8 weights
/// (sum in fp32, rounded back) and moves the run.
#[test]
fn flux_fp8_weight_storage_runs_as_the_fp8_file() {
    let registry = Registry::load(&[], &Default::default());
    let fp8 = data().join("dev/fp8");
    let r = read_reference(&fp8.join("reference.safetensors"));
    let t5 = data()
        .join("t5xxl.safetensors")
        .to_string_lossy()
        .into_owned();
    let fp8_t5 = fp8.join("t5xxl_fp8_e4m3fn.safetensors");
    let lines = layouts("dev")[1].2.replace(&t5, &fp8_t5.to_string_lossy())
        + "weight_dtype = \"fp8_e4m3fn\"\n";
    let checkpoint = data().join("dev/flux1-dev-tiny.safetensors");
    let text = profile(&checkpoint, &lines, 3.5);
    let mut job = prepare(Profile::parse(&text, "flux").unwrap(), &registry, &repo()).unwrap();
    let result = job.run_image(1234).unwrap();
    let e1 = rel_err(&result.latents[0], &r["fp8.run.latent1"]);
    let e2 = rel_err(&result.latents[1], &r["fp8.run.latent2"]);
    eprintln!("flux weight_dtype fp8: pass 1 {e1:.2e}, pass 2 {e2:.2e}");
    assert!(e1 < 1e-4 && e2 < 1e-4, "{e1} {e2}");

    let lora = repo().join("tests/data/flux-tiny/dev/lora/kohya.safetensors");
    let lora = toml::Value::from(lora.to_string_lossy().as_ref()).to_string();
    let with_lora = profile(
        &checkpoint,
        &format!("{lines}loras = [{{ path = {lora} }}]\n"),
        3.5,
    );
    let mut job = prepare(
        Profile::parse(&with_lora, "flux").unwrap(),
        &registry,
        &repo(),
    )
    .unwrap();
    let moved = rel_err(
        &job.run_image(1234).unwrap().latents[1],
        &r["fp8.run.latent2"],
    );
    eprintln!("flux weight_dtype fp8 + LoRA: pass 2 {moved:.2e} from the run without");
    assert!(moved > 1e-2, "{moved}");
}

/// A hires pass on another Flux checkpoint (Forge's checkpoint switch, which broke with Flux
/// there): pass 1 on dev, pass 2 on schnell through the latent upscaler — schnell's own T5
/// length, scheduler (no shift) and no guidance — against FluxImg2ImgPipeline with the schnell
/// components on dev's upscaled latent (scripts/make_flux_switch_reference.py).
#[test]
fn flux_hires_pass_switches_from_dev_to_schnell() {
    let registry = Registry::load(&[], &Default::default());
    let dev = read_reference(&data().join("dev/reference.safetensors"));
    let r = read_reference(&data().join("schnell/switch/reference.safetensors"));
    let schnell = data().join("schnell/diffusers");
    let schnell = toml::Value::from(schnell.to_string_lossy().as_ref()).to_string();
    let text =
        profile(&data().join("dev/diffusers"), "", 3.5) + &format!("checkpoint = {schnell}\n");
    let mut job = prepare(Profile::parse(&text, "flux").unwrap(), &registry, &repo()).unwrap();
    let (_, info) = job.models.for_pass(&job.settings, &job.plans[1]).unwrap();
    assert_eq!(info.family.as_str(), "flux-schnell");
    let result = job.run_image(1234).unwrap();
    let e1 = rel_err(&result.latents[0], &dev["run.latent1"]);
    let e2 = rel_err(&result.latents[1], &r["latent2"]);
    eprintln!("flux dev → schnell: pass 1 {e1:.2e}, pass 2 {e2:.2e}");
    assert!(e1 < 1e-4 && e2 < 1e-4, "{e1} {e2}");
}

/// A batch frees the text encoders after its last pass encodes, as a single image does (T5-XXL
/// is 9.5 GB): both images match their single runs' reference, and encoding afterwards is
/// refused. (A batch that runs out of memory and goes one image at a time finds its
/// conditionings in the host's cache.)
#[test]
fn flux_batch_frees_the_text_encoders_after_its_last_encode() {
    let registry = Registry::load(&[], &Default::default());
    let r = read_reference(&data().join("dev/reference.safetensors"));
    let text = profile(&data().join("dev/diffusers"), "", 3.5).replacen(
        "seed = 1234\n",
        "seed = 1234\nbatch = 2\n",
        1,
    );
    let mut job = prepare(Profile::parse(&text, "flux").unwrap(), &registry, &repo()).unwrap();
    let (model, _) = job.models.for_pass(&job.settings, &job.plans[0]).unwrap();
    let seeds = [job.image_seeds(0), job.image_seeds(1)];
    job.models.final_image = true;
    let results = job.run_batch(&seeds, 2).unwrap();
    job.models.final_image = false;
    let e = rel_err(&results[0].latents[1], &r["run.latent2"]);
    assert!(e < 1e-4, "{e}");
    assert!(
        rel_err(&results[1].latents[1], &r["run.latent2"]) > 1e-2,
        "seed 1235 differs"
    );
    let request = host_api::EncodeRequest::pair("", "a cat", 1, 48, 32);
    let refused = model.encode_prompts(&request).err().map(|e| e.to_string());
    assert!(
        refused.as_deref().is_some_and(|m| m.contains("released")),
        "{refused:?}"
    );
}
