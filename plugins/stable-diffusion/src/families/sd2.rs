//! Stable Diffusion 2.x: OpenCLIP ViT-H (its penultimate layer through the final norm: single
//! files keep 24 layers, the model runs 23), linear `proj_in`, 64-wide heads; eps (2.x base,
//! 512 px) or v prediction (768-v), told apart by A1111's UNet probe in single files.
use super::sd1;
use super::spec::{EncoderSpec, Family, Pad, PredictionRule, TextLayout, Vector};
use crate::text::clip::{Activation, ClipConfig, TextLayer};
use crate::unet::config::{HeadRule, UNetConfig};

pub const OPENCLIP_H: EncoderSpec = EncoderSpec {
    name: "OpenCLIP ViT-H",
    ldm_prefix: "cond_stage_model.model.",
    ldm_layout: TextLayout::OpenClip,
    diffusers_folder: "text_encoder",
    activation: Activation::Gelu,
    layer: TextLayer::LastNormed,
    unused_ldm_layers: 1,
    pooled: false,
    pad: Pad::Zero,
    embedding_key: "clip_h",
};

pub const SD2: Family = Family {
    id: "sd2",
    name: "Stable Diffusion 2.x",
    encoders: &[OPENCLIP_H],
    vector: Vector::None,
    head_rule: HeadRule::FixedDim(64),
    scaling_factor: 0.18215,
    default_size: 512,
    default_size_v: 768,
    prediction: PredictionRule::ProbeSingleFiles,
    zero_empty_negative: false,
    clip_skip: false,
    unsupported: None,
};

/// v2-inference(-v).yaml's UNet: SD 1.x's with 1024-wide text, linear projections and
/// 64-wide heads.
pub fn unet() -> UNetConfig {
    let mut cfg = UNetConfig {
        context_dim: 1024,
        linear_projection: true,
        ..sd1::unet()
    };
    cfg.heads_by_rule(SD2.head_rule);
    cfg
}

/// OpenCLIP ViT-H/14's text tower, as the model runs it (23 of its 24 layers).
pub fn openclip_h() -> ClipConfig {
    ClipConfig {
        hidden_size: 1024,
        intermediate_size: 4096,
        num_layers: 23,
        num_heads: 16,
        activation: Activation::Gelu,
        ..ClipConfig::default()
    }
}
