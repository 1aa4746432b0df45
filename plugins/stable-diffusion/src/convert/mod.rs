//! Key renames from foreign layouts to the model's own keys: the original LDM (CompVis) keys
//! for the UNet and VAE, transformers' CLIP names under the LDM prefix for text encoders. One
//! module per foreign format; each returns `None` for keys the model has no place for.
//!
//! Layout correspondences follow diffusers' `convert_original_stable_diffusion_to_diffusers`
//! mapping, read in the other direction.
use std::collections::BTreeSet;

pub mod diffusers_unet;
pub mod diffusers_vae;
pub mod hf_clip;
pub mod open_clip;

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";

/// How a stored tensor becomes the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    AsIs,
    /// Part `index` of `of` equal slices along dim 0 (OpenCLIP's fused q/k/v).
    Chunk {
        index: i64,
        of: i64,
    },
    /// Rows and columns swapped (OpenCLIP's `text_projection` is `x @ P`, a Linear is `x Pᵀ`).
    Transpose,
}

impl Transform {
    /// The shape after the transform.
    pub fn shape(self, stored: &[i64]) -> Vec<i64> {
        let mut shape = stored.to_vec();
        match self {
            Transform::AsIs => {}
            Transform::Chunk { of, .. } => {
                if let Some(first) = shape.first_mut() {
                    *first /= of;
                }
            }
            Transform::Transpose => shape.reverse(),
        }
        shape
    }

    pub fn apply(self, t: &tch::Tensor) -> tch::Tensor {
        match self {
            Transform::AsIs => t.shallow_clone(),
            Transform::Chunk { index, of } => {
                let part = t.size()[0] / of;
                t.narrow(0, index * part, part)
            }
            Transform::Transpose => t.tr(),
        }
    }
}

/// The distinct integers `i` of keys `prefix{i}.…`, sorted.
pub fn indices_under<'a>(keys: impl IntoIterator<Item = &'a str>, prefix: &str) -> BTreeSet<usize> {
    keys.into_iter()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect()
}
