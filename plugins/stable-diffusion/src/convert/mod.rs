//! Key renames from foreign layouts to the model's own keys: the original LDM (CompVis) keys
//! for the UNet and VAE, transformers' CLIP names under the LDM prefix for text encoders. One
//! module per foreign format; each returns `None` for keys the model has no place for.
//!
//! Layout correspondences follow diffusers' `convert_original_stable_diffusion_to_diffusers`
//! mapping, read in the other direction.
//! The VAE's and CLIP's renames are shared with the flow backend (crates/model-parts).
pub mod diffusers_unet;

pub const UNET_PREFIX: &str = "model.diffusion_model.";

pub use hiresfix_model_parts::convert::{diffusers_vae, hf_clip, open_clip, VAE_PREFIX};
pub use hiresfix_model_parts::weights::{indices_under, Transform};
