//! DPM-Solver++ SDE (Lu et al. 2022, "DPM-Solver++"), k-diffusion `sample_dpmpp_sde`.
use host_api::sampler::{ancestral_step, to_d};
use host_api::tch::Tensor;
use host_api::{Error, Result, SampleCtx, Sampler};

/// Stochastic DPM-Solver++: two ancestral half-steps per step, the second from a blend of both
/// denoised predictions; `r` places the intermediate point in log-sigma time.
/// Noise comes i.i.d. from the step stream, not from A1111's Brownian tree (samplers/README.md).
pub struct DpmPpSde;

impl Sampler for DpmPpSde {
    const NAME: &'static str = "dpmpp_sde";
    const ALIASES: &'static [&'static str] = &["DPM++ SDE", "k_dpmpp_sde"];
    const OPTIONS: &'static [&'static str] = &["eta", "s_noise", "r"];
    const DEFAULT_SCHEDULE: &'static str = "karras";

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let eta = ctx.options().number("eta", 1.0)?;
        let s_noise = ctx.options().number("s_noise", 1.0)?;
        let r = ctx.options().number("r", 0.5)?;
        if !(r > 0.0 && r <= 1.0) {
            return Err(Error(format!(
                "dpmpp_sde: option `r` must be in (0, 1], got {r}"
            )));
        }
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
            let denoised = ctx.denoise(&x, sigma)?;
            if sigma_next == 0.0 {
                x = &x + to_d(&x, sigma, &denoised) * (sigma_next - sigma);
            } else {
                // t = -ln(sigma); s = t + r h is the intermediate time.
                let (t, t_next) = (-sigma.ln(), -sigma_next.ln());
                let sigma_s = (-(t + r * (t_next - t))).exp();
                let fac = 1.0 / (2.0 * r);

                let (sd, su) = ancestral_step(sigma, sigma_s, eta);
                let x_2 = &x * (sd / sigma) - &denoised * (t + sd.ln()).exp_m1();
                let x_2 = &x_2 + ctx.noise_like(&x_2)? * (s_noise * su);
                let denoised_2 = ctx.denoise(&x_2, sigma_s)?;

                let (sd, su) = ancestral_step(sigma, sigma_next, eta);
                let denoised_d = denoised * (1.0 - fac) + denoised_2 * fac;
                x = &x * (sd / sigma) - denoised_d * (t + sd.ln()).exp_m1();
                x = &x + ctx.noise_like(&x)? * (s_noise * su);
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}
