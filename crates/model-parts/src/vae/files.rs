//! A VAE read from its own file or folder into a model's weights (replacing the VAE there):
//! a `.safetensors` file with LDM keys (bare, `first_stage_model.*` or `vae.*`) or diffusers
//! keys, or a diffusers `vae` folder.
use std::path::Path;

use anyhow::{bail, Result};
use serde_json::Value;

use crate::convert::diffusers_vae::vae_renames;
use crate::convert::VAE_PREFIX;
use crate::weights::folder::{read_json, weights_files};
use crate::weights::safetensors::SafetensorsFile;
use crate::weights::Weights;

/// Replaces every model key under [`VAE_PREFIX`] in `weights` with the tensors of the VAE at
/// `path`; returns its diffusers `config.json` (folders) for [`super::VaeConfig::infer`].
pub fn replace_vae(weights: &mut Weights, path: &Path) -> Result<Option<Value>> {
    let shown = path.display();
    if !path.exists() {
        bail!("{shown}: VAE not found — check model.vae in the profile");
    }
    let (file, config) = if path.is_dir() {
        (
            weights_files(path, "diffusion_pytorch_model")?,
            read_json(&path.join("config.json"))?,
        )
    } else {
        (vec![path.to_path_buf()], None)
    };
    let files = file
        .iter()
        .map(|f| SafetensorsFile::open(f))
        .collect::<Result<Vec<_>>>()?;
    let keys: Vec<&str> = files
        .iter()
        .flat_map(|f| f.entries().keys().map(String::as_str))
        .collect();
    let renamed = vae_renames(keys.iter().copied());
    if !renamed
        .values()
        .any(|k| k.starts_with(&format!("{VAE_PREFIX}decoder.")))
    {
        bail!("{shown}: no VAE tensors found (expected encoder.*/decoder.* keys) — model.vae must be a VAE file or folder");
    }
    weights.retain(|k| !k.starts_with(VAE_PREFIX));
    for file in files {
        weights.add_file(file, |k| renamed.get(k).cloned());
    }
    Ok(config)
}
