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
    pub prediction: Prediction,
    pub prediction_source: PredictionSource,
    /// The dtype most tensors are stored in (`F16`, `F32`, ...).
    pub stored_dtype: String,
    /// Bytes on disk of every weight file.
    pub file_bytes: u64,
    pub unet_parameters: u64,
}

/// Reads `checkpoint`'s headers; a refused file is an error saying why.
pub fn inspect(checkpoint: &Path) -> Result<Inspection> {
    let ckpt = Checkpoint::open(checkpoint)?;
    let family = ckpt.family()?;
    let config = ModelConfig::infer(&ckpt, family)?;
    let (prediction, prediction_source) = match stated_prediction(&ckpt, family, None)? {
        Some(found) => found,
        None => {
            let mean = probe_unet(&ckpt, &config)?;
            let p = match denoiser::probe_says_v(mean) {
                true => Prediction::V,
                false => Prediction::Eps,
            };
            (p, PredictionSource::UNetProbe)
        }
    };
    Ok(Inspection {
        family,
        format: ckpt.format(),
        prediction,
        prediction_source,
        stored_dtype: ckpt.main_dtype(),
        file_bytes: ckpt.file_bytes(),
        unet_parameters: ckpt.parameters_under(UNET_PREFIX),
        config,
    })
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
