//! Key renames from the foreign layouts of the shared parts to the model's keys: the VAE's
//! original LDM (CompVis) keys under [`VAE_PREFIX`], transformers' CLIP names under the
//! encoder's prefix. One module per foreign format; each returns `None` for keys the model has
//! no place for.
//!
//! Layout correspondences follow diffusers' `convert_original_stable_diffusion_to_diffusers`
//! mapping, read in the other direction.
pub mod diffusers_vae;
pub mod hf_clip;
pub mod open_clip;

use crate::weights::{indices_under, Transform};

/// Where the VAE's model keys live (the LDM single file's `first_stage_model.`), whichever
/// backend runs it.
pub const VAE_PREFIX: &str = "first_stage_model.";
