//! Linear multistep, k-diffusion `sample_lms` (Adams–Bashforth in sigma, as in Karras et al.
//! 2022's LMS baseline).
use std::collections::VecDeque;

use host_api::sampler::to_d;
use host_api::tch::Tensor;
use host_api::{Result, SampleCtx, Sampler};

/// `∫ from t[i] to t[i+1]` of the Lagrange basis polynomial for node `t[i-j]` over the nodes
/// `t[i], …, t[i-order+1]` (k-diffusion `linear_multistep_coeff`, integrated exactly rather than
/// by `scipy.integrate.quad`). Expanded in `u = tau - t[i]` to keep the powers small.
fn coefficient(order: usize, t: &[f64], i: usize, j: usize) -> f64 {
    let mut poly = vec![1.0]; // coefficients of u^0, u^1, ...
    let mut denominator = 1.0;
    for k in (0..order).filter(|&k| k != j) {
        let root = t[i - k] - t[i];
        let mut next = vec![0.0; poly.len() + 1];
        for (p, c) in poly.iter().enumerate() {
            next[p + 1] += c;
            next[p] -= root * c;
        }
        poly = next;
        denominator *= t[i - j] - t[i - k];
    }
    let h = t[i + 1] - t[i];
    let integral: f64 = poly
        .iter()
        .enumerate()
        .map(|(p, c)| c * h.powi(p as i32 + 1) / (p + 1) as f64)
        .sum();
    integral / denominator
}

/// Linear multistep method of `order` (default 4) over the ODE derivatives.
pub struct Lms;

impl Sampler for Lms {
    const NAME: &'static str = "lms";
    const ALIASES: &'static [&'static str] = &["LMS", "k_lms"];
    const OPTIONS: &'static [&'static str] = &["order"];
    // k-diffusion's LMS on a flow model's sigmas (ComfyUI's own now ends with `x = denoised`).
    const SERVES_FLOW: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let order = crate::order_option(ctx, "lms", 4)?;
        let steps = sigmas.len().saturating_sub(1);
        let mut ds: VecDeque<Tensor> = VecDeque::with_capacity(order + 1);
        for i in 0..steps {
            let denoised = ctx.denoise(&x, sigmas[i])?;
            ds.push_back(to_d(&x, sigmas[i], &denoised));
            if ds.len() > order {
                ds.pop_front();
            }
            let cur_order = order.min(i + 1);
            for (j, d) in ds.iter().rev().enumerate() {
                x = &x + d * coefficient(cur_order, sigmas, i, j);
            }
            ctx.step(i, steps)?;
        }
        Ok(x)
    }
}
