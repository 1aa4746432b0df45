//! Ancestral samplers: a deterministic step down to `sigma_down`, then fresh noise from the
//! image's step stream up to the next sigma (k-diffusion `get_ancestral_step`).
use host_api::sampler::{ancestral_step, to_d};
use host_api::tch::Tensor;
use host_api::{Result, SampleCtx, Sampler};

use crate::karras::log_midpoint;

const ANCESTRAL_OPTIONS: &[&str] = &["eta", "s_noise"];

fn eta_and_s_noise(ctx: &SampleCtx<'_>) -> Result<(f64, f64)> {
    Ok((
        ctx.options().number("eta", 1.0)?,
        ctx.options().number("s_noise", 1.0)?,
    ))
}

/// Ancestral Euler (Ho et al. 2020's ancestral sampling with Euler steps), k-diffusion
/// `sample_euler_ancestral`.
pub struct EulerAncestral;

impl Sampler for EulerAncestral {
    const NAME: &'static str = "euler_ancestral";
    const ALIASES: &'static [&'static str] = &["Euler a", "k_euler_a", "k_euler_ancestral"];
    const OPTIONS: &'static [&'static str] = ANCESTRAL_OPTIONS;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (eta, s_noise) = eta_and_s_noise(ctx)?;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let denoised = ctx.denoise(&x, sigmas[i])?;
            let (sigma_down, sigma_up) = ancestral_step(sigmas[i], sigmas[i + 1], eta);
            x = &x + to_d(&x, sigmas[i], &denoised) * (sigma_down - sigmas[i]);
            if sigmas[i + 1] > 0.0 {
                x = &x + ctx.noise_like(&x)? * (s_noise * sigma_up);
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// Ancestral DPM-Solver-2 (Lu et al. 2022, "DPM-Solver"), k-diffusion `sample_dpm_2_ancestral`;
/// a step whose `sigma_down` is 0 is a plain Euler step without noise.
pub struct Dpm2Ancestral;

impl Sampler for Dpm2Ancestral {
    const NAME: &'static str = "dpm_2_ancestral";
    const ALIASES: &'static [&'static str] = &["DPM2 a", "k_dpm_2_a"];
    const OPTIONS: &'static [&'static str] = ANCESTRAL_OPTIONS;
    const DISCARD_PENULTIMATE_SIGMA: bool = true;
    const DEFAULT_SCHEDULE: &'static str = "karras";

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (eta, s_noise) = eta_and_s_noise(ctx)?;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let sigma = sigmas[i];
            let d = to_d(&x, sigma, &ctx.denoise(&x, sigma)?);
            let (sigma_down, sigma_up) = ancestral_step(sigma, sigmas[i + 1], eta);
            if sigma_down == 0.0 {
                x = &x + d * (sigma_down - sigma);
            } else {
                let sigma_mid = log_midpoint(sigma, sigma_down);
                let x_2 = &x + d * (sigma_mid - sigma);
                let d_2 = to_d(&x_2, sigma_mid, &ctx.denoise(&x_2, sigma_mid)?);
                x = &x + d_2 * (sigma_down - sigma);
                x = &x + ctx.noise_like(&x)? * (s_noise * sigma_up);
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// Ancestral DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++"), k-diffusion
/// `sample_dpmpp_2s_ancestral`: a singlestep second-order update in log-sigma time.
pub struct DpmPp2sAncestral;

impl Sampler for DpmPp2sAncestral {
    const NAME: &'static str = "dpmpp_2s_ancestral";
    const ALIASES: &'static [&'static str] = &["DPM++ 2S a", "k_dpmpp_2s_a"];
    const OPTIONS: &'static [&'static str] = ANCESTRAL_OPTIONS;
    const DEFAULT_SCHEDULE: &'static str = "karras";

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (eta, s_noise) = eta_and_s_noise(ctx)?;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let sigma = sigmas[i];
            let denoised = ctx.denoise(&x, sigma)?;
            let (sigma_down, sigma_up) = ancestral_step(sigma, sigmas[i + 1], eta);
            if sigma_down == 0.0 {
                x = &x + to_d(&x, sigma, &denoised) * (sigma_down - sigma);
            } else {
                // t = -ln(sigma); the midpoint s = t + h / 2.
                let h = sigma.ln() - sigma_down.ln();
                let sigma_s = (-(-sigma.ln() + 0.5 * h)).exp();
                let x_2 = &x * (sigma_s / sigma) - denoised * (-0.5 * h).exp_m1();
                let denoised_2 = ctx.denoise(&x_2, sigma_s)?;
                x = &x * (sigma_down / sigma) - denoised_2 * (-h).exp_m1();
            }
            if sigmas[i + 1] > 0.0 {
                x = &x + ctx.noise_like(&x)? * (s_noise * sigma_up);
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}
