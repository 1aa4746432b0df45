//! DPM-Solver++ SDE (Lu et al. 2022, "DPM-Solver++"), k-diffusion `sample_dpmpp_sde`, in
//! half-log-SNR time as ComfyUI writes it so it also serves a rectified-flow model.
use host_api::sampler::ancestral_step;
use host_api::tch::Tensor;
use host_api::{Error, Result, SampleCtx, Sampler};

/// Stochastic DPM-Solver++: two ancestral half-steps per step, the second from a blend of both
/// denoised predictions; `r` places the intermediate point in log-SNR time λ = ln(α / σ)
/// (a discrete model's −ln σ, where α = 1: k-diffusion's formula; a flow model's
/// ln((1 − σ) / σ), ComfyUI's, whose first sigma of 1 moves to just below it).
/// Noise comes i.i.d. from the step stream, not from A1111's Brownian tree (samplers/README.md).
pub struct DpmPpSde;

impl Sampler for DpmPpSde {
    const NAME: &'static str = "dpmpp_sde";
    const ALIASES: &'static [&'static str] = &["DPM++ SDE", "k_dpmpp_sde"];
    const OPTIONS: &'static [&'static str] = &["eta", "s_noise", "r"];
    const DEFAULT_SCHEDULE: &'static str = "karras";
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let eta = ctx.options().number("eta", 1.0)?;
        let s_noise = ctx.options().number("s_noise", 1.0)?;
        let r = ctx.options().number("r", 0.5)?;
        if !(r > 0.0 && r <= 1.0) {
            return Err(Error(format!(
                "dpmpp_sde: option `r` must be in (0, 1], got {r}"
            )));
        }
        let ms = ctx.model_sampling()?;
        let sigmas = ms.offset_first_sigma(sigmas)?;
        let noisy = eta > 0.0 && s_noise > 0.0;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
            let denoised = ctx.denoise(&x, sigma)?;
            if sigma_next == 0.0 {
                x = denoised;
            } else {
                // λ_s1 = λ_s + r h is the intermediate time; α = σ e^λ.
                let (lambda_s, lambda_t) = (ms.half_log_snr(sigma), ms.half_log_snr(sigma_next));
                let lambda_s1 = lambda_s + r * (lambda_t - lambda_s);
                let sigma_s1 = ms.sigma_of_half_log_snr(lambda_s1);
                let fac = 1.0 / (2.0 * r);
                let alpha_s = sigma * lambda_s.exp();
                let alpha_s1 = sigma_s1 * lambda_s1.exp();
                let alpha_t = sigma_next * lambda_t.exp();

                let (sd, su) = ancestral_step((-lambda_s).exp(), (-lambda_s1).exp(), eta);
                let h = -sd.ln() - lambda_s;
                let mut x_2 =
                    &x * (alpha_s1 / alpha_s * (-h).exp()) - &denoised * (alpha_s1 * (-h).exp_m1());
                if noisy {
                    x_2 = &x_2 + ctx.noise_like(&x_2)? * (alpha_s1 * s_noise * su);
                }
                let denoised_2 = ctx.denoise(&x_2, sigma_s1)?;

                let (sd, su) = ancestral_step((-lambda_s).exp(), (-lambda_t).exp(), eta);
                let h = -sd.ln() - lambda_s;
                let denoised_d = denoised * (1.0 - fac) + denoised_2 * fac;
                x = &x * (alpha_t / alpha_s * (-h).exp()) - denoised_d * (alpha_t * (-h).exp_m1());
                if noisy {
                    x = &x + ctx.noise_like(&x)? * (alpha_t * s_noise * su);
                }
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}
