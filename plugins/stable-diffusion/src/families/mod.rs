//! Model families as data, in the spirit of ComfyUI's `supported_models.py`: each family is
//! one entry (its text encoders, conditioning, head rule, latent scale, prediction rule) in
//! one file of this folder, and detection matches what a checkpoint holds against the
//! entries — never a guess from sizes, so tiny test models of a family load like real ones.
mod refused;
pub mod sd1;
pub mod sd2;
pub mod sdxl;

use anyhow::{bail, Result};

use crate::checkpoint::{Checkpoint, Format};
use crate::text::clip::{Activation, TextLayer};
use crate::unet::HeadRule;

pub use refused::{foreign_kind, unet_variant};

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise (SD 1.x, SD 2.x base, SDXL).
    Eps,
    /// The velocity `alpha * eps - sigma * x0` (SD 2.x 768-v, v-pred SDXL finetunes).
    V,
}

impl Prediction {
    pub fn as_str(self) -> &'static str {
        match self {
            Prediction::Eps => "eps",
            Prediction::V => "v",
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "eps" | "epsilon" => Ok(Prediction::Eps),
            "v" | "v_prediction" => Ok(Prediction::V),
            other => bail!("prediction `{other}` is not one of eps, v"),
        }
    }
}

/// How a single file stores a text encoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLayout {
    /// transformers' `CLIPTextModel` names (`text_model.encoder.layers.…`), OpenAI CLIP-L.
    HfClip,
    /// OpenCLIP's (`transformer.resblocks.…` with fused `in_proj_weight`).
    OpenClip,
}

/// The token after end-of-text in a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pad {
    /// End-of-text again (OpenAI CLIP, A1111 `id_pad = id_end`).
    Eos,
    /// Token 0 (OpenCLIP, A1111 `id_pad = 0`).
    Zero,
}

/// One text encoder of a family: where each format keeps it and how it is used.
#[derive(Debug)]
pub struct EncoderSpec {
    /// e.g. `CLIP-L`, `OpenCLIP ViT-bigG`.
    pub name: &'static str,
    /// Key prefix in single files (and of the model's own keys).
    pub ldm_prefix: &'static str,
    pub ldm_layout: TextLayout,
    /// Sub-folder in diffusers folders.
    pub diffusers_folder: &'static str,
    /// The MLP activation (single files carry no config).
    pub activation: Activation,
    pub layer: TextLayer,
    /// Trailing layers a single file stores but the model never runs (SD 2.x: 1).
    pub unused_ldm_layers: usize,
    /// Whether its projected end-of-text token conditions the UNet (SDXL's bigG).
    pub pooled: bool,
    pub pad: Pad,
}

/// What the UNet gets besides text cross-attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vector {
    None,
    /// SDXL base: pooled text + embedded (original size, crop top-left, target size).
    PooledTextAndSizes,
    /// SDXL refiner: the above plus an aesthetic score.
    PooledTextSizesAndAesthetic,
}

impl Vector {
    /// Size-like ids embedded after the pooled text.
    pub fn ids(self) -> i64 {
        match self {
            Vector::None => 0,
            Vector::PooledTextAndSizes => 6,
            Vector::PooledTextSizesAndAesthetic => 5,
        }
    }
}

/// How the prediction type of a checkpoint without a marker is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionRule {
    /// eps, unless a marker says otherwise.
    Eps,
    /// Single files: probe the UNet as A1111's `is_using_v_parameterization_for_sd2` does.
    ProbeSingleFiles,
}

/// One model family's entry in the registry.
#[derive(Debug)]
pub struct Family {
    /// Short id used in model info, e.g. `sd1`.
    pub id: &'static str,
    pub name: &'static str,
    pub encoders: &'static [EncoderSpec],
    pub vector: Vector,
    /// Attention heads in single files, which carry no head count.
    pub head_rule: HeadRule,
    /// Latent scaling factor when no `vae/config.json` says otherwise.
    pub scaling_factor: f64,
    /// The family's comfortable image side in pixels, for eps and for v models.
    pub default_size: i64,
    pub default_size_v: i64,
    pub prediction: PredictionRule,
    /// A1111 conditions an empty negative prompt with zeros (SDXL's `force_zero_embeddings`).
    pub zero_empty_negative: bool,
    /// Whether `clip_skip` applies (A1111 applies it to SD 1.x only; SD 2.x and SDXL use
    /// their fixed layer whatever it says).
    pub clip_skip: bool,
    /// `Some(reason)` for a family recognised but not supported yet.
    pub unsupported: Option<&'static str>,
}

impl Family {
    pub fn default_size(&self, prediction: Prediction) -> i64 {
        match prediction {
            Prediction::Eps => self.default_size,
            Prediction::V => self.default_size_v,
        }
    }

    /// e.g. `CLIP-L + OpenCLIP ViT-bigG`.
    pub fn encoder_names(&self) -> String {
        let names: Vec<&str> = self.encoders.iter().map(|e| e.name).collect();
        names.join(" + ")
    }
}

/// Every family this crate knows, supported or not.
pub const FAMILIES: &[&Family] = &[&sd1::SD1, &sd2::SD2, &sdxl::SDXL, &refused::SDXL_REFINER];

/// The ids of the supported families.
pub fn supported_ids() -> String {
    let ids: Vec<&str> = FAMILIES
        .iter()
        .filter(|f| f.unsupported.is_none())
        .map(|f| f.id)
        .collect();
    ids.join(", ")
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
