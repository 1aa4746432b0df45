//! The SD3 family's command-line tools (`hiresfix info`, `check`'s memory table): host API's
//! optional [`BackendTools`] table, from the checkpoint's headers ([`super::inspect`]).
use std::path::Path;

use host_api::{BackendTools, CheckpointInfo, Result};

use super::inspect::Sd3Headers;
use super::plugin::{Sd3Backend, FAMILY};
use crate::common::{err, number};

/// `CheckpointInfo.extra` keys of the SD3 backend.
pub mod keys {
    /// The flow shift (number).
    pub const FLOW_SHIFT: &str = "flow_shift";
    /// The VAE's latent shift factor (number).
    pub const VAE_SHIFT: &str = "vae_shift_factor";
    /// The MMDiT's joint blocks (number).
    pub const MMDIT_BLOCKS: &str = "mmdit_blocks";
    /// Blocks with SD 3.5 medium's second self-attention (number).
    pub const DUAL_ATTENTION_BLOCKS: &str = "mmdit_dual_attention_blocks";
}

/// `hiresfix info`'s facts of an SD3 checkpoint, headers only.
pub fn checkpoint_info(path: &Path) -> anyhow::Result<CheckpointInfo> {
    let found = Sd3Headers::read(path)?;
    let scale = found
        .vae
        .as_ref()
        .map(|v| v.latent_scale())
        .unwrap_or(hiresfix_model_parts::vae::LatentScale::SD3);
    let vae_factor = found.vae.as_ref().map_or(8, |v| v.spatial_factor()) as u32;
    let format = match (found.layout, found.vae.is_some() || found.clip_l.is_some()) {
        (super::Sd3Layout::SingleFile, false) => {
            "split transformer file (VAE and text encoders from the profile)".to_string()
        }
        (layout, _) => layout.describe().to_string(),
    };
    let t = &found.transformer;
    let stored_dtype = crate::common::weights::stored_dtype(&found.weights);
    // SD 3.5 added the per-head q/k RMSNorm; SD 3.0 medium has none.
    let version = match t.qk_norm {
        true => "Stable Diffusion 3.5",
        false => "Stable Diffusion 3",
    };
    Ok(CheckpointInfo {
        family: FAMILY.into(),
        family_name: format!("{version}, MMDiT {}", found.describe_transformer())
            .as_str()
            .into(),
        prediction: "flow".into(),
        prediction_source: format!("shift {:?} from {}", found.shift, found.shift_source)
            .as_str()
            .into(),
        format: format.as_str().into(),
        latent_channels: t.in_channels as u32,
        vae_scale_factor: vae_factor,
        latent_scaling_factor: scale.scaling,
        text_encoders: found.describe_text_encoders().as_str().into(),
        unet_parameters: found.transformer_parameters(),
        stored_dtype: stored_dtype.as_str().into(),
        file_bytes: found.weights.file_bytes(),
        text_encoder_fingerprint: found.text_fingerprint().as_str().into(),
        default_size: 1024,
        extra: vec![
            number(keys::FLOW_SHIFT, found.shift),
            number(keys::VAE_SHIFT, scale.shift),
            number(keys::MMDIT_BLOCKS, t.num_layers as f64),
            number(
                keys::DUAL_ATTENTION_BLOCKS,
                t.dual_attention_layers.len() as f64,
            ),
        ]
        .into(),
    })
}

impl BackendTools for Sd3Backend {
    fn inspect(checkpoint: &Path, _probe: bool) -> Result<CheckpointInfo> {
        checkpoint_info(checkpoint).map_err(err)
    }

    fn estimate_memory(request: &host_api::MemoryRequest) -> Result<host_api::MemoryEstimate> {
        super::estimate::estimate(request).map_err(err)
    }
}
