//! Sigma schedules built from the model's own sigma table; each returns `steps + 1` sigmas
//! ending with zero.
use host_api::{ModelSigmas, Result, Schedule};

fn linspace(start: f64, end: f64, n: usize) -> impl Iterator<Item = f64> {
    let step = if n > 1 {
        (end - start) / (n - 1) as f64
    } else {
        0.0
    };
    (0..n).map(move |i| {
        if i + 1 == n && n > 1 {
            end
        } else {
            start + step * i as f64
        }
    })
}

fn append_zero(mut sigmas: Vec<f64>) -> Vec<f64> {
    sigmas.push(0.0);
    sigmas
}

/// Evenly spaced timesteps from the last training step to the first, mapped through the
/// model's sigma table (k-diffusion `DiscreteSchedule.get_sigmas`; ComfyUI "normal").
pub struct Normal;

impl Schedule for Normal {
    const NAME: &'static str = "normal";
    const ALIASES: &'static [&'static str] = &["Normal", "Automatic"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        let t_max = (model.table().len() - 1) as f64;
        Ok(append_zero(
            linspace(t_max, 0.0, steps)
                .map(|t| model.t_to_sigma(t))
                .collect(),
        ))
    }
}

/// Karras et al. 2022 ("Elucidating the Design Space...", eq. 5) with rho = 7 between the
/// model's sigma_min and sigma_max (k-diffusion `get_sigmas_karras`).
pub struct Karras;

impl Schedule for Karras {
    const NAME: &'static str = "karras";
    const ALIASES: &'static [&'static str] = &["Karras"];

    fn sigmas(model: &ModelSigmas, steps: usize) -> Result<Vec<f64>> {
        const RHO: f64 = 7.0;
        let min_inv_rho = model.sigma_min().powf(1.0 / RHO);
        let max_inv_rho = model.sigma_max().powf(1.0 / RHO);
        let ramp = linspace(0.0, 1.0, steps);
        Ok(append_zero(
            ramp.map(|r| (max_inv_rho + r * (min_inv_rho - max_inv_rho)).powf(RHO))
                .collect(),
        ))
    }
}

host_api::export_plugin! {
    schedules: [Normal, Karras],
}
