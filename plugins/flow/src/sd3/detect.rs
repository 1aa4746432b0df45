//! Telling an SD3 checkpoint from its keys: a single or transformer-only file holds
//! `model.diffusion_model.joint_blocks.*` (the MMDiT's original keys); a diffusers folder's
//! `transformer/config.json` names `SD3Transformer2DModel`. Flux files are the Flux backend's
//! (`crate::flux_backend`).
use std::path::Path;

use anyhow::Result;
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

/// `Ok(Some(layout))` for an SD3 checkpoint, `Ok(None)` for another family's, `Err` for an
/// unreadable one.
pub fn detect(path: &Path) -> Result<Option<Sd3Layout>> {
    if path.is_dir() {
        let Some(json) = crate::common::folder::transformer_config(path)? else {
            return Ok(None);
        };
        return Ok(match json["_class_name"].as_str() {
            Some("SD3Transformer2DModel") => Some(Sd3Layout::Folder),
            _ => None,
        });
    }
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Ok(None);
    }
    let file = SafetensorsFile::open(path)?;
    let keys = file.entries();
    Ok(keys
        .keys()
        .any(|k| k.starts_with(JOINT_BLOCKS))
        .then_some(Sd3Layout::SingleFile))
}
