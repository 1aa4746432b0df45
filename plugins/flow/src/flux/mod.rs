//! The Flux.1 transformer (dev and schnell; diffusers `FluxTransformer2DModel`, Black Forest
//! Labs' `flux/model.py`): 19 double-stream blocks (separate image and text weights, joint
//! attention), 38 single-stream blocks (one fused linear into attention + MLP), 3-axis RoPE
//! over (text, row, column) ids, q/k RMSNorm, timestep + pooled CLIP (+ guidance for dev)
//! modulation. It works on packed latents: 2×2 patches of the 16-channel latent, 64 values per
//! token ([`pack`], [`unpack`], [`image_ids`]).
//!
//! Where things are: `config` (hyper-parameters, from the weights), `layers` (linear, norms,
//! attention), `embeddings` (timestep features, packing, ids, RoPE), `blocks` (double, single,
//! final layer), `model` (the forward), `layout` (the BFL and diffusers key layouts: the model is
//! built under BFL names, diffusers names are renamed into them), `load` (tensors read by
//! `common::weights`).
mod blocks;
mod config;
mod embeddings;
mod layers;
mod layout;
mod load;
mod model;

pub use crate::common::weights::{open as open_weights, TensorSource};
pub use blocks::{DoubleBlock, SingleBlock};
pub use config::{FluxConfig, Variant};
pub use embeddings::{image_ids, pack, rope, text_ids, timestep_features, unpack};
pub use layout::{Layout, Recipe, SINGLE_FILE_PREFIX};
pub use load::{load, load_held, load_on, load_with, read_config, LoadedFlux};
pub use model::Flux;
