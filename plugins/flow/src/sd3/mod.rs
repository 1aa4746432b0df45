//! The Stable Diffusion 3 / 3.5 backend: the MMDiT (`crate::mmdit`), CLIP-L + OpenCLIP bigG
//! (model-parts), T5-XXL (`crate::t5`) and the 16-channel VAE (model-parts), behind host-api.
//!
//! Where things are: `detect` (is this an SD3 checkpoint, and in which layout), `files` (the
//! three layouts read into model keys: diffusers folder, single file, ComfyUI split files),
//! `conditioning` (diffusers' `encode_prompt` with A1111 prompt syntax), `model` (the loaded
//! parts: encode, denoise, decode), `plugin` (host-api `Backend`, exported).
pub mod conditioning;
pub mod detect;
pub mod files;
pub mod model;
pub mod plugin;

pub use detect::{detect, Sd3Layout};
pub use files::{LoadOptions, Sd3Files};
pub use model::Sd3Model;

/// Model-key prefix of CLIP-L (the single file's own).
pub const CLIP_L_PREFIX: &str = "text_encoders.clip_l.transformer.";
/// Model-key prefix of OpenCLIP bigG.
pub const CLIP_G_PREFIX: &str = "text_encoders.clip_g.transformer.";
/// SD3's flow shift where no scheduler config says (diffusers' SD3 scheduler_config.json).
pub const DEFAULT_SHIFT: f64 = 3.0;
