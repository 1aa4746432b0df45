//! The VAE run in the model's dtype on its device, returning fp32 (the host's side).
use anyhow::Result;
use hiresfix_model_parts::vae::AutoencoderKL;
use tch::{Device, Kind, Tensor};

/// Scaled latent → pixels in about [-1, 1] (raw).
pub fn decode(vae: &AutoencoderKL, latent: &Tensor, device: Device, kind: Kind) -> Result<Tensor> {
    let z = latent.to_device(device).to_kind(kind);
    let image = tch::no_grad(|| vae.decode(&z))?;
    Ok(image.to_kind(Kind::Float))
}

/// Pixels in [-1, 1] → scaled latent (the posterior mean).
pub fn encode(vae: &AutoencoderKL, image: &Tensor, device: Device, kind: Kind) -> Result<Tensor> {
    let x = image.to_device(device).to_kind(kind);
    let latent = tch::no_grad(|| vae.encode(&x))?;
    Ok(latent.to_kind(Kind::Float))
}
