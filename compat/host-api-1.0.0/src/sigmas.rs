//! The model's discrete noise levels, as k-diffusion's `DiscreteSchedule` sees them.
//! Schedules and backends share these conversions so sigma ↔ timestep agree everywhere.

/// Ascending sigma table of a discrete-time model (`sqrt((1 - ᾱ) / ᾱ)` per training step).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSigmas {
    table: Vec<f64>,
    log_table: Vec<f64>,
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
        Ok(Self { table, log_table })
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
    /// (k-diffusion `DiscreteSchedule.sigma_to_t`, quantize=False).
    pub fn sigma_to_t(&self, sigma: f64) -> f64 {
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

    /// Sigma at a fractional timestep, interpolating log-sigma (k-diffusion `t_to_sigma`).
    pub fn t_to_sigma(&self, t: f64) -> f64 {
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
