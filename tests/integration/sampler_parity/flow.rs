//! The samplers and schedules on a rectified-flow model (host-api 1.5 `ModelSampling`), through
//! the registry, against scripts/make_flow_sampler_reference.py: k-diffusion's ODE samplers on
//! the flow sigmas, transcriptions of ComfyUI's `_RF` / CONST forms, ComfyUI's schedules on
//! `ModelSamplingDiscreteFlow` (SD3) and `ModelSamplingFlux`; samplers without a flow form
//! refused in one line; hires slicing of flow sigmas.
use std::collections::HashMap;
use std::path::Path;

use hiresfix::plan::{check_sampler_serves, pass_sigmas, plan_passes};
use hiresfix::registry::{find, Registry};
use host_api::tch::Tensor;
use host_api::{ModelSampling, ModelSigmas};

use super::{
    assert_every_case_tested, compare_trajectory, floats, hires_profile, max_diff, options,
    registry, repo, schedule_failures, tensor, Num, Options, Recorder, Text, SAMPLERS,
    SAMPLER_STEPS, SAMPLER_TOLERANCE, SCHEDULES, SCHEDULE_TOLERANCE,
};

/// Churn below the flow model's sigma 1 (s_tmax 0.9).
const CHURN_FLOW: Options = &[
    ("s_churn", Num(1.5)),
    ("s_tmin", Num(0.2)),
    ("s_tmax", Num(0.9)),
    ("s_noise", Num(1.003)),
];

/// The reference cases of scripts/make_flow_sampler_reference.py: (case, sampler, options,
/// also run as a hires pass).
const CASES: &[(&str, &str, Options, bool)] = &[
    ("euler", "euler", &[], true),
    ("euler_churn", "euler", CHURN_FLOW, false),
    ("heun", "heun", &[], false),
    ("dpm_2", "dpm_2", &[], false),
    ("lms", "lms", &[], false),
    ("dpmpp_2m", "dpmpp_2m", &[], false),
    ("euler_ancestral", "euler_ancestral", &[], true),
    (
        "euler_ancestral_eta",
        "euler_ancestral",
        &[("eta", Num(0.6)), ("s_noise", Num(0.9))],
        false,
    ),
    ("dpmpp_2s_ancestral", "dpmpp_2s_ancestral", &[], true),
    (
        "dpmpp_2s_ancestral_eta",
        "dpmpp_2s_ancestral",
        &[("eta", Num(0.5)), ("s_noise", Num(1.1))],
        false,
    ),
    ("dpmpp_sde", "dpmpp_sde", &[], true),
    (
        "dpmpp_sde_r",
        "dpmpp_sde",
        &[("r", Num(0.3)), ("eta", Num(0.7)), ("s_noise", Num(0.95))],
        false,
    ),
    ("dpmpp_2m_sde", "dpmpp_2m_sde", &[], true),
    (
        "dpmpp_2m_sde_heun",
        "dpmpp_2m_sde",
        &[("solver_type", Text("heun")), ("eta", Num(0.8))],
        false,
    ),
    ("dpmpp_3m_sde", "dpmpp_3m_sde", &[], false),
    ("lcm", "lcm", &[], true),
];

/// The samplers with no flow form (the reference's `refused_on_flow`).
const REFUSED: [&str; 5] = ["dpm_2_ancestral", "ddim", "ddpm", "uni_pc", "plms"];

fn reference() -> HashMap<String, Tensor> {
    let path = repo().join("tests/data/samplers/flow_reference.safetensors");
    Tensor::read_safetensors(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .into_iter()
        .collect()
}

/// SD3's model sampling (shift 3, 1000 steps, timestep σ × 1000).
fn sd3() -> ModelSampling {
    ModelSampling::flow(3.0, 1000, 1000.0).unwrap()
}

/// Flux's at 1024 px (ComfyUI `ModelSamplingFlux`: shift e^1.15, 10000 steps, timestep σ).
fn flux() -> ModelSampling {
    ModelSampling::flow(1.15f64.exp(), 10000, 1.0).unwrap()
}

fn run_case(
    registry: &Registry,
    reference: &HashMap<String, Tensor>,
    (case, sampler, opts): (&str, &str, Options),
    run: &str,
) -> Result<f64, String> {
    let key = format!("{case}.{run}");
    let entry = find(&registry.samplers, sampler, "sampler").map_err(|e| e.to_string())?;
    let sigmas = floats(tensor(reference, &format!("{key}.sigmas")));
    let sampling = sd3();
    let x0 = tensor(reference, "x0");
    // The host's noising: pure noise at sigma 1, or the "upscaled" latent noised to the
    // hires pass's first sigma, (1 − σ) latent + σ noise.
    let x = match run {
        "hires" => sampling.noise_latent(sigmas[0], x0, tensor(reference, "latent")),
        _ => sampling.noise_only(sigmas[0], x0),
    };
    let mut recorder = Recorder::new(tensor(reference, "noise").unbind(0), sampling);
    let out = entry
        .decl
        .run(&mut recorder, &options(opts), x, &sigmas)
        .map_err(|e| e.to_string())?;
    compare_trajectory(reference, &key, &recorder, &out)
}

#[test]
fn every_flow_sampler_follows_its_comfyui_or_k_diffusion_trajectory() {
    let registry = registry();
    let reference = reference();
    let mut failures = Vec::new();
    for &(case, sampler, opts, hires) in CASES {
        let runs = SAMPLER_STEPS.iter().map(|s| s.to_string());
        for run in runs.chain(hires.then(|| "hires".to_owned())) {
            match run_case(&registry, &reference, (case, sampler, opts), &run) {
                Ok(err) => {
                    eprintln!("flow {case:<24} {run:>5}: max abs error {err:.2e}");
                    if err.is_nan() || err > SAMPLER_TOLERANCE {
                        failures.push(format!("{case} ({run}): max abs error {err:.3e}"));
                    }
                }
                Err(why) => failures.push(format!("{case} ({run}): {why}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every sampler either has a flow reference case or is refused at plan time, in one line
/// naming the pass, the sampler and the model, and suggesting euler.
#[test]
fn samplers_without_a_flow_form_are_refused_in_one_line() {
    let registry = registry();
    assert_every_case_tested(&reference(), CASES.iter().map(|(c, ..)| *c));
    for id in SAMPLERS.iter().chain(&["plms"]) {
        let has_case = CASES.iter().any(|(_, s, ..)| s == id);
        let refused = REFUSED.contains(id);
        assert!(
            has_case != refused,
            "{id}: a flow case or refused, not both"
        );
        assert_eq!(
            find(&registry.samplers, id, "sampler")
                .unwrap()
                .decl
                .serves_flow,
            has_case,
            "{id}"
        );
        let plans = plan_passes(&hires_profile(id, "normal"), &registry, Path::new(".")).unwrap();
        let discrete = ModelSampling::discrete(floats(tensor(&super::reference(), "table.sd1")));
        check_sampler_serves(&plans[1], &discrete, "sd1").unwrap();
        let verdict = check_sampler_serves(&plans[1], &sd3(), "sd3");
        match refused {
            false => verdict.unwrap(),
            true => {
                let line = verdict.unwrap_err().to_string();
                assert!(!line.contains('\n'), "{line}");
                for part in ["pass 2", id, "flow", "sd3", "shift 3", "euler"] {
                    assert!(line.contains(part), "`{part}` missing: {line}");
                }
            }
        }
    }
}

#[test]
fn every_schedule_matches_comfyui_on_flow_models() {
    let registry = registry();
    let reference = reference();
    let mut failures = Vec::new();
    for (kind, sampling) in [("sd3", sd3()), ("flux", flux())] {
        // The model's table is ComfyUI's: time_snr_shift(shift, i / N), i = 1..=N.
        let table = floats(tensor(&reference, &format!("table.{kind}")));
        let table_err = max_diff(&sampling.sigmas, &table);
        assert!(table_err < 1e-12, "{kind}: {table_err}");
        let model = sampling.model_sigmas().unwrap();
        failures.extend(schedule_failures(&registry, &reference, kind, &model));
        // The host's two ways in (a ModelSigmas, a plugin's ModelSampling) agree.
        let normal = &find(&registry.schedules, "normal", "schedule")
            .unwrap()
            .decl;
        assert_eq!(
            normal.run(&model, 10).unwrap(),
            normal.run_sampling(&sampling, 10).unwrap()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// README "Semantics" on a flow model: steps = 20 at denoise 0.7 runs the last 21 sigmas of
/// the 28-step schedule, as for a discrete one (A1111 / Forge).
#[test]
fn hires_flow_sigmas_are_the_tail_of_the_longer_schedule() {
    let registry = registry();
    let reference = reference();
    let model: ModelSigmas = sd3().model_sigmas().unwrap();
    for name in SCHEDULES {
        let plans = plan_passes(&hires_profile("euler", name), &registry, Path::new(".")).unwrap();
        let second = pass_sigmas(&plans[1], &model).unwrap();
        let want = floats(tensor(&reference, &format!("schedule.sd3.{name}.28")));
        let err = max_diff(&second, &want[8..]);
        assert!(err <= SCHEDULE_TOLERANCE, "{name}: {err:e}");
    }
}
