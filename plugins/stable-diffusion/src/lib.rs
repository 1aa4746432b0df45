//! Stable Diffusion model backends over libtorch: SD 1.x, SD 2.x (eps and v) and SDXL base
//! through one model whose shape comes from the checkpoint.
//!
//! Where things are: `families/` (one file per family, as data), `detect/` (what a
//! checkpoint is: its family, what is refused, its architecture), `checkpoint/` (reading files
//! and folders), `convert/` (one key-rename module per foreign layout), `text/` (prompts, CLIP,
//! textual-inversion embeddings, the conditioner), `unet/`, `denoiser` (eps / v), `vae/`, and `model/` (the assembled model:
//! loading, the patcher, conditioning batching, the UNet call).
//! Modules are built under the original LDM (CompVis) weight keys, so a single-file
//! checkpoint loads by name; other layouts are renamed into that space first.

pub mod checkpoint;
pub mod convert;
pub mod denoiser;
pub mod detect;
pub mod estimate;
pub mod families;
pub mod inspect;
pub mod lora;
pub mod merge;
pub mod model;
pub mod patches;
pub mod plugin;
pub mod random;
pub mod schedule;
pub mod text;
mod tools;
pub mod unet;

// Shared with the flow backend (crates/model-parts).
use hiresfix_model_parts::{guard, layers};
pub use hiresfix_model_parts::{health, vae};

pub use inspect::{inspect, Inspection};
pub use model::{LoadOptions, ModelConfig, ModelInfo, SdModel};
pub use random::{write_random_checkpoint, RandomModel};
pub use text::conditioner::{Conditioning, PromptInput};
pub use vae::tiling::{VaeTilingMode, VaeTilingOptions};
