//! 1.5.0: a model's sampling — how its noise level σ relates to a noisy latent, a timestep and
//! the schedules — as the backend declares it per pass ([`crate::Backend::model_sampling`]).
//!
//! Two kinds (ComfyUI `comfy/model_sampling.py`):
//! - `discrete`: an eps / v model seen as k-diffusion sees it, `x_σ = x₀ + σ·ε` over the
//!   training steps' sigma table (ComfyUI `ModelSamplingDiscrete` with `EPS` / `V_PREDICTION`).
//!   What every 1.0–1.4 backend is.
//! - `flow`: rectified flow, `x_σ = (1 − σ)·x₀ + σ·ε`, σ ∈ [0, 1], the model's timestep
//!   `σ · multiplier` and its sigmas shifted by `shift` (ComfyUI `ModelSamplingDiscreteFlow`
//!   with `CONST`; SD3: shift 3, multiplier 1000). A model whose shift depends on the image
//!   size (Flux: diffusers `calculate_shift`) answers each pass's size with its own shift.
//!
//! Samplers keep seeing a denoiser `D(x, σ) → x₀`; the kind tells the ancestral / SDE
//! samplers which form to take and the host how to noise a latent.
use abi_stable::std_types::{RString, RVec};
use abi_stable::StableAbi;
use tch::Tensor;

use crate::error::{Error, Result};
use crate::options::OptionEntry;
use crate::sigmas::{time_snr_shift, ModelSigmas};

/// [`ModelSampling::kind`] of an eps / v model.
pub const DISCRETE: &str = "discrete";
/// [`ModelSampling::kind`] of a rectified-flow model.
pub const FLOW: &str = "flow";

/// A model's sampling at one image size, as it crosses the boundary (a plain struct: later
/// facts go into `extra`, by key).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct ModelSampling {
    /// [`DISCRETE`] or [`FLOW`]; a host refuses a kind it does not know.
    pub kind: RString,
    /// flow: the timestep shift at this size (`shift·t / (1 + (shift − 1)·t)`; 1 = none).
    /// discrete: 1.
    pub shift: f64,
    /// flow: the model's timestep is `σ · multiplier` (1000 for SD3, 1 for Flux). discrete: 0
    /// (the timestep is the fractional index into `sigmas`).
    pub multiplier: f64,
    /// The model's sigma table, ascending: discrete, one per training step; flow,
    /// `time_snr_shift(shift, i / N)` for i = 1..=N (N = 1000 for SD3, 10000 for Flux, as
    /// ComfyUI's tables). `simple`, `beta` and `ddim_uniform` pick from it; karras and
    /// exponential span its ends.
    pub sigmas: RVec<f64>,
    /// Facts added later, by key; empty in 1.5.
    pub extra: RVec<OptionEntry>,
}

impl ModelSampling {
    /// An eps / v model with the sigma table of its training steps (ascending).
    pub fn discrete(sigmas: Vec<f64>) -> Self {
        Self {
            kind: DISCRETE.into(),
            shift: 1.0,
            multiplier: 0.0,
            sigmas: sigmas.into(),
            extra: RVec::new(),
        }
    }

    /// A rectified-flow model with `shift`, a table of `timesteps` entries and timestep
    /// `σ · multiplier` (SD3: `flow(3.0, 1000, 1000.0)`).
    pub fn flow(shift: f64, timesteps: usize, multiplier: f64) -> Result<Self> {
        let table = ModelSigmas::flow(shift, timesteps, multiplier)?;
        Ok(Self {
            kind: FLOW.into(),
            shift,
            multiplier,
            sigmas: table.table().to_vec().into(),
            extra: RVec::new(),
        })
    }

    pub fn is_flow(&self) -> bool {
        self.kind.as_str() == FLOW
    }

    /// The schedules' view ([`ModelSigmas`]); an unknown kind or a bad table is an error.
    pub fn model_sigmas(&self) -> Result<ModelSigmas> {
        match self.kind.as_str() {
            DISCRETE => ModelSigmas::new(self.sigmas.to_vec()),
            FLOW => ModelSigmas::flow_table(self.sigmas.to_vec(), self.shift, self.multiplier),
            other => Err(Error(format!(
                "unknown model sampling `{other}` (this host knows `{DISCRETE}` and `{FLOW}`); update hiresfix"
            ))),
        }
    }

    /// For messages and `info`: `discrete` or `flow (shift 3)`.
    pub fn describe(&self) -> String {
        match self.is_flow() {
            true => format!("flow (shift {})", self.shift),
            false => self.kind.to_string(),
        }
    }

    /// The timestep the model is conditioned on at `sigma`: flow `σ · multiplier`; discrete
    /// the fractional training step (log-sigma interpolation in the table).
    pub fn timestep(&self, sigma: f64) -> Result<f64> {
        match self.is_flow() {
            true => Ok(sigma * self.multiplier),
            false => Ok(self.model_sigmas()?.sigma_to_t(sigma)),
        }
    }

    /// The inverse of [`Self::timestep`]: flow `t / multiplier`; discrete the table's sigma
    /// at fractional step `t`. (ComfyUI's `sigma(t)` of a flow model, which the `normal`
    /// schedule uses, also shifts: that is [`ModelSigmas::t_to_sigma`].)
    pub fn sigma_of_timestep(&self, t: f64) -> Result<f64> {
        match self.is_flow() {
            true => Ok(t / self.multiplier),
            false => Ok(self.model_sigmas()?.t_to_sigma(t)),
        }
    }

    /// A latent noised to `sigma` (the start of an img2img or hires pass; ComfyUI
    /// `noise_scaling`): flow `(1 − σ)·latent + σ·noise`, discrete `latent + σ·noise`.
    pub fn noise_latent(&self, sigma: f64, noise: &Tensor, latent: &Tensor) -> Tensor {
        match self.is_flow() {
            true => latent * (1.0 - sigma) + noise * sigma,
            false => latent + noise * sigma,
        }
    }

    /// Pure noise at `sigma` (a pass from noise: the latent under it is zero).
    pub fn noise_only(&self, sigma: f64, noise: &Tensor) -> Tensor {
        noise * sigma
    }

    /// What the network takes at `sigma` (ComfyUI `calculate_input`): discrete
    /// `x / sqrt(σ² + 1)`, flow `x` unchanged.
    pub fn scale_input(&self, sigma: f64, x: &Tensor) -> Tensor {
        match self.is_flow() {
            true => x.shallow_clone(),
            false => x / (sigma * sigma + 1.0).sqrt(),
        }
    }

    /// The denoised latent from the network's output at `sigma` (ComfyUI
    /// `calculate_denoised`): flow (the network predicts the velocity `ε − x₀`)
    /// `x − σ·out`; discrete by `prediction`: `eps` `x − σ·out`, `v`
    /// `x / (σ² + 1) − out·σ / sqrt(σ² + 1)`.
    pub fn denoised(
        &self,
        sigma: f64,
        out: &Tensor,
        x: &Tensor,
        prediction: &str,
    ) -> Result<Tensor> {
        match (self.is_flow(), prediction) {
            (true, _) | (false, "eps") => Ok(x - out * sigma),
            (false, "v") => {
                let s2 = sigma * sigma + 1.0;
                Ok(x / s2 - out * (sigma / s2.sqrt()))
            }
            (false, other) => Err(Error(format!(
                "unknown prediction `{other}` (use eps or v)"
            ))),
        }
    }

    /// The sigma a fraction `percent` of the way through sampling (ComfyUI
    /// `percent_to_sigma`; flow only needs the shift): 0 → the top, 1 → 0.
    pub fn percent_to_sigma(&self, percent: f64) -> Result<f64> {
        if percent >= 1.0 {
            return Ok(0.0);
        }
        match self.is_flow() {
            true if percent <= 0.0 => Ok(1.0),
            true => Ok(time_snr_shift(self.shift, 1.0 - percent)),
            false if percent <= 0.0 => Ok(999_999_999.9),
            false => {
                let table = self.model_sigmas()?;
                let last = (table.table().len() - 1) as f64;
                Ok(table.t_to_sigma((1.0 - percent) * last))
            }
        }
    }

    /// Half the log-SNR, `λ = ln(α / σ)`, the DPM-Solver++ time of the SDE samplers (ComfyUI
    /// `sigma_to_half_log_snr`): discrete `−ln σ`, flow `ln((1 − σ) / σ)`.
    pub fn half_log_snr(&self, sigma: f64) -> f64 {
        match self.is_flow() {
            true => ((1.0 - sigma) / sigma).ln(),
            false => -sigma.ln(),
        }
    }

    /// The inverse of [`Self::half_log_snr`]: discrete `e^−λ`, flow `1 / (1 + e^λ)`.
    pub fn sigma_of_half_log_snr(&self, lambda: f64) -> f64 {
        match self.is_flow() {
            true => 1.0 / (1.0 + lambda.exp()),
            false => (-lambda).exp(),
        }
    }

    /// The signal scale at `sigma`: discrete 1 (`x = x₀ + σε`), flow `1 − σ`.
    pub fn alpha(&self, sigma: f64) -> f64 {
        match self.is_flow() {
            true => 1.0 - sigma,
            false => 1.0,
        }
    }

    /// `sigmas` with a first sigma of 1 (or more) moved just below it, where λ is finite
    /// (ComfyUI `offset_first_sigma_for_snr`, percent 1e-4); a discrete model's unchanged.
    pub fn offset_first_sigma(&self, sigmas: &[f64]) -> Result<Vec<f64>> {
        let mut sigmas = sigmas.to_vec();
        if self.is_flow() && sigmas.len() > 1 && sigmas[0] >= 1.0 {
            sigmas[0] = self.percent_to_sigma(1e-4)?;
        }
        Ok(sigmas)
    }
}

/// diffusers `calculate_shift` (Flux, SD3.5 with dynamic shifting): `mu` linear in the image's
/// token count from `base_shift` at `base_tokens` to `max_shift` at `max_tokens`; the
/// [`ModelSampling::shift`] is `exp(mu)` (ComfyUI `ModelSamplingFlux`'s `flux_time_shift`).
pub fn calculate_shift(
    tokens: f64,
    (base_tokens, max_tokens): (f64, f64),
    (base_shift, max_shift): (f64, f64),
) -> f64 {
    let m = (max_shift - base_shift) / (max_tokens - base_tokens);
    let b = base_shift - m * base_tokens;
    tokens * m + b
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn flow_noising_is_the_interpolation_and_discrete_adds_sigma_noise() {
        let latent = Tensor::from_slice(&[2.0f64, -1.0, 0.5]);
        let noise = Tensor::from_slice(&[1.0f64, 3.0, -2.0]);
        let flow = ModelSampling::flow(3.0, 1000, 1000.0).unwrap();
        let got = Vec::<f64>::try_from(flow.noise_latent(0.25, &noise, &latent)).unwrap();
        assert_eq!(got, vec![0.75 * 2.0 + 0.25, -0.75 + 0.75, 0.375 - 0.5]);
        let discrete = ModelSampling::discrete(vec![0.1, 1.0, 10.0]);
        let got = Vec::<f64>::try_from(discrete.noise_latent(0.25, &noise, &latent)).unwrap();
        assert_eq!(got, vec![2.25, -0.25, 0.0]);
        // Denoise 1 on flow: pure noise whatever the latent.
        let top = flow.noise_latent(1.0, &noise, &latent);
        assert_eq!(Vec::<f64>::try_from(top).unwrap(), vec![1.0, 3.0, -2.0]);
    }

    #[test]
    fn flow_denoised_inverts_the_noising_for_the_true_velocity() {
        let x0 = Tensor::randn([2, 4], (Kind::Double, Device::Cpu));
        let eps = Tensor::randn([2, 4], (Kind::Double, Device::Cpu));
        let flow = ModelSampling::flow(3.0, 1000, 1000.0).unwrap();
        let x = flow.noise_latent(0.6, &eps, &x0);
        let v = &eps - &x0;
        let got = flow
            .denoised(0.6, &v, &flow.scale_input(0.6, &x), "")
            .unwrap();
        assert!(f64::try_from((got - &x0).abs().max()).unwrap() < 1e-12);
    }

    #[test]
    fn timestep_and_back() {
        let flow = ModelSampling::flow(3.0, 1000, 1000.0).unwrap();
        for sigma in [0.003, 0.25, 0.8, 1.0] {
            assert!((flow.timestep(sigma).unwrap() - sigma * 1000.0).abs() < 1e-12);
            let back = flow
                .sigma_of_timestep(flow.timestep(sigma).unwrap())
                .unwrap();
            assert!((back - sigma).abs() < 1e-15);
        }
        let table: Vec<f64> = (1..=1000).map(|i| 0.01 * (i as f64 / 70.0).exp()).collect();
        let discrete = ModelSampling::discrete(table.clone());
        assert!((discrete.timestep(table[417]).unwrap() - 417.0).abs() < 1e-9);
        let back = discrete.sigma_of_timestep(417.25).unwrap();
        assert!((discrete.timestep(back).unwrap() - 417.25).abs() < 1e-9);
    }

    #[test]
    fn half_log_snr_round_trips_and_percent_to_sigma_follows_comfyui() {
        let flow = ModelSampling::flow(3.0, 1000, 1000.0).unwrap();
        for sigma in [0.01, 0.5, 0.97] {
            let back = flow.sigma_of_half_log_snr(flow.half_log_snr(sigma));
            assert!((back - sigma).abs() < 1e-14);
        }
        assert_eq!(flow.half_log_snr(0.5), 0.0);
        let p = flow.percent_to_sigma(1e-4).unwrap();
        assert!((p - 3.0 * 0.9999 / (1.0 + 2.0 * 0.9999)).abs() < 1e-15);
        assert_eq!(flow.offset_first_sigma(&[1.0, 0.5, 0.0]).unwrap()[0], p);
        let discrete = ModelSampling::discrete(vec![0.1, 1.0, 10.0]);
        assert_eq!(
            discrete.offset_first_sigma(&[10.0, 0.0]).unwrap(),
            vec![10.0, 0.0]
        );
        assert!(ModelSampling {
            kind: "edm".into(),
            ..discrete
        }
        .model_sigmas()
        .is_err());
    }

    #[test]
    fn calculate_shift_is_diffusers_flux_rule() {
        // Flux: 0.5 at 256 tokens, 1.15 at 4096; 1024 px is 4096 tokens.
        let mu = |tokens| calculate_shift(tokens, (256.0, 4096.0), (0.5, 1.15));
        assert!((mu(256.0) - 0.5).abs() < 1e-12);
        assert!((mu(4096.0) - 1.15).abs() < 1e-12);
        assert!((mu(1024.0) - (0.5 + 0.65 * 768.0 / 3840.0)).abs() < 1e-12);
    }
}
