//! The Stable Diffusion 3 / 3.5 backend: the MMDiT (`crate::mmdit`), CLIP-L + OpenCLIP bigG
//! (model-parts), T5-XXL (`crate::t5`) and the 16-channel VAE (model-parts), behind host-api.
//!
//! Where things are: `detect` (is this an SD3 checkpoint, and in which layout), `files` (the
//! three layouts read into model keys: diffusers folder, single file, ComfyUI split files),
//! `conditioning` (diffusers' `encode_prompt` with A1111 prompt syntax), `model` (the loaded
//! parts: encode, denoise, decode), `plugin` (host-api `Backend`, exported), `inspect` (the
//! checkpoint's facts from its headers), `estimate` (`check`'s memory table) and `tools`
//! (host-api `BackendTools`: `info`, `check`).
pub mod conditioning;
pub mod detect;
pub mod estimate;
pub mod files;
pub mod inspect;
pub mod model;
pub mod names;
pub mod plugin;
pub mod tools;

pub use detect::{detect, Sd3Layout};
pub use files::Sd3Files;
pub use model::Sd3Model;
pub use names::{CLIP_G_PREFIX, CLIP_L_PREFIX, DEFAULT_SHIFT};
