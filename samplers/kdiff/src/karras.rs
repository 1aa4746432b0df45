//! Karras et al. 2022 ("Elucidating the Design Space of Diffusion-Based Generative Models"),
//! Algorithm 2: ODE steps with optional churn (k-diffusion `sample_euler`, `sample_heun`,
//! `sample_dpm_2`).
use host_api::sampler::to_d;
use host_api::tch::Tensor;
use host_api::{Result, SampleCtx, Sampler};

const CHURN_OPTIONS: &[&str] = &["s_churn", "s_tmin", "s_tmax", "s_noise"];

/// The churn of Algorithm 2: noise is added to raise `sigma` to `sigma_hat = sigma (1 + gamma)`.
struct Churn {
    s_churn: f64,
    s_tmin: f64,
    s_tmax: f64,
    s_noise: f64,
}

impl Churn {
    fn from_options(ctx: &SampleCtx<'_>) -> Result<Self> {
        let options = ctx.options();
        // A1111 reads s_tmax = 0 as "no upper bound".
        let s_tmax = options.number("s_tmax", 0.0)?;
        Ok(Self {
            s_churn: options.number("s_churn", 0.0)?,
            s_tmin: options.number("s_tmin", 0.0)?,
            s_tmax: if s_tmax > 0.0 { s_tmax } else { f64::INFINITY },
            s_noise: options.number("s_noise", 1.0)?,
        })
    }

    /// `(x_hat, sigma_hat)`. k-diffusion draws `eps` every step, even where gamma is 0, so the
    /// step stream advances as in A1111; without churn nothing is drawn (it would go unused).
    fn apply(
        &self,
        ctx: &mut SampleCtx<'_>,
        x: Tensor,
        sigma: f64,
        steps: usize,
    ) -> Result<(Tensor, f64)> {
        if self.s_churn <= 0.0 {
            return Ok((x, sigma));
        }
        let gamma = if self.s_tmin <= sigma && sigma <= self.s_tmax {
            (self.s_churn / steps as f64).min(std::f64::consts::SQRT_2 - 1.0)
        } else {
            0.0
        };
        let eps = ctx.noise_like(&x)? * self.s_noise;
        let sigma_hat = sigma * (gamma + 1.0);
        if gamma > 0.0 {
            return Ok((
                x + eps * (sigma_hat.powi(2) - sigma.powi(2)).sqrt(),
                sigma_hat,
            ));
        }
        Ok((x, sigma_hat))
    }
}

/// Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 2), k-diffusion
/// `sample_euler`.
pub struct Euler;

impl Sampler for Euler {
    const NAME: &'static str = "euler";
    const ALIASES: &'static [&'static str] = &["Euler", "k_euler"];
    const OPTIONS: &'static [&'static str] = CHURN_OPTIONS;
    // ComfyUI runs it unchanged on a flow model's sigmas (diffusers' FlowMatchEuler step).
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let churn = Churn::from_options(ctx)?;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let (x_hat, sigma_hat) = churn.apply(ctx, x, sigmas[i], steps)?;
            let denoised = ctx.denoise(&x_hat, sigma_hat)?;
            x = &x_hat + to_d(&x_hat, sigma_hat, &denoised) * (sigmas[i + 1] - sigma_hat);
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// Heun's second-order method (Karras et al. 2022, Algorithm 2), k-diffusion `sample_heun`;
/// the last step, to sigma 0, is an Euler step.
pub struct Heun;

impl Sampler for Heun {
    const NAME: &'static str = "heun";
    const ALIASES: &'static [&'static str] = &["Heun", "k_heun"];
    const OPTIONS: &'static [&'static str] = CHURN_OPTIONS;
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let churn = Churn::from_options(ctx)?;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let (x_hat, sigma_hat) = churn.apply(ctx, x, sigmas[i], steps)?;
            let sigma_next = sigmas[i + 1];
            let d = to_d(&x_hat, sigma_hat, &ctx.denoise(&x_hat, sigma_hat)?);
            let dt = sigma_next - sigma_hat;
            let x_2 = &x_hat + &d * dt;
            x = if sigma_next == 0.0 {
                x_2
            } else {
                let d_2 = to_d(&x_2, sigma_next, &ctx.denoise(&x_2, sigma_next)?);
                &x_hat + (d + d_2) * (dt / 2.0)
            };
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// DPM-Solver-2 (Lu et al. 2022, "DPM-Solver") midpoint steps in log-sigma inside Karras et
/// al.'s Algorithm 2, k-diffusion `sample_dpm_2`; the last step, to sigma 0, is an Euler step.
pub struct Dpm2;

impl Sampler for Dpm2 {
    const NAME: &'static str = "dpm_2";
    const ALIASES: &'static [&'static str] = &["DPM2", "k_dpm_2"];
    const OPTIONS: &'static [&'static str] = CHURN_OPTIONS;
    const DISCARD_PENULTIMATE_SIGMA: bool = true;
    const DEFAULT_SCHEDULE: &'static str = "karras";
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let churn = Churn::from_options(ctx)?;
        let steps = sigmas.len().saturating_sub(1);
        for i in 0..steps {
            let (x_hat, sigma_hat) = churn.apply(ctx, x, sigmas[i], steps)?;
            let sigma_next = sigmas[i + 1];
            let d = to_d(&x_hat, sigma_hat, &ctx.denoise(&x_hat, sigma_hat)?);
            x = if sigma_next == 0.0 {
                &x_hat + d * (sigma_next - sigma_hat)
            } else {
                let sigma_mid = log_midpoint(sigma_hat, sigma_next);
                let x_2 = &x_hat + d * (sigma_mid - sigma_hat);
                let d_2 = to_d(&x_2, sigma_mid, &ctx.denoise(&x_2, sigma_mid)?);
                &x_hat + d_2 * (sigma_next - sigma_hat)
            };
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}

/// `exp(lerp(ln a, ln b, 0.5))`, DPM-Solver-2's intermediate noise level.
pub(crate) fn log_midpoint(a: f64, b: f64) -> f64 {
    (a.ln() + 0.5 * (b.ln() - a.ln())).exp()
}
