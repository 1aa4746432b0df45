//! The MMDiT transformer of Stable Diffusion 3 / 3.5 (diffusers `SD3Transformer2DModel`,
//! SD3's `mmditx.py`): joint attention over text and image tokens with adaLN-Zero
//! modulation, 2×2 patches, a positional embedding cropped from a max grid, SD 3.5's q/k
//! RMSNorm and SD 3.5 medium's extra image self-attention (`dual_attention_layers`).
//!
//! Where things are: `config` (hyper-parameters, from config.json or inferred from a file),
//! `layers` (linear, norms, attention), `embeddings` (patches, positions, timestep + pooled
//! text), `blocks` (joint blocks, final layer), `model` (the forward), `layout` (the two key
//! layouts and the diffusers → original renames), `load` (tensors read by `common::weights`).
mod blocks;
mod config;
mod embeddings;
mod layers;
mod layout;
mod load;
mod model;

pub use crate::common::weights::{open as open_safetensors, TensorSource};
pub use config::MmDitConfig;
pub use embeddings::timestep_features;
pub use layout::{Layout, Recipe, SINGLE_FILE_PREFIX};
pub use load::{load, load_from, LoadedMmDit};
pub use model::MmDit;
