//! A checkpoint described without loading it (`hiresfix info`): family, prediction type,
//! architecture, stored dtype, size. Only an SD 2.x single file with no prediction marker
//! loads its UNet, for A1111's probe.
use std::path::Path;

use anyhow::Result;
use tch::nn::VarStore;
use tch::{Device, Kind};

use crate::checkpoint::{Checkpoint, Format};
use crate::convert::UNET_PREFIX;
use crate::denoiser;
use crate::families::{Family, Prediction};
use crate::guard::guarded;
use crate::model::{probe_mean, stated_prediction, unet_module, ModelConfig, PredictionSource};

#[derive(Debug, Clone)]
pub struct Inspection {
    pub family: &'static Family,
    pub format: Format,
    pub config: ModelConfig,
    /// `None` when only the UNet probe (not run) could tell.
    pub prediction: Option<Prediction>,
    pub prediction_source: PredictionSource,
    /// The dtype most parameters are stored in (`F16`, `F32`, `F8_E4M3`, ...), with its share
    /// when another floating dtype holds the rest ([`Checkpoint::dtype_summary`]).
    pub stored_dtype: String,
    /// Bytes on disk of every weight file.
    pub file_bytes: u64,
    pub unet_parameters: u64,
    /// See [`text_fingerprint`].
    pub text_fingerprint: String,
}

/// Reads `checkpoint`'s headers; a refused file is an error saying why. `probe`: whether an SD
/// 2.x single file without a prediction marker may load its UNet for A1111's probe.
pub fn inspect(checkpoint: &Path, probe: bool) -> Result<Inspection> {
    let ckpt = Checkpoint::open(checkpoint)?;
    let family = ckpt.family()?;
    let config = ModelConfig::infer(&ckpt, family)?;
    let (prediction, prediction_source) = match stated_prediction(&ckpt, family, None)? {
        Some((p, source)) => (Some(p), source),
        None if !probe => (None, PredictionSource::UNetProbe),
        None => {
            let mean = probe_unet(&ckpt, &config)?;
            let p = match denoiser::probe_says_v(mean) {
                true => Prediction::V,
                false => Prediction::Eps,
            };
            (Some(p), PredictionSource::UNetProbe)
        }
    };
    Ok(Inspection {
        family,
        format: ckpt.format(),
        prediction,
        prediction_source,
        stored_dtype: ckpt.dtype_summary(),
        file_bytes: ckpt.file_bytes(),
        unet_parameters: ckpt.parameters_under(UNET_PREFIX),
        text_fingerprint: text_fingerprint(&ckpt, family)?,
        config,
    })
}

/// A fingerprint of the text encoders: FNV-1a over their final norms and position tables
/// rounded to fp16, so an fp16 and an fp32 copy of one encoder agree and a fine-tuned one
/// differs (`check` warns when a pass switches to a checkpoint with another text encoder).
pub fn text_fingerprint(ckpt: &Checkpoint, family: &Family) -> Result<String> {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for spec in family.encoders {
        for part in [
            "final_layer_norm.weight",
            "final_layer_norm.bias",
            "embeddings.position_embedding.weight",
        ] {
            let key = format!("{}text_model.{part}", spec.ldm_prefix);
            let values = ckpt
                .read(&key)?
                .to_kind(Kind::Half)
                .to_kind(Kind::Float)
                .flatten(0, -1);
            for v in Vec::<f32>::try_from(&values)? {
                for b in v.to_le_bytes() {
                    hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
        }
    }
    Ok(format!("{hash:016x}"))
}

/// Loads the UNet alone (CPU, fp32) and runs A1111's probe on it.
fn probe_unet(ckpt: &Checkpoint, config: &ModelConfig) -> Result<f64> {
    let mut vs = VarStore::new(Device::Cpu);
    let unet = guarded("building the UNet", || {
        unet_module(&vs.root(), &config.unet)
    })?;
    guarded("loading the UNet", || ckpt.copy_into(&vs, UNET_PREFIX))?;
    vs.freeze();
    guarded("probing the UNet", || {
        probe_mean(&unet, Device::Cpu, Kind::Float)
    })
}
