//! What the flow backends (SD3, Flux) share beyond the model parts: errors and facts across the
//! plugin boundary, what a profile adds to a checkpoint (`load`), a diffusers folder's
//! transformer class and VAE, the VAE run in the model's
//! dtype, the denoiser's batching of conditionings into transformer calls, the prompts a model
//! encoded (`prompts`), and the
//! transformers' weight reader (`weights`).
pub mod denoise;
pub mod estimate;
pub mod folder;
pub mod load;
pub mod prompts;
pub mod vae;
pub mod weights;

use host_api::{Error, OptionEntry, OptionValue};

pub use load::{load_options, LoadOptions, TEXT_ENCODER_OPTION};

/// An error for the host: the whole cause chain on one line.
pub fn err(e: anyhow::Error) -> Error {
    Error::new(format!("{e:#}"))
}

/// A numeric fact of an `extra` list.
pub fn number(key: &str, value: f64) -> OptionEntry {
    OptionEntry {
        key: key.into(),
        value: OptionValue::Number(value),
    }
}
