//! Flow-matching transformer backends for hiresfix: Stable Diffusion 3.5 (MMDiT) first, Flux
//! next. Built against host-api and the shared model-parts crate only, as a third party would.
//!
//! Where things are: `mmdit/` (the SD3 / SD 3.5 joint-attention transformer), `t5/` (the T5
//! encoder SD3 and Flux share, and its tokenizer), `sd3/` (the SD 3.5 backend tying them to
//! model-parts' CLIP encoders and 16-channel VAE), `lora/` (LoRAs on the Flux transformer, and
//! telling a LoRA's family by its names), `flux/` (the Flux.1 transformer) and
//! `flux_backend/` (the Flux.1 dev / schnell backend).

pub mod common;
pub mod flux;
pub mod flux_backend;
mod layers;
pub mod lora;
pub mod mmdit;
pub mod sd3;
pub mod t5;

// The plugin's families: SD 3.x, Flux.1 dev and schnell.
host_api::export_plugin! {
    backends_with_tools: [
        sd3::plugin::Sd3Backend,
        flux_backend::FluxDev,
        flux_backend::FluxSchnell,
    ],
}
