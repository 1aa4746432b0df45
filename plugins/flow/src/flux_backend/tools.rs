//! The Flux families' command-line tools (`hiresfix info`, `check`'s memory table): host API's
//! optional [`BackendTools`] table, from the checkpoint's headers ([`super::inspect`]).
use std::path::Path;

use host_api::options::keys as host_keys;
use host_api::{BackendTools, CheckpointInfo, OptionEntry, OptionValue, Result};

use super::inspect::FluxHeaders;
use super::plugin::{FluxBackend, FluxVariant};
use crate::common::{err, number};
use crate::flux::Variant;

/// `CheckpointInfo.extra` keys of the Flux backend.
pub mod keys {
    /// 1 when the transformer has dev's guidance embedding, else 0 (number).
    pub const GUIDANCE_EMBEDDING: &str = "flux_guidance_embedding";
    /// Double-stream and single-stream blocks (numbers).
    pub const DOUBLE_BLOCKS: &str = "flux_double_blocks";
    pub const SINGLE_BLOCKS: &str = "flux_single_blocks";
    /// The VAE's latent shift factor (number).
    pub const VAE_SHIFT: &str = "vae_shift_factor";
}

/// `hiresfix info`'s facts of a Flux checkpoint, headers only.
pub fn checkpoint_info(path: &Path) -> anyhow::Result<CheckpointInfo> {
    let found = FluxHeaders::read(path)?;
    let scale = found
        .vae
        .as_ref()
        .map(|v| v.latent_scale())
        .unwrap_or(hiresfix_model_parts::vae::LatentScale::FLUX);
    let vae_factor = found.vae.as_ref().map_or(8, |v| v.spatial_factor()) as u32;
    let whole = found.vae.is_some() || found.clip_l.is_some() || found.t5.is_some();
    let format = match (found.layout, whole) {
        (super::FluxLayout::SingleFile, false) => {
            "transformer file (VAE and text encoders from the profile)".to_string()
        }
        (super::FluxLayout::SingleFile, true) => "single file (all-in-one)".to_string(),
        (layout, _) => layout.describe().to_string(),
    };
    let t = &found.transformer;
    let family = found.variant.family();
    Ok(CheckpointInfo {
        family: family.into(),
        family_name: found.describe().as_str().into(),
        prediction: "flow".into(),
        prediction_source: format!("{}, {}", found.shift.rule(), found.shift_source)
            .as_str()
            .into(),
        format: format.as_str().into(),
        latent_channels: (t.in_channels / 4) as u32,
        vae_scale_factor: vae_factor,
        latent_scaling_factor: scale.scaling,
        text_encoders: found.describe_text_encoders().as_str().into(),
        unet_parameters: found.transformer_parameters(),
        stored_dtype: crate::common::weights::stored_dtype(&found.weights)
            .as_str()
            .into(),
        file_bytes: found.weights.file_bytes(),
        text_encoder_fingerprint: format!(
            "flux:{:?}:{}",
            found.other_parameters(),
            found.describe_text_encoders()
        )
        .as_str()
        .into(),
        default_size: 1024,
        extra: vec![
            number(
                keys::GUIDANCE_EMBEDDING,
                f64::from(u8::from(found.variant == Variant::Dev)),
            ),
            number(keys::DOUBLE_BLOCKS, t.num_layers as f64),
            number(keys::SINGLE_BLOCKS, t.num_single_layers as f64),
            number(keys::VAE_SHIFT, scale.shift),
            OptionEntry {
                key: host_keys::MODEL_SAMPLING.into(),
                value: OptionValue::Text(found.shift.describe().as_str().into()),
            },
        ]
        .into(),
    })
}

impl<V: FluxVariant> BackendTools for FluxBackend<V> {
    fn inspect(checkpoint: &Path, _probe: bool) -> Result<CheckpointInfo> {
        checkpoint_info(checkpoint).map_err(err)
    }

    fn estimate_memory(request: &host_api::MemoryRequest) -> Result<host_api::MemoryEstimate> {
        super::estimate::estimate(request).map_err(err)
    }
}
