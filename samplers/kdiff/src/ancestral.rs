//! Ancestral samplers: a deterministic step down to `sigma_down`, then fresh noise from the
//! image's step stream up to the next sigma (k-diffusion `get_ancestral_step`). On a
//! rectified-flow model, Euler a and DPM++ 2S a take ComfyUI's `_RF` forms ([`RfStep`]);
//! DPM2 a has none and is refused there.
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

/// The ancestral step of a rectified-flow model (ComfyUI `sample_euler_ancestral_RF`,
/// `sample_dpmpp_2s_ancestral_RF`): the deterministic step goes down to
/// `sigma_down = sigma_next (1 + (sigma_next / sigma - 1) eta)`, and the renoising to
/// `sigma_next` rescales the signal by `(1 - sigma_next) / (1 - sigma_down)` and adds noise
/// × `renoise`, so the result is again `(1 - σ) x₀ + σ ε` at `sigma_next`.
struct RfStep {
    down: f64,
    alpha_ratio: f64,
    renoise: f64,
}

impl RfStep {
    fn new(sigma: f64, sigma_next: f64, eta: f64) -> Self {
        let down = sigma_next * (1.0 + (sigma_next / sigma - 1.0) * eta);
        let (alpha_next, alpha_down) = (1.0 - sigma_next, 1.0 - down);
        let renoise =
            (sigma_next.powi(2) - down.powi(2) * alpha_next.powi(2) / alpha_down.powi(2)).sqrt();
        Self {
            down,
            alpha_ratio: alpha_next / alpha_down,
            renoise,
        }
    }

    /// `x` renoised from `sigma_down` to `sigma_next` with the next draw of the step stream.
    fn renoise(&self, ctx: &mut SampleCtx<'_>, x: Tensor, s_noise: f64) -> Result<Tensor> {
        let noise = ctx.noise_like(&x)?;
        Ok(x * self.alpha_ratio + noise * (s_noise * self.renoise))
    }
}

/// `ratio x + (1 - ratio) denoised`: the flow model's Euler step from `sigma` to
/// `ratio · sigma`.
fn flow_euler(x: &Tensor, denoised: &Tensor, ratio: f64) -> Tensor {
    x * ratio + denoised * (1.0 - ratio)
}

/// The loop of ComfyUI's `_RF` samplers: `down` takes `x` from `sigma` to `step.down` given
/// its denoised prediction, then (eta > 0) the renoising to the next sigma; the last step,
/// to sigma 0, is the denoised prediction (DPM++ 2S a RF's Euler step there is that, up to
/// rounding).
fn sample_flow(
    ctx: &mut SampleCtx<'_>,
    mut x: Tensor,
    sigmas: &[f64],
    (eta, s_noise): (f64, f64),
    down: fn(&mut SampleCtx<'_>, &Tensor, Tensor, f64, &RfStep) -> Result<Tensor>,
) -> Result<Tensor> {
    let steps = sigmas.len().saturating_sub(1);
    for i in 0..steps {
        let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
        let denoised = ctx.denoise(&x, sigma)?;
        x = match sigma_next == 0.0 {
            true => denoised,
            false => {
                let step = RfStep::new(sigma, sigma_next, eta);
                let x_down = down(ctx, &x, denoised, sigma, &step)?;
                match eta > 0.0 {
                    true => step.renoise(ctx, x_down, s_noise)?,
                    false => x_down,
                }
            }
        };
        ctx.step(i, steps)?;
    }
    Ok(x)
}

/// Ancestral Euler (Ho et al. 2020's ancestral sampling with Euler steps), k-diffusion
/// `sample_euler_ancestral`; on a flow model ComfyUI's `sample_euler_ancestral_RF`.
pub struct EulerAncestral;

impl Sampler for EulerAncestral {
    const NAME: &'static str = "euler_ancestral";
    const ALIASES: &'static [&'static str] = &["Euler a", "k_euler_a", "k_euler_ancestral"];
    const OPTIONS: &'static [&'static str] = ANCESTRAL_OPTIONS;
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (eta, s_noise) = eta_and_s_noise(ctx)?;
        if ctx.model_sampling()?.is_flow() {
            return sample_flow(
                ctx,
                x,
                sigmas,
                (eta, s_noise),
                |_, x, denoised, sigma, step| Ok(flow_euler(x, &denoised, step.down / sigma)),
            );
        }
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
/// `sample_dpmpp_2s_ancestral`: a singlestep second-order update in log-sigma time; on a flow
/// model ComfyUI's `sample_dpmpp_2s_ancestral_RF` (midpoint in `ln((1 − σ) / σ)`).
pub struct DpmPp2sAncestral;

/// DPM++ 2S a RF's step down: a flow Euler step to the midpoint in λ = ln((1 − σ) / σ), the
/// model there, and the flow Euler step to `sigma_down` with that prediction.
fn dpmpp_2s_flow_down(
    ctx: &mut SampleCtx<'_>,
    x: &Tensor,
    denoised: Tensor,
    sigma: f64,
    step: &RfStep,
) -> Result<Tensor> {
    let lambda = |sigma: f64| ((1.0 - sigma) / sigma).ln();
    // ComfyUI's guard: λ(1) is -inf.
    let sigma_s = match sigma == 1.0 {
        true => 0.9999,
        false => {
            let (t, t_down) = (lambda(sigma), lambda(step.down));
            1.0 / ((t + 0.5 * (t_down - t)).exp() + 1.0)
        }
    };
    let u = flow_euler(x, &denoised, sigma_s / sigma);
    let denoised_2 = ctx.denoise(&u, sigma_s)?;
    Ok(flow_euler(x, &denoised_2, step.down / sigma))
}

impl Sampler for DpmPp2sAncestral {
    const NAME: &'static str = "dpmpp_2s_ancestral";
    const ALIASES: &'static [&'static str] = &["DPM++ 2S a", "k_dpmpp_2s_a"];
    const OPTIONS: &'static [&'static str] = ANCESTRAL_OPTIONS;
    const DEFAULT_SCHEDULE: &'static str = "karras";
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (eta, s_noise) = eta_and_s_noise(ctx)?;
        if ctx.model_sampling()?.is_flow() {
            return sample_flow(ctx, x, sigmas, (eta, s_noise), dpmpp_2s_flow_down);
        }
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
