//! `host-api`: the stable interface between the hiresfix host and its plugins.
//!
//! A plugin dylib depends on this crate alone, implements [`Sampler`], [`Schedule`],
//! [`Upscaler`], [`Patch`] or [`Backend`] with ordinary tch code (the re-exported [`tch`], so it cannot pick
//! a mismatched one), and exports them with [`export_plugin!`]. Everything that crosses the
//! boundary is `abi_stable`-checked; errors come back as values and panics are caught.
pub mod backend;
pub mod backend_decl;
pub mod error;
pub mod model_box;
pub mod options;
pub mod patch;
pub mod plugin;
pub mod prompt;
pub mod sampler;
pub mod sampling;
pub mod schedule;
pub mod sigmas;
mod strings;
pub mod tensor;
pub mod upscaler;

pub use abi_stable;
pub use tch;

pub use backend::{
    Backend, BackendTools, CheckpointInfo, EmbeddingSpec, EmbeddingState, EncodeRequest,
    LoadRequest, LoraSpec, MemoryEstimate, MemoryRequest, MergeInput, MergeRequest, ModelInfo,
    PromptSpec,
};
pub use backend_decl::BackendDecl;
pub use error::{Error, Result};
pub use model_box::ModelBox;
pub use options::{keys, OptionEntry, OptionValue, Options};
pub use patch::{
    AttentionCtx, AttentionFn, HookCtx, PassSigmas, Patch, PatchBox, PatchDecl, PatchModel,
};
pub use plugin::{Handshake, PluginModule, PluginRef};
pub use sampler::{SampleCtx, Sampler, SamplerCallbacks, SamplerDecl};
pub use sampling::ModelSampling;
pub use schedule::{Schedule, ScheduleDecl};
pub use sigmas::ModelSigmas;
pub use tensor::{TensorBox, TensorRef};
pub use upscaler::{UpscaleCtx, Upscaler, UpscalerDecl, VaeCallbacks};

#[cfg(test)]
mod tests {
    #[test]
    fn export_plugin_names_the_symbol_abi_stable_looks_up() {
        assert_eq!(
            crate::__root_symbol!(),
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
