//! PLMS, pseudo linear multistep (Liu et al. 2022, "Pseudo Numerical Methods for Diffusion
//! Models on Manifolds"), as A1111's CompVis implementation runs it
//! (`sd_samplers_timesteps_impl.plms` with `CompVisSampler.sample` / `sample_img2img`).
//!
//! It works in VP space (`x_vp = x / sqrt(1 + σ²)`) on the noise levels it is given, which the
//! default `ddim_uniform` schedule puts on A1111's timestep grid; ᾱ = 1 / (1 + σ²) and the
//! model's ε = (x − denoised) / σ at each level. A1111's quirks are kept, so images match:
//! * a pass from pure noise (the host's `from_noise` flag) starts from the unscaled noise,
//!   `x_vp = noise`, at the first level;
//! * any other pass (hires, img2img) starts at `sigmas[0]` as the host noised it and, as
//!   A1111's `sample_img2img` slices `timesteps[:t_enc]`, takes its first step from the level
//!   below;
//! * the result is the VP latent at the last nonzero level (A1111 stops at timestep 1, a
//!   trailing sigma 0 is not stepped to).
use host_api::tch::Tensor;
use host_api::{Result, SampleCtx, Sampler};

/// The host's flag on a pass that starts from pure noise (no image under it).
pub const FROM_NOISE: &str = "from_noise";

fn alpha_bar(sigma: f64) -> f64 {
    1.0 / (1.0 + sigma * sigma)
}

/// A1111's `get_x_prev_and_pred_x0`: the VP sample at level `sigma_prev` from `x` at `sigma`
/// with the noise estimate `e_t`.
fn x_prev(x: &Tensor, e_t: &Tensor, sigma: f64, sigma_prev: f64) -> Tensor {
    let (a_t, a_prev) = (alpha_bar(sigma), alpha_bar(sigma_prev));
    let pred_x0 = (x - e_t * (1.0 - a_t).sqrt()) / a_t.sqrt();
    pred_x0 * a_prev.sqrt() + e_t * (1.0 - a_prev).sqrt()
}

pub struct Plms;

impl Plms {
    /// The model's ε for the VP sample `x_vp` at `sigma` (CFG applied by the host, which is
    /// A1111's CFG on ε: the two differ by the same affine map).
    fn eps(ctx: &mut SampleCtx<'_>, x_vp: &Tensor, sigma: f64) -> Result<Tensor> {
        let x = x_vp * (1.0 + sigma * sigma).sqrt();
        let denoised = ctx.denoise(&x, sigma)?;
        Ok((x - denoised) / sigma)
    }
}

impl Sampler for Plms {
    const NAME: &'static str = "plms";
    const ALIASES: &'static [&'static str] = &["PLMS"];
    const DEFAULT_SCHEDULE: &'static str = "ddim_uniform";

    fn sample(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let levels: Vec<f64> = sigmas.iter().copied().take_while(|s| *s > 0.0).collect();
        let Some(&start) = levels.first() else {
            return Ok(x); // nothing to denoise (a zero-strength pass)
        };
        let from_noise = ctx.options().flag(FROM_NOISE, false)?;
        let (mut x, levels) = match from_noise {
            true => (x / start, &levels[..]),
            false => (x * alpha_bar(start).sqrt(), &levels[1..]),
        };
        let steps = levels.len().saturating_sub(1);
        let mut old_eps: Vec<Tensor> = Vec::with_capacity(4);
        for i in 0..steps {
            let (sigma, sigma_next) = (levels[i], levels[i + 1]);
            let e_t = Self::eps(ctx, &x, sigma)?;
            let e_prime = match old_eps.len() {
                // Pseudo improved Euler (2nd order): a second call at the next level.
                0 => {
                    let x_next = x_prev(&x, &e_t, sigma, sigma_next);
                    let e_next = Self::eps(ctx, &x_next, sigma_next)?;
                    (&e_t + e_next) / 2.0
                }
                // Adams–Bashforth of order 2, 3 and 4 over the earlier ε.
                1 => (&e_t * 3.0 - &old_eps[0]) / 2.0,
                2 => (&e_t * 23.0 - &old_eps[1] * 16.0 + &old_eps[0] * 5.0) / 12.0,
                _ => {
                    (&e_t * 55.0 - &old_eps[2] * 59.0 + &old_eps[1] * 37.0 - &old_eps[0] * 9.0)
                        / 24.0
                }
            };
            x = x_prev(&x, &e_prime, sigma, sigma_next);
            old_eps.push(e_t);
            if old_eps.len() >= 4 {
                drop(old_eps.remove(0));
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}
