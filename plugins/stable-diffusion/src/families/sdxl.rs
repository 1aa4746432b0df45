//! Stable Diffusion XL base: CLIP-L and OpenCLIP ViT-bigG, both at their penultimate layer
//! (no final norm), concatenated to 2048 wide; bigG's pooled, projected end-of-text token plus
//! the embedded (original size, crop, target size) ids condition the UNet through `label_emb`
//! (sgm `GeneralConditioner`); latent ×0.13025; 1024 px. An empty negative prompt conditions
//! with zeros, as in A1111.
use super::sd1;
use super::spec::{EncoderSpec, Family, Pad, PredictionRule, TextLayout, Vector};
use crate::text::clip::{Activation, ClipConfig, TextLayer};
use crate::unet::config::{HeadRule, UNetConfig};

pub const CLIP_L: EncoderSpec = EncoderSpec {
    name: "CLIP-L",
    ldm_prefix: "conditioner.embedders.0.transformer.",
    ldm_layout: TextLayout::HfClip,
    diffusers_folder: "text_encoder",
    activation: Activation::QuickGelu,
    layer: TextLayer::Penultimate,
    unused_ldm_layers: 0,
    pooled: false,
    pad: Pad::Eos,
    embedding_key: "clip_l",
};

pub const OPENCLIP_BIGG: EncoderSpec = EncoderSpec {
    name: "OpenCLIP ViT-bigG",
    ldm_prefix: "conditioner.embedders.1.model.",
    ldm_layout: TextLayout::OpenClip,
    diffusers_folder: "text_encoder_2",
    activation: Activation::Gelu,
    layer: TextLayer::Penultimate,
    unused_ldm_layers: 0,
    pooled: true,
    pad: Pad::Zero,
    embedding_key: "clip_g",
};

pub const SDXL: Family = Family {
    id: "sdxl",
    name: "Stable Diffusion XL",
    encoders: &[CLIP_L, OPENCLIP_BIGG],
    vector: Vector::PooledTextAndSizes,
    head_rule: HeadRule::FixedDim(64),
    scaling_factor: 0.13025,
    default_size: 1024,
    default_size_v: 1024,
    prediction: PredictionRule::Eps,
    zero_empty_negative: true,
    clip_skip: false,
    unsupported: None,
};

/// sd_xl_base.yaml's UNet: three levels, no attention at the first, 10 transformer blocks
/// deep at the bottom, 2048-wide text, `label_emb` over the 2816-wide vector.
pub fn unet() -> UNetConfig {
    let mut cfg = UNetConfig {
        channel_mult: vec![1, 2, 4],
        num_res_blocks: vec![2, 2, 2],
        transformer_depth: vec![0, 2, 10],
        mid_transformer_depth: 10,
        context_dim: 2048,
        linear_projection: true,
        adm_in_channels: Some(2816),
        ..sd1::unet()
    };
    cfg.heads_by_rule(SDXL.head_rule);
    cfg
}

/// OpenCLIP ViT-bigG/14's text tower with its 1280-wide projection.
pub fn openclip_bigg() -> ClipConfig {
    ClipConfig {
        hidden_size: 1280,
        intermediate_size: 5120,
        num_layers: 32,
        num_heads: 20,
        activation: Activation::Gelu,
        projection_dim: Some(1280),
        ..ClipConfig::default()
    }
}
