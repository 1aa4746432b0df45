//! Stable Diffusion XL refiner (sd_xl_refiner.yaml, ComfyUI `SDXLRefiner`): OpenCLIP ViT-bigG
//! alone (its penultimate layer, 1280 wide; no CLIP-L), SDXL's latent space (×0.13025), and a
//! 2560-wide vector: pooled text ⊕ embedded (original size, crop top-left, aesthetic score) —
//! no target size. The aesthetic score is A1111's `sdxl_refiner_high_aesthetic_score` (6.0)
//! for a prompt and `sdxl_refiner_low_aesthetic_score` (2.5) for a negative prompt, as
//! diffusers' `aesthetic_score` / `negative_aesthetic_score` defaults.
use super::sdxl;
use super::spec::{EncoderSpec, Family, Vector};
use crate::unet::config::UNetConfig;

/// SDXL's bigG, alone and first in the refiner's single files.
pub const REFINER_BIGG: EncoderSpec = EncoderSpec {
    ldm_prefix: "conditioner.embedders.0.model.",
    ..sdxl::OPENCLIP_BIGG
};

pub const SDXL_REFINER: Family = Family {
    id: "sdxl-refiner",
    name: "Stable Diffusion XL refiner",
    encoders: &[REFINER_BIGG],
    vector: Vector::PooledTextSizesAndAesthetic,
    ..sdxl::SDXL
};

/// A1111's default aesthetic scores: (prompt, negative prompt).
pub const AESTHETIC_SCORES: (f32, f32) = (6.0, 2.5);

/// sd_xl_refiner.yaml's UNet: 384 channels over four levels, attention (4 deep) at the middle
/// two only, 1280-wide text, `label_emb` over the 2560-wide vector.
pub fn unet() -> UNetConfig {
    let mut cfg = UNetConfig {
        model_channels: 384,
        channel_mult: vec![1, 2, 4, 4],
        num_res_blocks: vec![2, 2, 2, 2],
        transformer_depth: vec![0, 4, 4, 0],
        mid_transformer_depth: 4,
        context_dim: 1280,
        adm_in_channels: Some(2560),
        ..sdxl::unet()
    };
    cfg.heads_by_rule(SDXL_REFINER.head_rule);
    cfg
}
