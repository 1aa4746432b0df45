//! Stable Diffusion 1.x: OpenAI CLIP-L (last layer), eps prediction, 4-channel latent ×0.18215.
use super::spec::{EncoderSpec, Family, Pad, PredictionRule, TextLayout, Vector};
use crate::text::clip::{Activation, ClipConfig, TextLayer};
use crate::unet::config::{HeadRule, UNetConfig};

pub const CLIP_L: EncoderSpec = EncoderSpec {
    name: "CLIP-L",
    ldm_prefix: "cond_stage_model.transformer.",
    ldm_layout: TextLayout::HfClip,
    diffusers_folder: "text_encoder",
    activation: Activation::QuickGelu,
    layer: TextLayer::LastNormed,
    unused_ldm_layers: 0,
    pooled: false,
    pad: Pad::Eos,
    embedding_key: "clip_l",
};

pub const SD1: Family = Family {
    id: "sd1",
    name: "Stable Diffusion 1.x",
    encoders: &[CLIP_L],
    vector: Vector::None,
    head_rule: HeadRule::FixedHeads(8),
    scaling_factor: 0.18215,
    default_size: 512,
    default_size_v: 512,
    prediction: PredictionRule::Eps,
    zero_empty_negative: false,
    clip_skip: true,
    unsupported: None,
};

/// v1-inference.yaml's UNet.
pub fn unet() -> UNetConfig {
    let mut cfg = UNetConfig {
        in_channels: 4,
        out_channels: 4,
        model_channels: 320,
        channel_mult: vec![1, 2, 4, 4],
        num_res_blocks: vec![2, 2, 2, 2],
        transformer_depth: vec![1, 1, 1, 0],
        mid_transformer_depth: 1,
        heads: Vec::new(),
        mid_heads: 0,
        context_dim: 768,
        linear_projection: false,
        time_embed_dim: 1280,
        adm_in_channels: None,
    };
    cfg.heads_by_rule(SD1.head_rule);
    cfg
}

/// OpenAI CLIP ViT-L/14's text model.
pub fn clip_l() -> ClipConfig {
    ClipConfig::default()
}
