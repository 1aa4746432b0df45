//! Samplers of the DDPM family (and PLMS, in `plms`), written for k-diffusion sigmas as ComfyUI does: with
//! ᾱ = 1 / (1 + σ²), a VP sample is `x / sqrt(1 + σ²)` and ε = (x − denoised) / σ.
use host_api::tch::Tensor;
use host_api::{Result, SampleCtx, Sampler};

mod plms;
pub use plms::Plms;

/// ᾱ of noise level `sigma`.
fn alpha_bar(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma)
}

/// DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models", eq. 12) between consecutive
/// sigmas; eta = 0 (default) is exactly an Euler step, as ComfyUI's "ddim".
pub struct Ddim;

impl Sampler for Ddim {
    const NAME: &'static str = "ddim";
    const ALIASES: &'static [&'static str] = &["DDIM"];
    const OPTIONS: &'static [&'static str] = &["eta"];
    const DEFAULT_SCHEDULE: &'static str = "ddim_uniform";

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let eta = ctx.options().number("eta", 0.0)?;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
            let denoised = ctx.denoise(&x, sigma)?;
            let eps = (&x - &denoised) / sigma;
            let (alpha, alpha_next) = (alpha_bar(sigma), alpha_bar(sigma_next));
            let ddim_sigma = eta
                * ((1.0 - alpha_next) / (1.0 - alpha) * (1.0 - alpha / alpha_next))
                    .max(0.0)
                    .sqrt();
            let direction =
                ((1.0 - alpha_next - ddim_sigma * ddim_sigma).max(0.0) / alpha_next).sqrt();
            x = &denoised + eps * direction;
            if ddim_sigma > 0.0 && sigma_next > 0.0 {
                x = &x + ctx.noise_like(&x)? * (ddim_sigma / alpha_next.sqrt());
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// Ancestral DDPM sampling (Ho et al. 2020, "Denoising Diffusion Probabilistic Models",
/// Algorithm 2) between consecutive sigmas, with the posterior variance β̃; ComfyUI `sample_ddpm`.
pub struct Ddpm;

impl Sampler for Ddpm {
    const NAME: &'static str = "ddpm";
    const ALIASES: &'static [&'static str] = &["DDPM"];

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
            let denoised = ctx.denoise(&x, sigma)?;
            let eps = (&x - &denoised) / sigma;
            let (alpha_cumprod, alpha_cumprod_next) = (alpha_bar(sigma), alpha_bar(sigma_next));
            let alpha = alpha_cumprod / alpha_cumprod_next;
            let x_vp = &x / (1.0 + sigma * sigma).sqrt();
            let mu = (x_vp - eps * ((1.0 - alpha) / (1.0 - alpha_cumprod).sqrt())) / alpha.sqrt();
            x = if sigma_next > 0.0 {
                let variance = (1.0 - alpha) * (1.0 - alpha_cumprod_next) / (1.0 - alpha_cumprod);
                let sample = &mu + ctx.noise_like(&mu)? * variance.sqrt();
                sample * (1.0 + sigma_next * sigma_next).sqrt()
            } else {
                mu
            };
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// Multistep latent consistency sampling (Luo et al. 2023, "Latent Consistency Models",
/// Algorithm 1): jump to the denoised prediction, then re-noise to the next sigma with fresh
/// noise; ComfyUI / A1111 `sample_lcm`. The re-noising is the model's (ComfyUI
/// `noise_scaling`): on a flow model `(1 − σ) x₀ + σ ε`.
pub struct Lcm;

impl Sampler for Lcm {
    const NAME: &'static str = "lcm";
    const ALIASES: &'static [&'static str] = &["LCM", "k_lcm"];
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let ms = ctx.model_sampling()?;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            x = ctx.denoise(&x, sigmas[i])?;
            if sigmas[i + 1] > 0.0 {
                let noise = ctx.noise_like(&x)?;
                x = match ms.is_flow() {
                    true => ms.noise_latent(sigmas[i + 1], &noise, &x),
                    false => &x + noise * sigmas[i + 1],
                };
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

host_api::export_plugin! {
    samplers: [Ddim, Ddpm, Lcm, Plms],
}
