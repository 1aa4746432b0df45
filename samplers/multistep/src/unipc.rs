//! UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling
//! of Diffusion Models"): multistep, data prediction, B(h) variants bh1 / bh2, as ComfyUI
//! `comfy/extra_samplers/uni_pc.py` (`sample_unipc`) runs it on k-diffusion sigmas. Written in
//! sigma space, where lambda = -ln(sigma) and the VP scalings of the original cancel.
use std::collections::VecDeque;

use host_api::tch::Tensor;
use host_api::{Error, Result, SampleCtx, Sampler};

#[derive(Clone, Copy)]
enum Variant {
    Bh1,
    Bh2,
}

/// UniPC with the corrector after every step but the last; `order` (default 3) is capped at
/// `steps - 1` and lowered over the first and last steps, as ComfyUI does.
pub struct UniPc;

impl Sampler for UniPc {
    const NAME: &'static str = "uni_pc";
    const ALIASES: &'static [&'static str] = &["UniPC", "unipc"];
    const OPTIONS: &'static [&'static str] = &["variant", "order"];
    const DISCARD_PENULTIMATE_SIGMA: bool = true;

    fn sample(ctx: &mut SampleCtx<'_>, mut x: Tensor, sigmas: &[f64]) -> Result<Tensor> {
        let variant = match ctx.options().text("variant", "bh1")? {
            "bh1" => Variant::Bh1,
            "bh2" => Variant::Bh2,
            other => {
                return Err(Error(format!(
                    "uni_pc: variant must be \"bh1\" or \"bh2\", got \"{other}\""
                )))
            }
        };
        let max_order = crate::order_option(ctx, "uni_pc", 3)?;
        let mut sigmas = sigmas.to_vec();
        // ComfyUI ends at sigma 0.001 instead of 0, where lambda would be infinite.
        if let Some(last) = sigmas.last_mut().filter(|s| **s == 0.0) {
            *last = 0.001;
        }
        let steps = sigmas.len().saturating_sub(1);
        if steps == 0 {
            return Ok(x);
        }
        let order = max_order.min(steps - 1).max(1);
        let mut history = VecDeque::from([(-sigmas[0].ln(), ctx.denoise(&x, sigmas[0])?)]);
        for k in 1..=steps {
            let step_order = if k < order {
                k
            } else {
                order.min(steps + 1 - k)
            };
            let update = Update::new(&x, &history, step_order, sigmas[k - 1], sigmas[k], variant)?;
            x = if k < steps {
                let model_t = ctx.denoise(&update.predict(), sigmas[k])?;
                let corrected = update.correct(&model_t);
                history.push_back((-sigmas[k].ln(), model_t));
                if history.len() > order {
                    history.pop_front();
                }
                corrected
            } else {
                update.predict()
            };
            ctx.step(k - 1, steps)?;
        }
        Ok(x)
    }
}

/// One step from `sigma_s` (the newest history entry) to `sigma_t` (`multistep_uni_pc_bh_update`).
struct Update {
    /// `(sigma_t / sigma_s) x - (e^-h - 1) m0`, the first-order update.
    base: Tensor,
    b_h: f64,
    m0: Tensor,
    /// `(m_i - m0) / r_i` for the older entries, newest first.
    d1s: Vec<Tensor>,
    rhos_p: Vec<f64>,
    rhos_c: Vec<f64>,
}

impl Update {
    fn new(
        x: &Tensor,
        history: &VecDeque<(f64, Tensor)>,
        order: usize,
        sigma_s: f64,
        sigma_t: f64,
        variant: Variant,
    ) -> Result<Self> {
        let Some((lambda_s, m0)) = history.back() else {
            return Err(Error::new("uni_pc: no denoised prediction to step from"));
        };
        let h = -sigma_t.ln() - lambda_s;
        let mut rks = Vec::with_capacity(order);
        let mut d1s = Vec::with_capacity(order);
        for (lambda_i, m_i) in history.iter().rev().skip(1).take(order - 1) {
            let rk = (lambda_i - lambda_s) / h;
            rks.push(rk);
            d1s.push((m_i - m0) / rk);
        }
        rks.push(1.0);
        let hh = -h;
        let b_h = match variant {
            Variant::Bh1 => hh,
            Variant::Bh2 => hh.exp_m1(),
        };
        // R[p][k] = r_k^p and b[p] = p! h phi_{p+1}(h) / B(h), p = 0..order.
        let (mut r, mut b) = (Vec::with_capacity(order), Vec::with_capacity(order));
        let mut h_phi_k = hh.exp_m1() / hh - 1.0;
        let mut factorial = 1.0;
        for p in 0..order {
            r.push(rks.iter().map(|rk| rk.powi(p as i32)).collect::<Vec<_>>());
            b.push(h_phi_k * factorial / b_h);
            factorial *= (p + 2) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }
        let rhos_p = match order {
            1 => vec![],
            2 => vec![0.5],
            _ => solve(
                r[..order - 1]
                    .iter()
                    .map(|row| row[..order - 1].to_vec())
                    .collect(),
                b[..order - 1].to_vec(),
            )?,
        };
        let rhos_c = if order == 1 { vec![0.5] } else { solve(r, b)? };
        Ok(Self {
            base: x * (sigma_t / sigma_s) - m0 * hh.exp_m1(),
            b_h,
            m0: m0.shallow_clone(),
            d1s,
            rhos_p,
            rhos_c,
        })
    }

    fn weighted(&self, rhos: &[f64]) -> Tensor {
        self.d1s
            .iter()
            .zip(rhos)
            .fold(self.m0.zeros_like(), |acc, (d, rho)| acc + d * *rho)
    }

    fn predict(&self) -> Tensor {
        &self.base - self.weighted(&self.rhos_p) * self.b_h
    }

    fn correct(&self, model_t: &Tensor) -> Tensor {
        let rho_t = self.rhos_c.last().copied().unwrap_or(0.5);
        let residual = self.weighted(&self.rhos_c) + (model_t - &self.m0) * rho_t;
        &self.base - residual * self.b_h
    }
}

/// Solves `a x = b` by Gaussian elimination with partial pivoting (systems of size `order`).
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        if a[pivot][col].abs() < 1e-300 || !a[pivot][col].is_finite() {
            return Err(Error::new(
                "uni_pc: singular coefficient system (repeated sigmas?)",
            ));
        }
        a.swap(col, pivot);
        b.swap(col, pivot);
        let pivot_row = a[col].clone();
        for row in col + 1..n {
            let f = a[row][col] / pivot_row[col];
            for (v, p) in a[row].iter_mut().zip(&pivot_row).skip(col) {
                *v -= f * p;
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| a[row][k] * x[k]).sum();
        x[row] = (b[row] - tail) / a[row][row];
    }
    Ok(x)
}
