//! The model's noise levels, as k-diffusion's `DiscreteSchedule` (and, for a rectified-flow
//! model, ComfyUI's `ModelSamplingDiscreteFlow`) sees them. Schedules and backends share these
//! conversions so sigma ↔ timestep agree everywhere.

/// Ascending sigma table of a model (a discrete-time model: `sqrt((1 - ᾱ) / ᾱ)` per training
/// step; a flow model: its shifted sigma at `t = i / N`, i = 1..=N) and how a timestep maps to
/// a sigma.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSigmas {
    table: Vec<f64>,
    log_table: Vec<f64>,
    flow: Option<FlowTime>,
}

/// 1.5.0: a rectified-flow model's time: `sigma(t) = time_snr_shift(shift, t / multiplier)`,
/// `timestep(sigma) = sigma · multiplier` (ComfyUI `ModelSamplingDiscreteFlow`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FlowTime {
    pub shift: f64,
    pub multiplier: f64,
}

/// SD3's timestep shift (Esser et al. 2024, eq. 23; ComfyUI `time_snr_shift`, diffusers
/// `FlowMatchEulerDiscreteScheduler`): `shift · t / (1 + (shift − 1) · t)`. Flux's
/// `exp(mu) / (exp(mu) + (1 / t − 1))` is this with `shift = exp(mu)`.
pub fn time_snr_shift(shift: f64, t: f64) -> f64 {
    if shift == 1.0 {
        return t;
    }
    shift * t / (1.0 + (shift - 1.0) * t)
}

impl ModelSigmas {
    /// `table` must be ascending and non-empty.
    pub fn new(table: Vec<f64>) -> crate::Result<Self> {
        // `!(a < b)`, not `a >= b`: a NaN must fail too.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let unordered = table.windows(2).any(|w| !(w[0] < w[1]));
        if table.len() < 2 || unordered || table[0] <= 0.0 {
            return Err(crate::Error::new(
                "model sigma table must be positive and strictly ascending",
            ));
        }
        let log_table = table.iter().map(|s| s.ln()).collect();
        Ok(Self {
            table,
            log_table,
            flow: None,
        })
    }

    /// 1.5.0: a rectified-flow model's table, `time_snr_shift(shift, i / timesteps)` for
    /// i = 1..=timesteps (ComfyUI `ModelSamplingDiscreteFlow.set_parameters`: 1000 steps and
    /// multiplier 1000 for SD3; `ModelSamplingFlux`: 10000 steps, multiplier 1).
    pub fn flow(shift: f64, timesteps: usize, multiplier: f64) -> crate::Result<Self> {
        if !(shift > 0.0 && shift.is_finite() && multiplier > 0.0 && multiplier.is_finite()) {
            return Err(crate::Error(format!(
                "flow model sampling needs a positive shift and multiplier, got shift {shift}, multiplier {multiplier}"
            )));
        }
        let table = (1..=timesteps)
            .map(|i| time_snr_shift(shift, i as f64 / timesteps as f64))
            .collect();
        Self::flow_table(table, shift, multiplier)
    }

    /// 1.5.0: a rectified-flow model with its own ascending `table` (sigmas in (0, 1]).
    pub fn flow_table(table: Vec<f64>, shift: f64, multiplier: f64) -> crate::Result<Self> {
        let mut sigmas = Self::new(table)?;
        if sigmas.sigma_max() > 1.0 {
            return Err(crate::Error::new(
                "a flow model's sigmas must lie in (0, 1]",
            ));
        }
        sigmas.flow = Some(FlowTime { shift, multiplier });
        Ok(sigmas)
    }

    /// The flow model's time, `None` for a discrete-time model.
    pub fn flow_time(&self) -> Option<FlowTime> {
        self.flow
    }

    /// From `alphas_cumprod` (ᾱ per training step).
    pub fn from_alphas_cumprod(alphas_cumprod: &[f64]) -> crate::Result<Self> {
        Self::new(
            alphas_cumprod
                .iter()
                .map(|a| ((1.0 - a) / a).sqrt())
                .collect(),
        )
    }

    pub fn table(&self) -> &[f64] {
        &self.table
    }

    pub fn sigma_min(&self) -> f64 {
        self.table[0]
    }

    pub fn sigma_max(&self) -> f64 {
        self.table[self.table.len() - 1]
    }

    /// Fractional timestep by linear interpolation in log-sigma, unquantised
    /// (k-diffusion `DiscreteSchedule.sigma_to_t`, quantize=False); a flow model's
    /// `sigma · multiplier`, the timestep the model is conditioned on, which — as ComfyUI's
    /// `timestep` — [`Self::t_to_sigma`] does not invert when `shift ≠ 1` (it shifts a
    /// uniform time; ComfyUI's `normal` schedule and diffusers' default flow sigmas both
    /// come from this pair).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
        if let Some(flow) = self.flow {
            return sigma * flow.multiplier;
        }
        let log_sigma = sigma.ln();
        let last = self.log_table.len() - 2;
        let low = self
            .log_table
            .iter()
            .take_while(|&&l| l <= log_sigma)
            .count()
            .saturating_sub(1)
            .min(last);
        let (l, h) = (self.log_table[low], self.log_table[low + 1]);
        let w = ((l - log_sigma) / (l - h)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }

    /// Sigma at a fractional timestep, interpolating log-sigma (k-diffusion `t_to_sigma`); a
    /// flow model's `time_snr_shift(shift, t / multiplier)`.
    pub fn t_to_sigma(&self, t: f64) -> f64 {
        if let Some(flow) = self.flow {
            return time_snr_shift(flow.shift, t / flow.multiplier);
        }
        let t = t.clamp(0.0, (self.table.len() - 1) as f64);
        let low = t.floor() as usize;
        let high = t.ceil() as usize;
        let w = t - low as f64;
        ((1.0 - w) * self.log_table[low] + w * self.log_table[high]).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd_table() -> ModelSigmas {
        let (b0, b1) = (0.00085f64.sqrt(), 0.012f64.sqrt());
        let mut ac = 1.0;
        let alphas: Vec<f64> = (0..1000)
            .map(|i| {
                let beta = (b0 + (b1 - b0) * i as f64 / 999.0).powi(2);
                ac *= 1.0 - beta;
                ac
            })
            .collect();
        ModelSigmas::from_alphas_cumprod(&alphas).unwrap()
    }

    #[test]
    fn sigma_to_t_inverts_t_to_sigma_at_fractional_steps() {
        let s = sd_table();
        for t in [0.0, 0.25, 31.5, 617.25, 998.9, 999.0] {
            assert!((s.sigma_to_t(s.t_to_sigma(t)) - t).abs() < 1e-9, "t={t}");
        }
    }

    #[test]
    fn flow_timesteps_are_sigma_times_the_multiplier_and_back() {
        let s = ModelSigmas::flow(3.0, 1000, 1000.0).unwrap();
        assert_eq!(s.table().len(), 1000);
        assert_eq!(s.sigma_max(), 1.0);
        // shift 3 at t = 0.001: 0.003 / 1.002.
        assert!((s.sigma_min() - 0.003 / 1.002).abs() < 1e-15);
        for t in [0.0, 2.5, 500.0, 999.0, 1000.0] {
            let sigma = s.t_to_sigma(t);
            let u = t / 1000.0;
            assert!((sigma - 3.0 * u / (1.0 + 2.0 * u)).abs() < 1e-15, "t={t}");
        }
        for sigma in [0.01, 0.5, 1.0] {
            assert!((s.sigma_to_t(sigma) - sigma * 1000.0).abs() < 1e-12);
        }
        // The table's entries are the sigmas of the timesteps 1..=1000; as in ComfyUI,
        // `sigma_to_t` does not undo the shift (the model's timestep is sigma × 1000).
        assert!(s.t_to_sigma(s.sigma_to_t(0.5)) > 0.5);
        assert!((s.t_to_sigma(418.0) - s.table()[417]).abs() < 1e-15);
        assert!(ModelSigmas::flow(0.0, 1000, 1000.0).is_err());
        assert!(ModelSigmas::flow_table(vec![0.5, 1.5], 1.0, 1000.0).is_err());
    }

    #[test]
    fn sd1_sigma_range_matches_the_known_values() {
        let s = sd_table();
        assert!(
            (s.sigma_min() - 0.029167533).abs() < 1e-6,
            "{}",
            s.sigma_min()
        );
        assert!(
            (s.sigma_max() - 14.614641).abs() < 1e-4,
            "{}",
            s.sigma_max()
        );
    }
}
