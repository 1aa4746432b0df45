//! Flow-matching transformer backends for hiresfix: Stable Diffusion 3.5 (MMDiT) first, Flux
//! next. Built against host-api and the shared model-parts crate only, as a third party would.
//!
//! Where things are: `mmdit/` (the SD3 / SD 3.5 joint-attention transformer), `t5/` (the T5
//! encoder SD3 and Flux share, and its tokenizer), `sd3/` (the SD 3.5 backend tying them to
//! model-parts' CLIP encoders and 16-channel VAE), `lora/` (LoRAs on the Flux transformer, and
//! telling a LoRA's family by its names).

pub mod flux;
mod layers;
pub mod lora;
pub mod mmdit;
pub mod sd3;
pub mod t5;
