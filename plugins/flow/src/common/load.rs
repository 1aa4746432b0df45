//! What a profile adds to a flow checkpoint, for SD3 and Flux alike: `[model] vae` (host-api
//! `LoadRequest.vae`), `[model] text_encoders` (one `text_encoder` option per file),
//! `[model] t5_tokenizer` and `[model] t5` (the options of those names; no interface change).
use std::path::{Path, PathBuf};

use anyhow::bail;
use hiresfix_model_parts::convert::VAE_PREFIX;
use hiresfix_model_parts::vae::files::replace_vae;
use hiresfix_model_parts::weights::Weights;

use host_api::{LoadRequest, OptionValue};

use crate::t5::T5Placement;

/// `LoadRequest.options` key of one split text-encoder file (repeated, one per file).
pub const TEXT_ENCODER_OPTION: &str = "text_encoder";

/// The profile's additions to a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub vae: Option<PathBuf>,
    pub text_encoders: Vec<PathBuf>,
    pub t5_tokenizer: Option<PathBuf>,
    /// `[model] t5`: where T5 runs.
    pub t5_placement: T5Placement,
    /// `[model] weight_dtype = "fp8_e4m3fn"`: the transformer's linear weights held in fp8.
    pub fp8_weights: bool,
}

/// The load option (and `[model]` key) of how a transformer's linear weights are held.
pub const WEIGHT_DTYPE_KEY: &str = "weight_dtype";

/// Whether `options` ask for fp8 linear weights (`weight_dtype = "fp8_e4m3fn"`; `"default"`
/// or none: the run's dtype).
pub fn fp8_weights(options: &[host_api::OptionEntry]) -> anyhow::Result<bool> {
    let Some(entry) = options.iter().find(|e| e.key.as_str() == WEIGHT_DTYPE_KEY) else {
        return Ok(false);
    };
    match &entry.value {
        OptionValue::Text(t) if t.as_str() == "fp8_e4m3fn" => Ok(true),
        OptionValue::Text(t) if t.as_str() == "default" => Ok(false),
        other => bail!(
            "`[model] {WEIGHT_DTYPE_KEY}` = {other:?}: expected \"fp8_e4m3fn\" or \"default\""
        ),
    }
}

/// The profile's additions, from a load request; an unknown `t5` placement is refused.
pub fn load_options(request: &LoadRequest) -> anyhow::Result<LoadOptions> {
    let texts = |key: &str| -> Vec<PathBuf> {
        request
            .options
            .iter()
            .filter(|e| e.key.as_str() == key)
            .filter_map(|e| match &e.value {
                OptionValue::Text(t) => Some(PathBuf::from(t.as_str())),
                _ => None,
            })
            .collect()
    };
    Ok(LoadOptions {
        vae: request.vae_path(),
        text_encoders: texts(TEXT_ENCODER_OPTION),
        t5_tokenizer: texts(crate::t5::TOKENIZER_KEY).into_iter().next(),
        t5_placement: T5Placement::from_options(&request.options)?,
        fp8_weights: fp8_weights(&request.options)?,
    })
}

/// The checkpoint's `weights` with the profile's `[model] vae` in place of its own (the new
/// VAE's config JSON, if the file had one, returned), or its own; none at all is refused in
/// one line naming `checkpoint` and `vae_hint`, the file to set.
pub fn apply_vae(
    weights: &mut Weights,
    options: &LoadOptions,
    checkpoint: &Path,
    vae_hint: &str,
) -> anyhow::Result<Option<serde_json::Value>> {
    let json = match &options.vae {
        Some(vae) => replace_vae(weights, vae)?,
        None => None,
    };
    if !weights.has_prefix(VAE_PREFIX) {
        bail!(
            "{}: no VAE in it — set `[model] vae` to {vae_hint}",
            checkpoint.display()
        );
    }
    Ok(json)
}
