//! Per-sampler knobs from the profile (`sampler_options = { eta = 1.0 }`).
use abi_stable::std_types::RString;
use abi_stable::StableAbi;

use crate::error::{Error, Result};

#[repr(u8)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub enum OptionValue {
    Number(f64),
    Text(RString),
    Flag(bool),
}

#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct OptionEntry {
    pub key: RString,
    pub value: OptionValue,
}

/// The keys of `extra` lists added in 1.x, each with the version that added it (a side that
/// does not know a key ignores it; a missing key means "not known").
pub mod keys {
    /// `ModelInfo.extra`, `CheckpointInfo.extra` and `PatchModel.extra` (1.1.0): the UNet's number of input blocks
    /// (`input_blocks.0` … `input_blocks.N-1`), for patches that name a block.
    pub const UNET_INPUT_BLOCKS: &str = "unet_input_blocks";
    /// `ModelInfo.extra` and `CheckpointInfo.extra` (1.2.0): the channels of the image
    /// conditioning the UNet takes after the latent's (an inpainting checkpoint: 5, the mask
    /// then the masked image's latent); absent or 0: none. See `Backend::set_concat`.
    pub const CONCAT_CHANNELS: &str = "concat_channels";
    /// `PatchModel.extra` (1.4.0): the seeds of the images the pass denoises, in the order of
    /// their rows in a UNet call, as decimal integers joined by `,` (e.g. `"42,43"`); each
    /// image's rows (its CFG rows) come together. Patches with random choices (HyperTile,
    /// ToMe) draw them from these. Absent: the patch is made for a check, not a run.
    pub const SEEDS: &str = "seeds";
    /// `ModelInfo.extra` and `CheckpointInfo.extra` (1.5.0): the model's sampling for people
    /// (`info`), as text: `discrete`, `flow (shift 3)`, or a flow model's shift rule (e.g.
    /// `flow (shift by size: 0.5 at 256 tokens to 1.15 at 4096)`). What the host samples
    /// with is `Backend::model_sampling`, never this text.
    pub const MODEL_SAMPLING: &str = "model_sampling";
    /// `EncodeRequest.options` (1.5.0, with the Flux backend; no layout change): the pass's
    /// distilled guidance (Flux dev's `guidance`, a number), sent when the profile or the pass
    /// sets one; a backend without a guidance embedding ignores it, one with it takes its own
    /// default (3.5) when absent.
    pub const GUIDANCE: &str = "guidance";
}

/// Read access to the options a plugin received; a missing key yields the default.
#[derive(Clone, Copy)]
pub struct Options<'a>(pub &'a [OptionEntry]);

impl<'a> Options<'a> {
    fn get(&self, key: &str) -> Option<&'a OptionValue> {
        self.0
            .iter()
            .find(|e| e.key.as_str() == key)
            .map(|e| &e.value)
    }

    /// The number under `key`, if there is one (a fact of an `extra` list).
    pub fn get_number(&self, key: &str) -> Option<f64> {
        match self.get(key) {
            Some(OptionValue::Number(v)) => Some(*v),
            _ => None,
        }
    }

    pub fn number(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(OptionValue::Number(v)) => Ok(*v),
            Some(other) => Err(Error(format!(
                "option `{key}` must be a number, got {other:?}"
            ))),
        }
    }

    pub fn text(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.get(key) {
            None => Ok(default),
            Some(OptionValue::Text(v)) => Ok(v.as_str()),
            Some(other) => Err(Error(format!(
                "option `{key}` must be a string, got {other:?}"
            ))),
        }
    }

    pub fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(OptionValue::Flag(v)) => Ok(*v),
            Some(other) => Err(Error(format!(
                "option `{key}` must be true or false, got {other:?}"
            ))),
        }
    }
}
