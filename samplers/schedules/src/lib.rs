//! Sigma schedules built from the model's own sigma table; each returns `steps + 1` descending
//! sigmas ending with zero (k-diffusion `get_sigmas_*`, ComfyUI `comfy/samplers.py`).
mod beta;

use host_api::{Error, ModelSigmas, Result, Schedule};

/// `torch.linspace(start, end, n)`.
fn linspace(start: f64, end: f64, n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 {
        (end - start) / (n - 1) as f64
    } else {
        0.0
    };
    (0..n).map(move |i| {
        if i + 1 == n && n > 1 {
            end
        } else {
            start + step * i as f64
        }
    })
}

fn append_zero(mut sigmas: Vec<f64>) -> Vec<f64> {
    sigmas.push(0.0);
    sigmas
}

/// The timesteps of the model's largest and smallest sigma (ComfyUI `normal_scheduler`'s
/// `start` and `end`): a discrete model's last and first training step, a flow model's
/// `multiplier` and `sigma_min · multiplier`.
fn t_range(model: &ModelSigmas) -> (f64, f64) {
    (
        model.sigma_to_t(model.sigma_max()),
        model.sigma_to_t(model.sigma_min()),
    )
}

/// Evenly spaced timesteps from the last training step to the first, mapped through the
/// model's sigma table (k-diffusion `DiscreteSchedule.get_sigmas`; ComfyUI "normal"). On a
/// flow model, ComfyUI's "normal" on `ModelSamplingDiscreteFlow`, which is also diffusers'
/// `FlowMatchEulerDiscreteScheduler` default (`linspace(1, σ_min)`, then shifted).
pub struct Normal;

impl Schedule for Normal {
    const NAME: &'static str = "normal";
    const ALIASES: &'static [&'static str] = &["Normal", "Uniform"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        let (start, end) = t_range(model);
        Ok(append_zero(
            linspace(start, end, steps)
                .map(|t| model.t_to_sigma(t))
                .collect(),
        ))
    }
}

/// Karras et al. 2022 ("Elucidating the Design Space...", eq. 5) with rho = 7 between the
/// model's sigma_min and sigma_max (k-diffusion `get_sigmas_karras`).
pub struct Karras;

impl Schedule for Karras {
    const NAME: &'static str = "karras";
    const ALIASES: &'static [&'static str] = &["Karras"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        const RHO: f64 = 7.0;
        let min_inv_rho = model.sigma_min().powf(1.0 / RHO);
        let max_inv_rho = model.sigma_max().powf(1.0 / RHO);
        let ramp = linspace(0.0, 1.0, steps);
        Ok(append_zero(
            ramp.map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(RHO))
                .collect(),
        ))
    }
}

/// Evenly spaced in log-sigma from sigma_max to sigma_min (k-diffusion `get_sigmas_exponential`).
pub struct Exponential;

impl Schedule for Exponential {
    const NAME: &'static str = "exponential";
    const ALIASES: &'static [&'static str] = &["Exponential"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        let (lo, hi) = (model.sigma_min().ln(), model.sigma_max().ln());
        Ok(append_zero(linspace(hi, lo, steps).map(f64::exp).collect()))
    }
}

/// A polynomial of degree rho in log-sigma; rho = 1, A1111's default, is the exponential
/// schedule (k-diffusion `get_sigmas_polyexponential`).
pub struct Polyexponential;

impl Schedule for Polyexponential {
    const NAME: &'static str = "polyexponential";
    const ALIASES: &'static [&'static str] = &["Polyexponential"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        const RHO: f64 = 1.0;
        let (lo, hi) = (model.sigma_min().ln(), model.sigma_max().ln());
        Ok(append_zero(
            linspace(1.0, 0.0, steps)
                .map(|ramp| (ramp.powf(RHO) * (hi - lo) + lo).exp())
                .collect(),
        ))
    }
}

/// `steps + 1` evenly spaced timesteps from the last training step to 0, the last replaced by
/// sigma 0 (ComfyUI `normal_scheduler(sgm=True)`, as SGM / SDXL's discretisation).
pub struct SgmUniform;

impl Schedule for SgmUniform {
    const NAME: &'static str = "sgm_uniform";
    const ALIASES: &'static [&'static str] = &["SGM Uniform", "SGMUniform"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        let (start, end) = t_range(model);
        Ok(append_zero(
            linspace(start, end, steps + 1)
                .take(steps)
                .map(|t| model.t_to_sigma(t))
                .collect(),
        ))
    }
}

/// Every `len / steps`-th entry of the sigma table, from the top (ComfyUI `simple_scheduler`).
pub struct Simple;

impl Schedule for Simple {
    const NAME: &'static str = "simple";
    const ALIASES: &'static [&'static str] = &["Simple"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        let table = model.table();
        let stride = table.len() as f64 / steps as f64;
        Ok(append_zero(
            (0..steps)
                .map(|x| {
                    table[table.len() - 1 - ((x as f64 * stride) as usize).min(table.len() - 1)]
                })
                .collect(),
        ))
    }
}

/// Table entries 1, 1 + s, 1 + 2s, ... with s = len / steps, as DDIM's uniform timesteps
/// (ComfyUI `ddim_scheduler`). ComfyUI takes every such entry, which is more than `steps` when
/// `steps` does not divide the table (29 for 28 steps); we keep the first `steps` of them,
/// diffusers' "leading" spacing with steps_offset 1, so the count is always `steps + 1`.
pub struct DdimUniform;

impl Schedule for DdimUniform {
    const NAME: &'static str = "ddim_uniform";
    const ALIASES: &'static [&'static str] = &["DDIM"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        let table = model.table();
        if steps >= table.len() {
            return Err(Error(format!(
                "ddim_uniform: at most {} steps for a {}-step model",
                table.len() - 1,
                table.len()
            )));
        }
        let stride = (table.len() / steps.max(1)).max(1);
        Ok(append_zero(
            (0..steps).rev().map(|k| table[1 + k * stride]).collect(),
        ))
    }
}

/// Timesteps at the quantiles of a Beta(0.6, 0.6) distribution, so steps crowd both ends (Lee
/// et al. 2024, "Beta Sampling is All You Need"; ComfyUI `beta_scheduler`).
pub struct Beta;

impl Schedule for Beta {
    const NAME: &'static str = "beta";
    const ALIASES: &'static [&'static str] = &["Beta"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        let table = model.table();
        if steps > table.len() {
            return Err(Error(format!(
                "beta: at most {} steps for a {}-step model",
                table.len(),
                table.len()
            )));
        }
        let timesteps = beta::timesteps(steps, table.len() - 1, 0.6, 0.6);
        Ok(append_zero(
            timesteps.into_iter().map(|t| table[t]).collect(),
        ))
    }
}

/// The KL-optimal schedule (Sabour et al. 2024, "Align Your Steps"): evenly spaced in
/// arctan(sigma) (ComfyUI `kl_optimal_scheduler`; one step, a 0/0 there, is sigma_max).
pub struct KlOptimal;

impl Schedule for KlOptimal {
    const NAME: &'static str = "kl_optimal";
    const ALIASES: &'static [&'static str] = &["KL Optimal"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        let (lo, hi) = (model.sigma_min().atan(), model.sigma_max().atan());
        Ok(append_zero(
            linspace(0.0, 1.0, steps)
                .map(|w| (w * lo + (1.0 - w) * hi).tan())
                .collect(),
        ))
    }
}

host_api::export_plugin! {
    schedules: [Normal, Karras, Exponential, Polyexponential, SgmUniform, Simple, DdimUniform, Beta, KlOptimal],
}
