//! A CLIP text encoder's hyper-parameters read from a checkpoint: its family slot's prefix and
//! activation, and its diffusers `config.json` where there is one (the reading itself is
//! shared: `ClipConfig::infer` in crates/model-parts).
use anyhow::Result;

use crate::checkpoint::Checkpoint;
use crate::families::EncoderSpec;
use crate::text::clip::ClipConfig;
use hiresfix_model_parts::text::clip_config::ClipSlot;

/// The config of `spec`'s encoder in `ckpt`; the activation of single files is the family's.
pub fn clip_config(ckpt: &Checkpoint, spec: &EncoderSpec) -> Result<ClipConfig> {
    let json = ckpt.configs().text_encoder(spec.diffusers_folder);
    let slot = ClipSlot {
        name: spec.name,
        prefix: spec.ldm_prefix,
        activation: spec.activation,
        pooled: spec.pooled,
        config: json.map(|j| (spec.diffusers_folder, j)),
    };
    ClipConfig::infer(ckpt, &slot)
}
