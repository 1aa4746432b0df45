//! The model's discrete noise schedule and the sigma ↔ timestep maps of k-diffusion's
//! `DiscreteSchedule` (k_diffusion/external.py), without quantising. Computed in f64.
use anyhow::{anyhow, bail, Result};
use tch::Kind;

use host_api::ModelSigmas;

use crate::checkpoint::Checkpoint;

/// How betas grow over the training timesteps (diffusers `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BetaSchedule {
    /// Linear in sqrt(beta): SD's `scaled_linear`.
    ScaledLinear,
    Linear,
}

/// Training noise schedule parameters (diffusers `scheduler_config.json`).
#[derive(Debug, Clone, PartialEq)]
pub struct BetaConfig {
    pub beta_start: f64,
    pub beta_end: f64,
    pub schedule: BetaSchedule,
    pub num_train_timesteps: usize,
}

impl Default for BetaConfig {
    /// SD 1.x (`linear_start 0.00085, linear_end 0.012`, 1000 steps, scaled_linear).
    fn default() -> Self {
        Self {
            beta_start: 0.00085,
            beta_end: 0.012,
            schedule: BetaSchedule::ScaledLinear,
            num_train_timesteps: 1000,
        }
    }
}

impl BetaConfig {
    fn from_json(json: &serde_json::Value) -> Result<Self> {
        let d = Self::default();
        let schedule = match json.get("beta_schedule").and_then(|v| v.as_str()).unwrap_or("scaled_linear") {
            "scaled_linear" => BetaSchedule::ScaledLinear,
            "linear" => BetaSchedule::Linear,
            other => bail!("scheduler/scheduler_config.json: beta_schedule `{other}` is not supported (use scaled_linear or linear)"),
        };
        let num = |k: &str, default: f64, ok: &dyn Fn(f64) -> bool, range: &str| -> Result<f64> {
            match json.get(k) {
                None => Ok(default),
                Some(v) => v.as_f64().filter(|x| x.is_finite() && ok(*x)).ok_or_else(|| {
                    anyhow!("scheduler/scheduler_config.json: {k} {v} must be {range} — fix it or remove the key")
                }),
            }
        };
        let beta = |x: f64| x > 0.0 && x < 1.0;
        let steps = |x: f64| x.fract() == 0.0 && (2.0..=100_000.0).contains(&x);
        Ok(Self {
            beta_start: num("beta_start", d.beta_start, &beta, "in (0, 1)")?,
            beta_end: num("beta_end", d.beta_end, &beta, "in (0, 1)")?,
            schedule,
            num_train_timesteps: num(
                "num_train_timesteps",
                d.num_train_timesteps as f64,
                &steps,
                "a whole number from 2 to 100000",
            )? as usize,
        })
    }

    /// ᾱ_t computed in f64 and rounded to f32, as LDM stores its `alphas_cumprod` buffer, so a
    /// diffusers folder and its single-file twin get the same sigma table.
    pub fn alphas_cumprod(&self) -> Vec<f64> {
        let n = self.num_train_timesteps;
        let lerp = |a: f64, b: f64, i: usize| {
            if n > 1 {
                a + (b - a) * i as f64 / (n - 1) as f64
            } else {
                a
            }
        };
        let betas = (0..n).map(|i| match self.schedule {
            BetaSchedule::ScaledLinear => {
                lerp(self.beta_start.sqrt(), self.beta_end.sqrt(), i).powi(2)
            }
            BetaSchedule::Linear => lerp(self.beta_start, self.beta_end, i),
        });
        betas
            .scan(1.0, |acc, beta| {
                *acc *= 1.0 - beta;
                Some(f64::from(*acc as f32))
            })
            .collect()
    }
}

/// Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed" (2023), Alg. 1:
/// shift and scale sqrt(ᾱ) so the last timestep has zero SNR; its ᾱ is then set to the tiny
/// value A1111 (`rescale_zero_terminal_snr_abar`) and ComfyUI use, keeping sigma finite.
pub fn rescale_zero_terminal_snr(alphas_cumprod: &[f64]) -> Vec<f64> {
    let roots: Vec<f64> = alphas_cumprod.iter().map(|a| a.sqrt()).collect();
    let (first, last) = (roots[0], roots[roots.len() - 1]);
    let mut out: Vec<f64> = roots
        .iter()
        .map(|r| ((r - last) * first / (first - last)).powi(2))
        .collect();
    if let Some(end) = out.last_mut() {
        *end = 4.8973451890853435e-08;
    }
    out
}

/// sigma_t = sqrt((1 - ᾱ_t) / ᾱ_t) for each training timestep, ascending.
#[derive(Debug, Clone)]
pub struct DiscreteSchedule(ModelSigmas);

impl DiscreteSchedule {
    pub fn from_alphas_cumprod(alphas_cumprod: &[f64]) -> Result<Self> {
        if alphas_cumprod.len() < 2 || alphas_cumprod.iter().any(|a| !(*a > 0.0 && *a <= 1.0)) {
            bail!("alphas_cumprod must hold at least 2 values in (0, 1]");
        }
        Ok(Self(
            ModelSigmas::from_alphas_cumprod(alphas_cumprod).map_err(|e| anyhow!("{e}"))?,
        ))
    }

    /// The checkpoint's `alphas_cumprod` (single files), else the diffusers scheduler's
    /// betas, else SD's defaults (SDXL files carry none: sgm computes the same schedule);
    /// rescaled to zero terminal SNR when a single file has a `ztsnr` key (v-pred SDXL
    /// finetunes; A1111 and ComfyUI do the same).
    pub fn from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        let shown = ckpt.path().display();
        let mut alphas = if ckpt.contains("alphas_cumprod") {
            let t = ckpt
                .read("alphas_cumprod")?
                .to_kind(Kind::Double)
                .flatten(0, -1);
            Vec::<f64>::try_from(&t)
                .map_err(|e| anyhow!("{shown}: cannot read alphas_cumprod ({e})"))?
        } else {
            let betas = match &ckpt.configs().scheduler {
                Some(json) => BetaConfig::from_json(json)?,
                None => BetaConfig::default(),
            };
            betas.alphas_cumprod()
        };
        let zero_terminal = ckpt.raw_contains("ztsnr")
            || ckpt
                .configs()
                .scheduler
                .as_ref()
                .and_then(|j| j.get("rescale_betas_zero_snr")?.as_bool())
                .unwrap_or(false);
        if zero_terminal {
            alphas = rescale_zero_terminal_snr(&alphas);
        }
        Self::from_alphas_cumprod(&alphas)
            .map_err(|e| anyhow!("{shown}: {e} — the file is damaged"))
    }

    /// Ascending model sigmas, one per training timestep.
    pub fn sigmas(&self) -> &[f64] {
        self.0.table()
    }

    /// Fractional timestep of `sigma` (k-diffusion, `quantize=False`); shared with the host.
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        self.0.sigma_to_t(sigma)
    }

    /// Sigma at a (fractional) timestep, interpolated in log-sigma.
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        self.0.t_to_sigma(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd1() -> DiscreteSchedule {
        DiscreteSchedule::from_alphas_cumprod(&BetaConfig::default().alphas_cumprod()).unwrap()
    }

    #[test]
    fn sd1_sigma_range_matches_k_diffusion() {
        let s = sd1();
        assert!(
            (s.sigmas()[0] - 0.029167532920837402).abs() < 1e-6,
            "{}",
            s.sigmas()[0]
        );
        assert!(
            (s.sigmas()[999] - 14.614642143249512).abs() < 1e-5,
            "{}",
            s.sigmas()[999]
        );
    }

    #[test]
    fn sigma_to_t_inverts_t_to_sigma_at_fractional_timesteps() {
        let s = sd1();
        for t in [0.0, 0.25, 17.5, 500.123, 998.9, 999.0] {
            let back = s.sigma_to_t(s.t_to_sigma(t));
            assert!((back - t).abs() < 1e-9, "{t} -> {back}");
        }
    }

    #[test]
    fn zero_terminal_snr_rescale_ends_at_a1111s_sigma_max() {
        let rescaled = rescale_zero_terminal_snr(&BetaConfig::default().alphas_cumprod());
        let s = DiscreteSchedule::from_alphas_cumprod(&rescaled).unwrap();
        // ComfyUI / A1111: sigma_max ≈ 4518.76 once the last ᾱ is 4.897e-8.
        assert!(
            (s.sigmas()[999] - 4518.76).abs() < 0.01,
            "{}",
            s.sigmas()[999]
        );
        assert!((s.sigmas()[0] - 0.029167532920837402).abs() < 1e-6);
    }

    #[test]
    fn sigma_to_t_clamps_outside_the_table() {
        let s = sd1();
        assert_eq!(s.sigma_to_t(1e-4), 0.0);
        assert_eq!(s.sigma_to_t(100.0), 999.0);
    }
}
