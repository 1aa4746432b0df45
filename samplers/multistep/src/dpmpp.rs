//! DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++"), in log-sigma time
//! `t = -ln(sigma)`, after k-diffusion `sample_dpmpp_2m`, `_2m_sde`, `_3m_sde`. The SDE
//! variants step in half-log-SNR time λ = ln(α / σ) as ComfyUI writes them, which is
//! k-diffusion's on a discrete model (α = 1, λ = −ln σ) and serves a rectified-flow one
//! (α = 1 − σ); 2M runs unchanged on a flow model's sigmas, as in ComfyUI.
//! The SDE variants draw i.i.d. noise from the step stream, not A1111's Brownian tree
//! (samplers/README.md).
use host_api::tch::Tensor;
use host_api::{Error, ModelSampling, Result, SampleCtx, Sampler};

/// `(eta, s_noise)`, both defaulting to 1 as in k-diffusion.
fn sde_options(ctx: &SampleCtx<'_>) -> Result<(f64, f64)> {
    Ok((
        ctx.options().number("eta", 1.0)?,
        ctx.options().number("s_noise", 1.0)?,
    ))
}

/// Adds an SDE step's fresh noise, `sigma_next sqrt(1 - e^(-2 eta h)) s_noise`; none at eta = 0
/// or s_noise = 0 (ComfyUI draws none there either).
fn add_noise(
    ctx: &mut SampleCtx<'_>,
    x: Tensor,
    sigma_next: f64,
    eta_h: f64,
    s_noise: f64,
) -> Result<Tensor> {
    if eta_h == 0.0 || s_noise == 0.0 {
        return Ok(x);
    }
    let scale = sigma_next * (-(-2.0 * eta_h).exp_m1()).sqrt() * s_noise;
    Ok(&x + ctx.noise_like(&x)? * scale)
}

/// One SDE step's times: `h = λ(sigma_next) − λ(sigma)` and `α_t = sigma_next e^λ(sigma_next)`
/// (1 on a discrete model).
fn sde_step(ms: &ModelSampling, sigma: f64, sigma_next: f64) -> (f64, f64) {
    let lambda_t = ms.half_log_snr(sigma_next);
    (
        lambda_t - ms.half_log_snr(sigma),
        sigma_next * lambda_t.exp(),
    )
}

/// DPM-Solver++(2M): second order from the previous step's denoised prediction.
pub struct DpmPp2m;

impl Sampler for DpmPp2m {
    const NAME: &'static str = "dpmpp_2m";
    const ALIASES: &'static [&'static str] = &["DPM++ 2M", "k_dpmpp_2m"];
    const DEFAULT_SCHEDULE: &'static str = "karras";
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let steps = sigmas.len().saturating_sub(1);
        let mut old_denoised: Option<Tensor> = None;
        for i in 0..steps {
            let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
            let denoised = ctx.denoise(&x, sigma)?;
            let h = sigma.ln() - sigma_next.ln();
            let blended = match &old_denoised {
                Some(old) if sigma_next > 0.0 => {
                    let r = (sigmas[i - 1].ln() - sigma.ln()) / h;
                    &denoised * (1.0 + 1.0 / (2.0 * r)) - old * (1.0 / (2.0 * r))
                }
                _ => denoised.shallow_clone(),
            };
            x = &x * (sigma_next / sigma) - blended * (-h).exp_m1();
            old_denoised = Some(denoised);
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

#[derive(Clone, Copy)]
enum SolverType {
    Midpoint,
    Heun,
}

/// DPM-Solver++(2M) SDE: the 2M update with noise injected at rate `eta`; `solver_type`
/// "midpoint" (default) or "heun" picks the second-order correction.
pub struct DpmPp2mSde;

impl Sampler for DpmPp2mSde {
    const NAME: &'static str = "dpmpp_2m_sde";
    const ALIASES: &'static [&'static str] = &["DPM++ 2M SDE", "k_dpmpp_2m_sde"];
    const OPTIONS: &'static [&'static str] = &["eta", "s_noise", "solver_type"];
    const DEFAULT_SCHEDULE: &'static str = "exponential";
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (eta, s_noise) = sde_options(ctx)?;
        let solver = match ctx.options().text("solver_type", "midpoint")? {
            "midpoint" => SolverType::Midpoint,
            "heun" => SolverType::Heun,
            other => {
                return Err(Error(format!(
                    "dpmpp_2m_sde: solver_type must be \"midpoint\" or \"heun\", got \"{other}\""
                )))
            }
        };
        let ms = ctx.model_sampling()?;
        let sigmas = ms.offset_first_sigma(sigmas)?;
        let steps = sigmas.len().saturating_sub(1);
        let mut last: Option<(Tensor, f64)> = None; // (denoised, h) of the previous step
        for i in 0..steps {
            let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
            let denoised = ctx.denoise(&x, sigma)?;
            if sigma_next == 0.0 {
                x = denoised;
                ctx.step(i, steps)?;
                break;
            }
            let (h, alpha_t) = sde_step(&ms, sigma, sigma_next);
            let eta_h = eta * h;
            let phi = -(-h - eta_h).exp_m1();
            x = &x * (sigma_next / sigma * (-eta_h).exp()) + &denoised * (alpha_t * phi);
            if let Some((old, h_last)) = &last {
                let weight = match solver {
                    SolverType::Heun => phi / (-h - eta_h) + 1.0,
                    SolverType::Midpoint => 0.5 * phi,
                };
                x = &x + (&denoised - old) * (alpha_t * weight * h / h_last);
            }
            x = add_noise(ctx, x, sigma_next, eta * h, s_noise)?;
            last = Some((denoised, h));
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// DPM-Solver++(3M) SDE: third order from the two previous denoised predictions.
pub struct DpmPp3mSde;

impl Sampler for DpmPp3mSde {
    const NAME: &'static str = "dpmpp_3m_sde";
    const ALIASES: &'static [&'static str] = &["DPM++ 3M SDE", "k_dpmpp_3m_sde"];
    const OPTIONS: &'static [&'static str] = &["eta", "s_noise"];
    const DISCARD_PENULTIMATE_SIGMA: bool = true;
    const DEFAULT_SCHEDULE: &'static str = "exponential";
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let (eta, s_noise) = sde_options(ctx)?;
        let ms = ctx.model_sampling()?;
        let sigmas = ms.offset_first_sigma(sigmas)?;
        let steps = sigmas.len().saturating_sub(1);
        // (denoised, h) of the previous two steps, newest first.
        let mut history: Vec<(Tensor, f64)> = Vec::with_capacity(2);
        for i in 0..steps {
            let (sigma, sigma_next) = (sigmas[i], sigmas[i + 1]);
            let denoised = ctx.denoise(&x, sigma)?;
            if sigma_next == 0.0 {
                x = denoised;
                ctx.step(i, steps)?;
                break;
            }
            let (h, alpha_t) = sde_step(&ms, sigma, sigma_next);
            let h_eta = h * (eta + 1.0);
            x = &x * (sigma_next / sigma * (-h * eta).exp())
                - &denoised * (alpha_t * (-h_eta).exp_m1());
            let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
            match history.as_slice() {
                [(d_1, h_1), (d_2, h_2), ..] => {
                    let (r0, r1) = (h_1 / h, h_2 / h);
                    let d1_0 = (&denoised - d_1) / r0;
                    let d1_1 = (d_1 - d_2) / r1;
                    let d1 = &d1_0 + (&d1_0 - &d1_1) * (r0 / (r0 + r1));
                    let d2 = (d1_0 - d1_1) / (r0 + r1);
                    let phi_3 = phi_2 / h_eta - 0.5;
                    x = &x + d1 * (alpha_t * phi_2) - d2 * (alpha_t * phi_3);
                }
                [(d_1, h_1)] => x = &x + (&denoised - d_1) * (alpha_t * phi_2 * h / h_1),
                [] => {}
            }
            x = add_noise(ctx, x, sigma_next, eta * h, s_noise)?;
            history.insert(0, (denoised, h));
            history.truncate(2);
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}
