//! The model wrapper between the UNet and the samplers (k-diffusion `CompVisDenoiser` /
//! `CompVisVDenoiser`, as A1111): the sampler works in sigma, the UNet in timesteps, and what
//! the UNet predicts (noise or velocity) becomes the denoised latent here.
use crate::families::Prediction;

/// `c_in`: the UNet sees `x / sqrt(sigma² + 1)` (sigma_data = 1).
pub fn input_scale(sigma: f64) -> f64 {
    1.0 / (sigma * sigma + 1.0).sqrt()
}

/// `(c_skip, c_out)` with `denoised = x·c_skip + output·c_out`: eps `(1, -sigma)`;
/// v `(1/(sigma²+1), -sigma/sqrt(sigma²+1))` (k-diffusion `get_scalings`, sigma_data = 1).
pub fn output_scales(prediction: Prediction, sigma: f64) -> (f64, f64) {
    match prediction {
        Prediction::Eps => (1.0, -sigma),
        Prediction::V => {
            let s2 = sigma * sigma + 1.0;
            (1.0 / s2, -sigma / s2.sqrt())
        }
    }
}

/// A1111's `is_using_v_parameterization_for_sd2` decision from its probe: the mean of
/// `unet(0.5, t = 999, context = 0.5) - 0.5` below -1 means v.
pub fn probe_says_v(mean_of_output_minus_input: f64) -> bool {
    mean_of_output_minus_input < -1.0
}

/// The probe's inputs: latent `[1, channels, 8, 8]`, timestep 999, context `[1, 2, width]`,
/// every value 0.5.
pub const PROBE_LATENT: i64 = 8;
pub const PROBE_TIMESTEP: f64 = 999.0;
pub const PROBE_VALUE: f64 = 0.5;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_scalings_match_k_diffusion() {
        // k-diffusion VDenoiser at sigma = 2: c_skip = 1/5, c_out = -2/sqrt(5).
        let (skip, out) = output_scales(Prediction::V, 2.0);
        assert!((skip - 0.2).abs() < 1e-15 && (out + 2.0 / 5f64.sqrt()).abs() < 1e-15);
        assert_eq!(output_scales(Prediction::Eps, 2.0), (1.0, -2.0));
        assert!((input_scale(2.0) - 1.0 / 5f64.sqrt()).abs() < 1e-15);
    }
}
