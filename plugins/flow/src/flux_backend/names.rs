//! Key prefixes of Flux's single files and the defaults every part of the backend reads.

/// Model-key prefix of CLIP-L (an all-in-one file's own; split and folder keys go under it).
pub const CLIP_L_PREFIX: &str = "text_encoders.clip_l.transformer.";
/// An all-in-one file's VAE (ComfyUI / Forge save Flux's `ae` under `vae.`, LDM names).
pub const AIO_VAE_PREFIX: &str = "vae.";
/// A key of every T5 encoder file (after any prefix).
pub(crate) use crate::sd3::files::T5_KEY;
/// The `EncodeRequest.options` key of Flux dev's distilled guidance (the pass's `guidance`).
pub use host_api::options::keys::GUIDANCE as GUIDANCE_KEY;
/// Flux dev's distilled guidance where the profile sets none (diffusers' `FluxPipeline`
/// `guidance_scale`, Forge's "Distilled CFG Scale").
pub const DEFAULT_GUIDANCE: f64 = 3.5;
/// Flux's flow table: 10000 entries, timestep = σ (ComfyUI `ModelSamplingFlux`).
pub const TIMESTEPS: usize = 10000;
pub const MULTIPLIER: f64 = 1.0;
