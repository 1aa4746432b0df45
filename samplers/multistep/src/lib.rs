//! DDIM and DPM-Solver++ samplers.
use host_api::tch::Tensor;
use host_api::{Result, SampleCtx, Sampler};

/// DDIM (Song et al. 2020, "Denoising Diffusion Implicit Models") in sigma space: with
/// ᾱ = 1/(1+σ²), eta = 0 is exactly an Euler step; eta > 0 adds DDIM's stochastic term.
pub struct Ddim;

impl Sampler for Ddim {
    const NAME: &'static str = "ddim";
    const ALIASES: &'static [&'static str] = &["DDIM"];
    const OPTIONS: &'static [&'static str] = &["eta"];

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let eta = ctx.options().number("eta", 0.0)?;
        let steps = sigmas.len() - 1;
        for i in 0..steps {
            let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
            let denoised = ctx.denoise(&x, sigma)?;
            let eps = (&x - &denoised) / sigma;
            let alpha = 1.0 / (1.0 + sigma * sigma);
            let alpha_next = 1.0 / (1.0 + sigma_next * sigma_next);
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

/// DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++"), k-diffusion `sample_dpmpp_2m`.
pub struct DpmPp2m;

impl Sampler for DpmPp2m {
    const NAME: &'static str = "dpmpp_2m";
    const ALIASES: &'static [&'static str] = &["DPM++ 2M", "k_dpmpp_2m"];
    const DEFAULT_SCHEDULE: &'static str = "karras";

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let t_of = |sigma: f64| -sigma.ln();
        let steps = sigmas.len() - 1;
        let mut old_denoised: Option<Tensor> = None;
        for i in 0..steps {
            let denoised = ctx.denoise(&x, sigmas[i])?;
            let ratio = sigmas[i + 1] / sigmas[i];
            let blended = match (&old_denoised, sigmas[i + 1] > 0.0) {
                (Some(old), true) => {
                    let h = t_of(sigmas[i + 1]) - t_of(sigmas[i]);
                    let r = (t_of(sigmas[i]) - t_of(sigmas[i - 1])) / h;
                    &denoised * (1.0 + 1.0 / (2.0 * r)) - old * (1.0 / (2.0 * r))
                }
                _ => denoised.shallow_clone(),
            };
            // (-h).expm1() with h = t_next - t is ratio - 1; at sigma_next = 0 the step lands on `blended`.
            x = if sigmas[i + 1] > 0.0 {
                &x * ratio - blended * (ratio - 1.0)
            } else {
                blended
            };
            old_denoised = Some(denoised);
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

host_api::export_plugin! {
    samplers: [Ddim, DpmPp2m],
}
