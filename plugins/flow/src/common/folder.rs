//! A diffusers pipeline folder's transformer class and VAE.
use std::path::Path;

use anyhow::{Context, Result};
use hiresfix_model_parts::convert::diffusers_vae::vae_renames;
use hiresfix_model_parts::weights::folder::weights_files;
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use hiresfix_model_parts::weights::Weights;
use serde_json::Value;

/// `transformer/config.json` of a pipeline folder, `None` where there is none (not a
/// pipeline folder of a transformer model).
pub fn transformer_config(folder: &Path) -> Result<Option<Value>> {
    let config = folder.join("transformer").join("config.json");
    let Ok(text) = std::fs::read_to_string(&config) else {
        return Ok(None);
    };
    let json =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", config.display()))?;
    Ok(Some(json))
}

/// Adds the folder's `vae/` weights under model (LDM) keys.
pub fn add_vae(weights: &mut Weights, folder: &Path) -> Result<()> {
    for file in weights_files(&folder.join("vae"), "diffusion_pytorch_model")? {
        let file = SafetensorsFile::open(&file)?;
        let renames = vae_renames(file.entries().keys().map(String::as_str));
        weights.add_file(file, |k| renames.get(k).cloned());
    }
    Ok(())
}
