//! Model families as data (in the spirit of ComfyUI's `supported_models.py`): how each is
//! recognised and the hyper-parameters that cannot be read from tensor shapes.
use anyhow::{bail, Result};

use crate::checkpoint::{Checkpoint, Format};
use crate::unet::HeadRule;

/// What the UNet predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prediction {
    /// The added noise (SD 1.x, SD 2.x base).
    Eps,
    /// The velocity `alpha * eps - sigma * x0` (SD 2.x 768-v).
    V,
}

impl Prediction {
    pub fn as_str(self) -> &'static str {
        match self {
            Prediction::Eps => "eps",
            Prediction::V => "v",
        }
    }
}

/// One model family's entry in the registry.
#[derive(Debug)]
pub struct Family {
    /// Short id used in profiles and model info, e.g. `sd1`.
    pub id: &'static str,
    pub name: &'static str,
    /// Whether this crate can load it yet.
    pub supported: bool,
    /// LDM key prefixes every single-file checkpoint of this family has.
    pub markers: &'static [&'static str],
    /// diffusers pipeline classes (`model_index.json` `_class_name`) of this family.
    pub pipelines: &'static [&'static str],
    /// transformers `hidden_act` of the diffusers text encoder, where it tells families apart.
    pub diffusers_text_act: Option<&'static str>,
    pub text_encoder: &'static str,
    /// Text conditioning width of the published models (tiny test models differ).
    pub context_dim: i64,
    pub prediction: Prediction,
    pub head_rule: HeadRule,
    /// Latent scaling factor when no `vae/config.json` says otherwise.
    pub scaling_factor: f64,
    pub latent_channels: i64,
    /// The family's comfortable image side in pixels.
    pub default_size: i64,
}

pub const SD1: Family = Family {
    id: "sd1",
    name: "Stable Diffusion 1.x",
    supported: true,
    markers: &[
        "model.diffusion_model.input_blocks.0.0.weight",
        "cond_stage_model.transformer.",
    ],
    pipelines: &[
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ],
    diffusers_text_act: Some("quick_gelu"),
    text_encoder: "CLIP-L",
    context_dim: 768,
    prediction: Prediction::Eps,
    head_rule: HeadRule::FixedHeads(8),
    scaling_factor: 0.18215,
    latent_channels: 4,
    default_size: 512,
};

pub const SD2: Family = Family {
    id: "sd2",
    name: "Stable Diffusion 2.x",
    supported: false,
    markers: &[
        "model.diffusion_model.input_blocks.0.0.weight",
        "cond_stage_model.model.",
    ],
    pipelines: &[
        "StableDiffusionPipeline",
        "StableDiffusionImg2ImgPipeline",
        "StableDiffusionInpaintPipeline",
    ],
    diffusers_text_act: Some("gelu"),
    text_encoder: "OpenCLIP-H",
    context_dim: 1024,
    prediction: Prediction::Eps,
    head_rule: HeadRule::FixedDim(64),
    scaling_factor: 0.18215,
    latent_channels: 4,
    default_size: 768,
};

pub const SDXL: Family = Family {
    id: "sdxl",
    name: "Stable Diffusion XL",
    supported: false,
    markers: &[
        "model.diffusion_model.input_blocks.0.0.weight",
        "conditioner.embedders.",
    ],
    pipelines: &[
        "StableDiffusionXLPipeline",
        "StableDiffusionXLImg2ImgPipeline",
    ],
    diffusers_text_act: None,
    text_encoder: "CLIP-L + OpenCLIP-G",
    context_dim: 2048,
    prediction: Prediction::Eps,
    head_rule: HeadRule::FixedDim(64),
    scaling_factor: 0.13025,
    latent_channels: 4,
    default_size: 1024,
};

/// Every family this crate knows, most specific first.
pub const FAMILIES: &[&Family] = &[&SDXL, &SD2, &SD1];

/// The registry entry `checkpoint` matches, supported or not; `None` if none does.
pub fn identify(checkpoint: &Checkpoint) -> Option<&'static Family> {
    let found = match checkpoint.format() {
        Format::SingleFile => FAMILIES
            .iter()
            .find(|f| f.markers.iter().all(|m| checkpoint.has_prefix(m))),
        Format::Diffusers => {
            let class = checkpoint.configs().pipeline_class();
            let act = checkpoint.configs().text_hidden_act();
            FAMILIES.iter().find(|f| {
                f.pipelines.contains(&class.as_str())
                    && f.diffusers_text_act.is_none_or(|a| a == act)
            })
        }
    };
    found.copied()
}

/// The family of `checkpoint`, or a clear error if it is unknown or not supported yet.
pub fn detect(checkpoint: &Checkpoint) -> Result<&'static Family> {
    let shown = checkpoint.path().display();
    match identify(checkpoint) {
        Some(family) if family.supported => Ok(family),
        Some(family) => bail!(
            "{shown}: this is a {} checkpoint; family {} is not supported yet (supported: {})",
            family.name,
            family.id,
            supported_ids()
        ),
        None => bail!(
            "{shown}: not a recognised Stable Diffusion checkpoint (no model.diffusion_model.* UNet with a known text encoder) — supported: {}",
            supported_ids()
        ),
    }
}

fn supported_ids() -> String {
    FAMILIES
        .iter()
        .filter(|f| f.supported)
        .map(|f| f.id)
        .collect::<Vec<_>>()
        .join(", ")
}
