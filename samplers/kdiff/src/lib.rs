//! Euler-family samplers, after k-diffusion `k_diffusion/sampling.py`.
use host_api::sampler::{ancestral_step, to_d};
use host_api::tch::Tensor;
use host_api::{Result, SampleCtx, Sampler};

/// Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2 without churn).
pub struct Euler;

impl Sampler for Euler {
    const NAME: &'static str = "euler";
    const ALIASES: &'static [&'static str] = &["Euler", "k_euler"];

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let steps = sigmas.len() - 1;
        for i in 0..steps {
            let denoised = ctx.denoise(&x, sigmas[i])?;
            x = &x + to_d(&x, sigmas[i], &denoised) * (sigmas[i + 1] - sigmas[i]);
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// Ancestral Euler: an Euler step to `sigma_down`, then fresh noise up to `sigma_next`
/// (k-diffusion `sample_euler_ancestral`).
pub struct EulerAncestral;

impl Sampler for EulerAncestral {
    const NAME: &'static str = "euler_ancestral";
    const ALIASES: &'static [&'static str] = &["Euler a", "k_euler_a", "k_euler_ancestral"];
    const OPTIONS: &'static [&'static str] = &["eta", "s_noise"];

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let eta = ctx.options().number("eta", 1.0)?;
        let s_noise = ctx.options().number("s_noise", 1.0)?;
        let steps = sigmas.len() - 1;
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

host_api::export_plugin! {
    samplers: [Euler, EulerAncestral],
}
