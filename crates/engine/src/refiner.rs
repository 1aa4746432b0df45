//! A1111's refiner (`refiner_checkpoint`, `refiner_switch_at`): within one pass, once the
//! schedule is `switch_at` done, another checkpoint continues the same sampling — the same
//! sigmas, the same latent and sampler state, its own conditioning (A1111
//! `sd_samplers_common.apply_refiner`; diffusers' base `denoising_end` / refiner
//! `denoising_start`). The hand-over is A1111's default rule: each denoiser call's sigma is
//! mapped to its nearest timestep `t` of the pass model's table, and the refiner takes over
//! from the first call with `(999 - t) / 1000 >= switch_at` (A1111's
//! `refiner_switch_by_sample_steps` option, a count of steps instead, is not offered). Its
//! infotext fields are written by [`crate::parameters`].
use std::path::{Path, PathBuf};

use crate::defaults;
use crate::profile::{resolve_path, Pass};

/// A pass's refiner.
#[derive(Debug, Clone, PartialEq)]
pub struct RefinerPlan {
    pub checkpoint: PathBuf,
    /// The fraction of the schedule after which the refiner runs, in (0, 1).
    pub switch_at: f64,
}

/// The pass's refiner, its path beside the profile, `switch_at` A1111's 0.8 unless set.
pub fn plan(pass: &Pass, base_dir: &Path) -> Option<RefinerPlan> {
    let checkpoint = pass.refiner_checkpoint.as_deref()?;
    Some(RefinerPlan {
        checkpoint: resolve_path(base_dir, checkpoint),
        switch_at: pass
            .refiner_switch_at
            .unwrap_or(defaults::REFINER_SWITCH_AT),
    })
}

/// Whether the denoiser call at `sigma` runs on the refiner: A1111's completed ratio
/// `(T - 1 - t) / T` of the timestep `t` whose sigma in the model's ascending `table` (T
/// entries) is nearest, at least `switch_at`.
pub fn hands_over(table: &[f64], sigma: f64, switch_at: f64) -> bool {
    let Some((t, _)) = table
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| (*a - sigma).abs().total_cmp(&(*b - sigma).abs()))
    else {
        return false;
    };
    let n = table.len() as f64;
    (n - 1.0 - t as f64) / n >= switch_at
}

/// The passes (0-based) an infotext's refiner ran in: A1111's `Hires refiner` (default
/// "second pass") with a hires pass, else pass 1.
pub fn passes_of(hires_refiner: Option<&str>, hires: bool) -> &'static [usize] {
    match (hires, hires_refiner.map(str::trim)) {
        (false, _) => &[0],
        (true, Some("first pass")) => &[0],
        (true, Some("both passes")) => &[0, 1],
        (true, _) => &[1],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refiner_takes_over_at_a1111s_completed_ratio() {
        // A 1000-entry table whose sigma is its index: t = round(sigma).
        let table: Vec<f64> = (0..1000).map(f64::from).collect();
        // (999 - 199) / 1000 = 0.8: handed over; t = 200 gives 0.799.
        assert!(hands_over(&table, 199.0, 0.8));
        assert!(hands_over(&table, 199.4, 0.8));
        assert!(!hands_over(&table, 199.6, 0.8));
        assert!(!hands_over(&table, 999.0, 0.8));
        assert!(hands_over(&table, 0.0, 0.8));
    }

    #[test]
    fn an_infotext_refiner_runs_where_a1111_ran_it() {
        assert_eq!(passes_of(None, false), &[0]);
        assert_eq!(passes_of(None, true), &[1]);
        assert_eq!(passes_of(Some("first pass"), true), &[0]);
        assert_eq!(passes_of(Some("both passes"), true), &[0, 1]);
    }
}
