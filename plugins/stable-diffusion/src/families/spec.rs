//! The types a family entry is written in (ComfyUI's `supported_models_base.py`): what a
//! family's text encoders, conditioning, head rule, latent scale and prediction rule are. Plain
//! data: nothing here reads a checkpoint.
use anyhow::{bail, Result};

use crate::text::clip::{Activation, TextLayer};
use crate::unet::config::HeadRule;

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
    /// The key of this encoder's vectors in a multi-encoder textual-inversion file (A1111's
    /// `textual_inversion_key`: SDXL's `clip_l` and `clip_g`).
    pub embedding_key: &'static str,
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

/// What a UNet takes besides the noisy latent, told by its input convolution's channels
/// (`input_blocks.0.0.weight` `[model_channels, in_channels, 3, 3]`) against the latent's
/// 4: ldm's `c_concat` image conditioning, concatenated after the latent's channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UNetInput {
    /// The input convolution's channels.
    pub in_channels: i64,
    /// Channels of image conditioning after the latent's (`concat_channels`).
    pub concat: i64,
    /// e.g. `inpainting`.
    pub kind: &'static str,
    /// Whether this crate runs it.
    pub supported: bool,
}

/// Every UNet input layout known (ComfyUI's `model_detection.py`, A1111's
/// `sd_models_config.py`); any other channel count is refused as unknown.
pub const UNET_INPUTS: &[UNetInput] = &[
    UNetInput {
        in_channels: 4,
        concat: 0,
        kind: "text-to-image",
        supported: true,
    },
    UNetInput {
        in_channels: 9,
        concat: 5,
        kind: "inpainting",
        supported: true,
    },
    UNetInput {
        in_channels: 8,
        concat: 4,
        kind: "instruct-pix2pix",
        supported: false,
    },
    UNetInput {
        in_channels: 5,
        concat: 1,
        kind: "depth-to-image",
        supported: false,
    },
];

impl UNetInput {
    /// The entry for a UNet taking `in_channels`, `None` when unknown.
    pub fn of(in_channels: i64) -> Option<&'static UNetInput> {
        UNET_INPUTS.iter().find(|i| i.in_channels == in_channels)
    }
}
