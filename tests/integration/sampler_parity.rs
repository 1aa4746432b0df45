//! Every sampler and schedule plugin against k-diffusion / diffusers / ComfyUI references on a
//! toy denoiser with recorded noise (scripts/make_sampler_reference.py), loaded through the
//! host's registry exactly as `hiresfix generate` loads them; A1111 names; hires slicing.
//! Needs the plugins built: `cargo build --workspace` first. The same on a rectified-flow
//! model: `flow`.
mod flow;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hiresfix::plan::{pass_sigmas, plan_passes};
use hiresfix::profile::Profile;
use hiresfix::registry::{display_name, find, Registry};
use host_api::tch::{Kind, Tensor};
use host_api::{Error, ModelSampling, ModelSigmas, OptionEntry, OptionValue, SamplerCallbacks};

const SAMPLER_STEPS: [usize; 2] = [4, 10];
const SCHEDULE_STEPS: [usize; 3] = [3, 10, 28];
const SAMPLER_TOLERANCE: f64 = 1e-5;
const SCHEDULE_TOLERANCE: f64 = 1e-6;

const SAMPLERS: [&str; 15] = [
    "euler",
    "euler_ancestral",
    "heun",
    "dpm_2",
    "dpm_2_ancestral",
    "lms",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
    "ddim",
    "ddpm",
    "uni_pc",
    "lcm",
];
const SCHEDULES: [&str; 9] = [
    "normal",
    "karras",
    "exponential",
    "polyexponential",
    "sgm_uniform",
    "simple",
    "ddim_uniform",
    "beta",
    "kl_optimal",
];

enum Opt {
    Num(f64),
    Text(&'static str),
}
use Opt::{Num, Text};

const CHURN: &[(&str, Opt)] = &[
    ("s_churn", Num(1.5)),
    ("s_tmin", Num(0.2)),
    ("s_tmax", Num(6.0)),
    ("s_noise", Num(1.003)),
];

/// `sampler_options` of one case.
type Options = &'static [(&'static str, Opt)];

/// The reference cases of scripts/make_sampler_reference.py: (case, sampler, options).
const CASES: &[(&str, &str, Options)] = &[
    ("euler", "euler", &[]),
    ("euler_churn", "euler", CHURN),
    ("euler_ancestral", "euler_ancestral", &[]),
    (
        "euler_ancestral_eta",
        "euler_ancestral",
        &[("eta", Num(0.6)), ("s_noise", Num(0.9))],
    ),
    ("heun", "heun", &[]),
    ("heun_churn", "heun", CHURN),
    ("dpm_2", "dpm_2", &[]),
    ("dpm_2_churn", "dpm_2", CHURN),
    ("dpm_2_ancestral", "dpm_2_ancestral", &[]),
    (
        "dpm_2_ancestral_eta",
        "dpm_2_ancestral",
        &[("eta", Num(0.5)), ("s_noise", Num(1.1))],
    ),
    ("lms", "lms", &[]),
    ("lms_order2", "lms", &[("order", Num(2.0))]),
    ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", &[]),
    ("dpmpp_sde", "dpmpp_sde", &[]),
    (
        "dpmpp_sde_r",
        "dpmpp_sde",
        &[("r", Num(0.3)), ("eta", Num(0.7)), ("s_noise", Num(0.95))],
    ),
    ("dpmpp_2m", "dpmpp_2m", &[]),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", &[]),
    (
        "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde",
        &[("solver_type", Text("heun")), ("eta", Num(0.8))],
    ),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", &[]),
    (
        "dpmpp_3m_sde_eta",
        "dpmpp_3m_sde",
        &[("eta", Num(0.5)), ("s_noise", Num(0.8))],
    ),
    ("ddim", "ddim", &[]),
    ("ddim_eta", "ddim", &[("eta", Num(0.5))]),
    ("ddpm", "ddpm", &[]),
    ("uni_pc", "uni_pc", &[]),
    (
        "uni_pc_bh2",
        "uni_pc",
        &[("variant", Text("bh2")), ("order", Num(2.0))],
    ),
    ("lcm", "lcm", &[]),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn reference() -> HashMap<String, Tensor> {
    let path = repo().join("tests/data/samplers/reference.safetensors");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

fn tensor<'a>(reference: &'a HashMap<String, Tensor>, key: &str) -> &'a Tensor {
    reference
        .get(key)
        .unwrap_or_else(|| panic!("reference has no `{key}`"))
}

fn floats(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).flatten(0, -1)).unwrap()
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from(
        (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
            .abs()
            .max(),
    )
    .unwrap()
}

fn registry() -> Registry {
    let registry = Registry::load(&[], &Default::default());
    for refusal in &registry.refused {
        eprintln!("refused {}: {}", refusal.file.display(), refusal.reason);
    }
    registry
}

fn options(list: &[(&str, Opt)]) -> Vec<OptionEntry> {
    list.iter()
        .map(|(key, value)| OptionEntry {
            key: (*key).into(),
            value: match value {
                Num(n) => OptionValue::Number(*n),
                Text(t) => OptionValue::Text((*t).into()),
            },
        })
        .collect()
}

/// The reference script's toy denoiser, `x * 0.8 / (1 + 0.2 sigma) + 0.1 tanh(x)`.
fn toy_denoiser(x: &Tensor, sigma: f64) -> Tensor {
    x * (0.8 / (1.0 + 0.2 * sigma)) + x.tanh() * 0.1
}

/// Host side of a run: the toy denoiser, the recorded noise in order, and every call recorded;
/// the model's sampling the sampler is told.
struct Recorder {
    noise: Vec<Tensor>,
    draws: usize,
    calls: Vec<(Tensor, f64)>,
    sampling: ModelSampling,
}

impl Recorder {
    fn new(noise: Vec<Tensor>, sampling: ModelSampling) -> Self {
        Self {
            noise,
            draws: 0,
            calls: Vec::new(),
            sampling,
        }
    }
}

impl SamplerCallbacks for Recorder {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> host_api::Result<Tensor> {
        self.calls.push((x.copy(), sigma));
        Ok(toy_denoiser(x, sigma))
    }

    fn noise_like(&mut self, x: &Tensor) -> host_api::Result<Tensor> {
        let noise = self
            .noise
            .get(self.draws)
            .ok_or_else(|| Error::new("sampler drew more noise than was recorded"))?;
        if noise.size() != x.size() {
            return Err(Error::new("noise requested at another shape"));
        }
        self.draws += 1;
        Ok(noise.copy())
    }

    fn step(&mut self, _: usize, _: usize) -> bool {
        true
    }

    fn model_sampling(&mut self) -> host_api::Result<ModelSampling> {
        Ok(self.sampling.clone())
    }
}

/// Max |difference| over the denoiser calls' x and sigma and the final x, or why it diverged.
fn trajectory_error(
    registry: &Registry,
    reference: &HashMap<String, Tensor>,
    (case, sampler, opts): &(&str, &str, &[(&str, Opt)]),
    steps: usize,
) -> Result<f64, String> {
    let key = format!("{case}.{steps}");
    let entry = find(&registry.samplers, sampler, "sampler").map_err(|e| e.to_string())?;
    let sigmas = floats(tensor(reference, &format!("{key}.sigmas")));
    let mut recorder = Recorder::new(
        tensor(reference, "noise").unbind(0),
        ModelSampling::discrete(floats(tensor(reference, "table.sd1"))),
    );
    let x = tensor(reference, "x0") * sigmas[0];
    let out = entry
        .decl
        .run(&mut recorder, &options(opts), x, &sigmas)
        .map_err(|e| e.to_string())?;
    compare_trajectory(reference, &key, &recorder, &out)
}

/// Max |difference| of a run's denoiser calls (x and sigma) and result from the reference's
/// `<key>.{xs, call_sigmas, final}`.
fn compare_trajectory(
    reference: &HashMap<String, Tensor>,
    key: &str,
    recorder: &Recorder,
    out: &Tensor,
) -> Result<f64, String> {
    let xs = tensor(reference, &format!("{key}.xs"));
    let call_sigmas = floats(tensor(reference, &format!("{key}.call_sigmas")));
    if recorder.calls.len() != call_sigmas.len() {
        return Err(format!(
            "{} denoiser calls, reference {}",
            recorder.calls.len(),
            call_sigmas.len()
        ));
    }
    let mut worst = max_abs(out, tensor(reference, &format!("{key}.final")));
    for (n, ((x, sigma), want)) in recorder.calls.iter().zip(&call_sigmas).enumerate() {
        worst = worst
            .max((sigma - want).abs())
            .max(max_abs(x, &xs.get(n as i64)));
    }
    Ok(worst)
}

#[test]
fn every_sampler_follows_its_reference_trajectory() {
    let registry = registry();
    let reference = reference();
    let mut failures = Vec::new();
    for case in CASES {
        for steps in SAMPLER_STEPS {
            match trajectory_error(&registry, &reference, case, steps) {
                Ok(err) => {
                    eprintln!("{:<22} {steps:>2} steps: max abs error {err:.2e}", case.0);
                    if err.is_nan() || err > SAMPLER_TOLERANCE {
                        failures.push(format!(
                            "{} ({steps} steps): max abs error {err:.3e}",
                            case.0
                        ));
                    }
                }
                Err(why) => failures.push(format!("{} ({steps} steps): {why}", case.0)),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every case `reference` recorded (its `<case>.4.final`) is among `tested`.
fn assert_every_case_tested<'a>(
    reference: &HashMap<String, Tensor>,
    tested: impl Iterator<Item = &'a str> + Clone,
) {
    for key in reference.keys() {
        if let Some(case) = key.strip_suffix(".4.final") {
            assert!(
                tested.clone().any(|c| c == case),
                "reference case `{case}` is not tested"
            );
        }
    }
}

#[test]
fn every_reference_case_and_sampler_id_is_exercised() {
    let reference = reference();
    assert_every_case_tested(&reference, CASES.iter().map(|(c, _, _)| *c));
    for id in SAMPLERS {
        assert!(
            CASES.iter().any(|(_, s, _)| *s == id),
            "sampler `{id}` has no reference case"
        );
    }
}

fn model_sigmas(reference: &HashMap<String, Tensor>, kind: &str) -> ModelSigmas {
    ModelSigmas::new(floats(tensor(reference, &format!("table.{kind}")))).unwrap()
}

#[test]
fn every_schedule_matches_its_reference() {
    let registry = registry();
    let reference = reference();
    let mut failures = Vec::new();
    for kind in ["sd1", "linear"] {
        let model = model_sigmas(&reference, kind);
        failures.extend(schedule_failures(&registry, &reference, kind, &model));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Max |a − b| over two equally long lists.
fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

/// Every schedule on `model` against the reference's `schedule.<kind>.<name>.<steps>`: one
/// line per schedule over the tolerance (each one's worst error is printed).
fn schedule_failures(
    registry: &Registry,
    reference: &HashMap<String, Tensor>,
    kind: &str,
    model: &ModelSigmas,
) -> Vec<String> {
    let mut failures = Vec::new();
    for name in SCHEDULES {
        let entry = find(&registry.schedules, name, "schedule").unwrap();
        let mut worst: f64 = 0.0;
        for steps in SCHEDULE_STEPS {
            let want = floats(tensor(
                reference,
                &format!("schedule.{kind}.{name}.{steps}"),
            ));
            let got = entry.decl.run(model, steps).unwrap();
            worst = worst.max(max_diff(&got, &want));
        }
        eprintln!("{name:<16} {kind:<6}: max abs error {worst:.2e}");
        if worst.is_nan() || worst > SCHEDULE_TOLERANCE {
            failures.push(format!("{name} ({kind}): max abs error {worst:.3e}"));
        }
    }
    failures
}

#[test]
fn schedules_return_steps_plus_one_descending_sigmas_ending_in_zero() {
    let registry = registry();
    let reference = reference();
    let model = model_sigmas(&reference, "sd1");
    for name in SCHEDULES {
        let entry = find(&registry.schedules, name, "schedule").unwrap();
        for steps in [1, 2, 5, 50, 150] {
            let sigmas = entry.decl.run(&model, steps).unwrap();
            assert_eq!(sigmas.len(), steps + 1, "{name} at {steps} steps");
            assert_eq!(sigmas[steps], 0.0, "{name} at {steps} steps");
            assert!(
                sigmas.windows(2).all(|w| w[0].is_finite() && w[0] > w[1]),
                "{name} at {steps} steps: {sigmas:?}"
            );
        }
    }
}

#[test]
fn a1111_display_names_resolve_case_insensitively() {
    let registry = registry();
    let samplers = [
        ("Euler", "euler"),
        ("Euler a", "euler_ancestral"),
        ("Heun", "heun"),
        ("DPM2", "dpm_2"),
        ("DPM2 a", "dpm_2_ancestral"),
        ("LMS", "lms"),
        ("DPM++ 2S a", "dpmpp_2s_ancestral"),
        ("DPM++ SDE", "dpmpp_sde"),
        ("DPM++ 2M", "dpmpp_2m"),
        ("DPM++ 2M SDE", "dpmpp_2m_sde"),
        ("DPM++ 3M SDE", "dpmpp_3m_sde"),
        ("DDIM", "ddim"),
        ("DDPM", "ddpm"),
        ("UniPC", "uni_pc"),
        ("LCM", "lcm"),
        ("PLMS", "plms"),
    ];
    for (display, id) in samplers {
        let entry = find(&registry.samplers, display, "sampler").unwrap();
        assert_eq!(entry.decl.name.as_str(), id);
        assert_eq!(
            display_name(&entry.decl),
            display,
            "A1111 name must be the first alias"
        );
        let shouted = find(&registry.samplers, &display.to_uppercase(), "sampler").unwrap();
        assert_eq!(shouted.decl.name.as_str(), id);
    }
    let schedules = [
        ("Normal", "normal"),
        ("Karras", "karras"),
        ("Exponential", "exponential"),
        ("Polyexponential", "polyexponential"),
        ("SGM Uniform", "sgm_uniform"),
        ("Simple", "simple"),
        ("DDIM", "ddim_uniform"),
        ("Beta", "beta"),
        ("KL Optimal", "kl_optimal"),
    ];
    for (display, id) in schedules {
        let entry = find(&registry.schedules, display, "schedule").unwrap();
        assert_eq!(entry.decl.name.as_str(), id);
        assert_eq!(
            display_name(&entry.decl),
            display,
            "A1111 name must be the first alias"
        );
        let quiet = find(&registry.schedules, &display.to_lowercase(), "schedule").unwrap();
        assert_eq!(quiet.decl.name.as_str(), id);
    }
}

#[test]
fn samplers_carry_a1111_default_schedules_and_discard_flags() {
    let registry = registry();
    let expected = [
        ("euler", "", false),
        ("euler_ancestral", "", false),
        ("heun", "", false),
        ("dpm_2", "karras", true),
        ("dpm_2_ancestral", "karras", true),
        ("lms", "", false),
        ("dpmpp_2s_ancestral", "karras", false),
        ("dpmpp_sde", "karras", false),
        ("dpmpp_2m", "karras", false),
        ("dpmpp_2m_sde", "exponential", false),
        ("dpmpp_3m_sde", "exponential", true),
        ("ddim", "ddim_uniform", false),
        ("ddpm", "", false),
        ("uni_pc", "", true),
        ("lcm", "", false),
        ("plms", "ddim_uniform", false),
    ];
    for (id, schedule, discard) in expected {
        let decl = &find(&registry.samplers, id, "sampler").unwrap().decl;
        assert_eq!(decl.default_schedule.as_str(), schedule, "{id}");
        assert_eq!(decl.discard_penultimate_sigma, discard, "{id}");
        if !schedule.is_empty() {
            find(&registry.schedules, schedule, "schedule").unwrap();
        }
    }
}

#[test]
fn bad_sampler_options_are_errors_not_panics() {
    let registry = registry();
    let reference = reference();
    let sigmas = floats(tensor(&reference, "dpmpp_2m_sde.4.sigmas"));
    let cases: [(&str, Options, &str); 5] = [
        (
            "dpmpp_2m_sde",
            &[("solver_type", Text("euler"))],
            "solver_type",
        ),
        ("lms", &[("order", Num(0.0))], "order"),
        ("lms", &[("order", Num(2.5))], "order"),
        ("uni_pc", &[("variant", Text("bh3"))], "variant"),
        ("dpmpp_sde", &[("r", Num(0.0))], "`r`"),
    ];
    for (id, opts, mentions) in cases {
        let entry = find(&registry.samplers, id, "sampler").unwrap();
        let mut recorder = Recorder::new(Vec::new(), ModelSampling::discrete(Vec::new()));
        let x = tensor(&reference, "x0") * sigmas[0];
        let err = entry
            .decl
            .run(&mut recorder, &options(opts), x, &sigmas)
            .unwrap_err();
        assert!(err.to_string().contains(mentions), "{id}: {err}");
    }
}

fn hires_profile(sampler: &str, schedule: &str) -> Profile {
    let text = format!(
        r#"seed = 1
prompt = "a cat"
[model]
checkpoint = "tests/data/sd1-tiny/sd1-tiny.safetensors"
[[pass]]
width = 64
height = 64
steps = 20
sampler = "{sampler}"
schedule = "{schedule}"
[[pass]]
scale = 2.0
steps = 20
denoise = 0.7
sampler = "{sampler}"
schedule = "{schedule}"
"#
    );
    let mut profile = Profile::parse(&text, "hires").unwrap();
    profile.resolve_defaults(512).unwrap();
    profile
}

/// README "Semantics": steps = 20 at denoise 0.7 runs the last 21 sigmas of the 28-step schedule.
#[test]
fn hires_pass_sigmas_are_the_tail_of_the_longer_schedule() {
    let registry = registry();
    let reference = reference();
    let model = model_sigmas(&reference, "sd1");
    for name in SCHEDULES {
        let profile = hires_profile("euler", name);
        let plans = plan_passes(&profile, &registry, Path::new(".")).unwrap();
        let second = pass_sigmas(&plans[1], &model).unwrap();
        let full = plans[1].schedule.decl.run(&model, 28).unwrap();
        assert_eq!(second, full[8..], "{name}");
        let want = floats(tensor(&reference, &format!("schedule.sd1.{name}.28")));
        let err = max_diff(&second, &want[8..]);
        assert!(err <= SCHEDULE_TOLERANCE, "{name}: {err:e}");
    }
    // A discarding sampler builds 29 steps, drops the penultimate sigma, then keeps 21.
    let plans = plan_passes(&hires_profile("DPM2", "karras"), &registry, Path::new(".")).unwrap();
    let second = pass_sigmas(&plans[1], &model).unwrap();
    let mut full = plans[1].schedule.decl.run(&model, 29).unwrap();
    full.remove(28);
    assert_eq!(second, full[8..]);
}

/// A profile on the tiny SD1 model (its reference prompt, seed 1234, CFG 5, 32 px) whose
/// passes run `plms`: pass 1 with `steps1`, and a hires pass (latent ×2, 4 steps, denoise
/// 0.5) when `hires`.
fn plms_profile(steps1: usize, hires: bool) -> Profile {
    let tiny = repo().join("tests/data/sd1-tiny");
    let hires = match hires {
        true => "[[pass]]\nscale = 2.0\nupscaler = \"latent\"\nsteps = 4\ndenoise = 0.5\n",
        false => "",
    };
    let text = format!(
        "seed = 1234\nprompt = \"a photo of a cat\"\nnegative = \"\"\ncfg = 5.0\ndevice = \"cpu\"\n\
         dtype = \"fp32\"\n[model]\ncheckpoint = {}\n[[pass]]\nwidth = 32\nheight = 32\n\
         steps = {steps1}\nsampler = \"PLMS\"\n{hires}",
        toml::Value::from(tiny.join("sd1-tiny.safetensors").to_string_lossy().as_ref())
    );
    Profile::parse(&text, "plms").unwrap()
}

/// PLMS through the host against a transcription of A1111's CompVis PLMS
/// (scripts/make_plms_reference.py): txt2img at 10 and 8 steps (A1111's timestep grid has as
/// many points as steps there), and a hires pass run as A1111's `sample_img2img`.
#[test]
fn plms_matches_a1111_on_the_tiny_model() {
    let registry = registry();
    let path = repo().join("tests/data/plms/reference.safetensors");
    let r: HashMap<String, Tensor> = Tensor::read_safetensors(&path)
        .unwrap()
        .into_iter()
        .collect();
    // The tiny model's untrained UNet makes latents of ~30: float32 rounding alone is ~4e-6
    // there, so the bound is 1e-5 of the latent's largest magnitude (measured: 1.5e-6).
    let mut worst: f64 = 0.0;
    for (steps, hires, keys) in [
        (10, false, &["txt2img10"][..]),
        (8, false, &["txt2img8"][..]),
        (10, true, &["hires.pass1", "hires.pass2"][..]),
    ] {
        let mut job =
            hiresfix::generate::prepare(plms_profile(steps, hires), &registry, &repo()).unwrap();
        assert_eq!(job.plans[0].schedule.decl.name, "ddim_uniform");
        let result = job.run_image(1234).unwrap();
        for (latent, key) in result.latents.iter().zip(keys) {
            let err = max_abs(latent, tensor(&r, key));
            let scale = f64::try_from(tensor(&r, key).abs().max()).unwrap();
            eprintln!("plms {key}: max abs error {err:.2e} (latent max {scale:.1})");
            worst = worst.max(err / scale);
        }
    }
    assert!(
        worst <= 1e-5,
        "max abs error {worst:e} of the latent's magnitude"
    );
}
