//! Telling an SD3 checkpoint from its keys: a single or transformer-only file holds
//! `model.diffusion_model.joint_blocks.*` (the MMDiT's original keys); a diffusers folder's
//! `transformer/config.json` names `SD3Transformer2DModel`. Flux files are refused by name.
use std::path::Path;

use anyhow::{Context, Result};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;

/// Where an SD3 model's parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sd3Layout {
    /// A diffusers `StableDiffusion3Pipeline` folder.
    Folder,
    /// One file with the transformer, and maybe the text encoders and the VAE.
    SingleFile,
}

impl Sd3Layout {
    pub fn describe(self) -> &'static str {
        match self {
            Sd3Layout::Folder => "diffusers folder",
            Sd3Layout::SingleFile => "single file",
        }
    }
}

const JOINT_BLOCKS: &str = "model.diffusion_model.joint_blocks.";
const FLUX_MARKERS: [&str; 2] = ["double_blocks.", "model.diffusion_model.double_blocks."];

/// `Ok(Some(layout))` for an SD3 checkpoint, `Ok(None)` for another family's, `Err` for a
/// Flux file (not yet supported) or an unreadable one.
pub fn detect(path: &Path) -> Result<Option<Sd3Layout>> {
    if path.is_dir() {
        let config = path.join("transformer").join("config.json");
        let Ok(text) = std::fs::read_to_string(&config) else {
            return Ok(None);
        };
        let json: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not JSON", config.display()))?;
        return Ok(match json["_class_name"].as_str() {
            Some("SD3Transformer2DModel") => Some(Sd3Layout::Folder),
            Some("FluxTransformer2DModel") => anyhow::bail!(
                "{}: not supported: a Flux checkpoint (this backend reads SD 3.x; Flux is issue 31)",
                path.display()
            ),
            _ => None,
        });
    }
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Ok(None);
    }
    let file = SafetensorsFile::open(path)?;
    let keys = file.entries();
    if keys.keys().any(|k| k.starts_with(JOINT_BLOCKS)) {
        return Ok(Some(Sd3Layout::SingleFile));
    }
    if keys
        .keys()
        .any(|k| FLUX_MARKERS.iter().any(|m| k.starts_with(m)))
    {
        anyhow::bail!(
            "{}: not supported: a Flux checkpoint (this backend reads SD 3.x; Flux is issue 31)",
            path.display()
        );
    }
    Ok(None)
}
