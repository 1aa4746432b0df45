//! Stable Diffusion backends: SD 1.x model code over libtorch.
//!
//! Modules are built under the original LDM (CompVis) weight keys, so a single-file
//! checkpoint loads by name; other layouts are renamed into that space first (`convert`).

pub mod checkpoint;
pub mod clip;
pub mod conditioning;
pub mod convert;
pub mod family;
mod layers;
pub mod model;
pub mod plugin;
pub mod safetensors;
pub mod schedule;
pub mod tiny;
pub mod tokenizer;
pub mod unet;
pub mod vae;
pub mod vae_memory;
pub mod vae_norm;
pub mod vae_tiling;

pub use model::{inspect, Inspection, ModelInfo, Sd1Config, Sd1Model};
pub use tiny::{write_random_checkpoint, TinySd1Config};
pub use vae_tiling::{VaeTilingMode, VaeTilingOptions};
