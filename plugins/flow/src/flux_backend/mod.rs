//! The Flux.1 backend (dev and schnell): the Flux transformer (`crate::flux`), CLIP-L (model-parts,
//! pooled only), T5-XXL (`crate::t5`) and the 16-channel `ae` (model-parts), behind host-api as
//! two families, `flux-dev` (a guidance embedding: distilled guidance, default 3.5) and
//! `flux-schnell` (none).
//!
//! Where things are: `names` (key prefixes and defaults), `detect` (is this a Flux checkpoint,
//! which variant, which layout), `shift` (the flow shift: by the image's token count, or fixed),
//! `files` (the layouts read: diffusers folder, BFL or all-in-one single file, split text
//! encoders and `ae`), `conditioning` (diffusers' `FluxPipeline.encode_prompt` with A1111 prompt
//! syntax), `model` (the loaded parts: encode, denoise, decode), `plugin` (host-api `Backend`),
//! `inspect` (a checkpoint's facts from its headers), `estimate` (`check`'s memory table) and
//! `tools` (`info`, `check`).
pub mod conditioning;
pub mod detect;
pub mod estimate;
pub mod files;
pub mod inspect;
pub mod model;
pub mod names;
pub mod plugin;
pub mod shift;
pub mod tools;

pub use detect::{detect, Detected, FluxLayout};
pub use files::FluxFiles;
pub use model::FluxModel;
pub use plugin::{FluxBackend, FluxDev, FluxSchnell};
pub use shift::ShiftRule;
