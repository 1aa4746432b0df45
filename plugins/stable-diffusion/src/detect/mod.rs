//! Detection, in the spirit of ComfyUI's `model_detection.py`: what a checkpoint is, read from
//! the keys and shapes it holds. It imports the family list ([`crate::families::FAMILIES`])
//! and the checkpoint reader, never the reverse: the family whose encoders are exactly those
//! a file holds ([`detect`], done by [`Checkpoint::open`]), what is refused by name
//! ([`refused`]), and the architecture's hyper-parameters (`UNetConfig::infer` in [`unet`],
//! [`clip::clip_config`]), which the config structs themselves do not read.
pub mod clip;
pub mod refused;
pub mod unet;

use std::path::Path;

use anyhow::{bail, Result};

use crate::checkpoint::{Checkpoint, Format};
use crate::families::{supported_ids, EncoderSpec, Family, FAMILIES};
use refused::{foreign_kind, unet_variant};

impl Checkpoint {
    /// Opens a single `.safetensors` file or a diffusers folder (one with `model_index.json`)
    /// and tells its family; an error says why a file is refused.
    pub fn open(path: &Path) -> Result<Self> {
        let mut ckpt = Self::open_unchecked(path)?;
        let family = detect(&ckpt)?;
        ckpt.set_family(family)?;
        Ok(ckpt)
    }
}

/// Two encoder specs that a checkpoint cannot tell apart in its format.
fn same_slot(format: Format, a: &EncoderSpec, b: &EncoderSpec) -> bool {
    match format {
        Format::SingleFile => a.ldm_prefix == b.ldm_prefix && a.ldm_layout == b.ldm_layout,
        Format::Diffusers => {
            a.diffusers_folder == b.diffusers_folder && a.activation == b.activation
        }
    }
}

/// Every distinct encoder slot any family has, found in `ckpt`.
fn encoders_found(ckpt: &Checkpoint) -> Vec<&'static EncoderSpec> {
    let mut found: Vec<&'static EncoderSpec> = Vec::new();
    for spec in FAMILIES.iter().flat_map(|f| f.encoders.iter()) {
        let known = found.iter().any(|f| same_slot(ckpt.format(), f, spec));
        if !known && ckpt.has_encoder(spec) {
            found.push(spec);
        }
    }
    found
}

/// The registry entry whose encoders are exactly those `ckpt` holds and whose vector
/// conditioning it has; an error naming what the file is when none, or when the family or
/// this variant of it is not supported.
pub fn detect(ckpt: &Checkpoint) -> Result<&'static Family> {
    let shown = ckpt.path().display();
    if let Some(kind) = foreign_kind(ckpt) {
        bail!("{shown}: not supported: {kind}");
    }
    let found = encoders_found(ckpt);
    let family = FAMILIES.iter().copied().find(|f| {
        f.encoders.len() == found.len()
            && f.encoders
                .iter()
                .all(|e| found.iter().any(|g| same_slot(ckpt.format(), e, g)))
    });
    let Some(family) = family else {
        let names: Vec<&str> = found.iter().map(|e| e.name).collect();
        let held = match names.is_empty() {
            true => "no text encoder".to_string(),
            false => format!("text encoders {}", names.join(" + ")),
        };
        bail!(
            "{shown}: not a recognised Stable Diffusion checkpoint ({held}) — supported: {}",
            supported_ids()
        );
    };
    if let Some(reason) = family.unsupported {
        bail!("{shown}: not supported yet: {reason}");
    }
    if !ckpt.has_unet() {
        bail!("{shown}: {} text encoders but no UNet (model.diffusion_model.*) — this is not a full checkpoint", family.name);
    }
    if let Some(variant) = unet_variant(ckpt, family)? {
        bail!("{shown}: not supported yet: {variant}");
    }
    Ok(family)
}
