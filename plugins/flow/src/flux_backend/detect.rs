//! Telling a Flux checkpoint and its variant from its keys: a Black Forest Labs file holds
//! `double_blocks.*` / `single_blocks.*` (bare, or under `model.diffusion_model.` in a Forge /
//! ComfyUI all-in-one file), a diffusers transformer file `single_transformer_blocks.*`, a
//! diffusers folder's `transformer/config.json` names `FluxTransformer2DModel`. Dev has a
//! guidance embedding (`guidance_in.*`, diffusers `guidance_embeds`), schnell none.
use std::path::Path;

use anyhow::Result;
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;

use crate::flux::{Variant, SINGLE_FILE_PREFIX};

/// Where a Flux model's parts are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FluxLayout {
    /// A diffusers `FluxPipeline` folder.
    Folder,
    /// One file with the transformer (BFL or diffusers names), maybe with the text encoders
    /// and the VAE (all-in-one).
    SingleFile,
}

impl FluxLayout {
    pub fn describe(self) -> &'static str {
        match self {
            FluxLayout::Folder => "diffusers folder",
            FluxLayout::SingleFile => "single file",
        }
    }
}

/// A Flux checkpoint's layout and variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Detected {
    pub layout: FluxLayout,
    pub variant: Variant,
}

/// Key prefixes only a Flux transformer has (BFL's blocks, diffusers' single-stream blocks).
const MARKERS: [&str; 3] = [
    "double_blocks.",
    "single_blocks.",
    "single_transformer_blocks.",
];
/// Keys of the guidance embedding (BFL, diffusers).
const GUIDANCE: [&str; 2] = [
    "guidance_in.in_layer.weight",
    "time_text_embed.guidance_embedder.linear_1.weight",
];

/// `Ok(Some(..))` for a Flux checkpoint, `Ok(None)` for another family's, `Err` for an
/// unreadable one.
pub fn detect(path: &Path) -> Result<Option<Detected>> {
    if path.is_dir() {
        let Some(json) = crate::common::folder::transformer_config(path)? else {
            return Ok(None);
        };
        if json["_class_name"].as_str() != Some("FluxTransformer2DModel") {
            return Ok(None);
        }
        let variant = match json["guidance_embeds"].as_bool().unwrap_or(false) {
            true => Variant::Dev,
            false => Variant::Schnell,
        };
        return Ok(Some(Detected {
            layout: FluxLayout::Folder,
            variant,
        }));
    }
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Ok(None);
    }
    let file = SafetensorsFile::open(path)?;
    let keys = file.entries();
    let under = |name: &str| ["", SINGLE_FILE_PREFIX].map(|p| format!("{p}{name}"));
    let has = |name: &str| under(name).iter().any(|k| keys.contains_key(k));
    let marked = |k: &String| {
        let k = k.strip_prefix(SINGLE_FILE_PREFIX).unwrap_or(k);
        MARKERS.iter().any(|m| k.starts_with(m))
    };
    if !keys.keys().any(marked) {
        return Ok(None);
    }
    let variant = match GUIDANCE.iter().any(|g| has(g)) {
        true => Variant::Dev,
        false => Variant::Schnell,
    };
    Ok(Some(Detected {
        layout: FluxLayout::SingleFile,
        variant,
    }))
}
