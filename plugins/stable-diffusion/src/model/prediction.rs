//! What a model predicts (eps or v) and where that came from: a profile override, a marker in
//! the files, or A1111's probe of the UNet.
use std::path::Path;

use anyhow::{anyhow, Result};
use tch::{Device, Kind, Tensor};

use crate::checkpoint::{Checkpoint, Format};
use crate::convert::UNET_PREFIX;
use crate::denoiser::{self, PROBE_LATENT, PROBE_TIMESTEP, PROBE_VALUE};
use crate::families::{Family, Prediction, PredictionRule};
use crate::guard::guarded;
use crate::unet::UNetModel;

/// Where the prediction type came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionSource {
    Profile,
    VPredKey,
    SchedulerConfig,
    UNetProbe,
    FamilyDefault,
}

impl PredictionSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionSource::Profile => "profile",
            PredictionSource::VPredKey => "v_pred key",
            PredictionSource::SchedulerConfig => "scheduler config",
            PredictionSource::UNetProbe => "UNet probe (A1111)",
            PredictionSource::FamilyDefault => "family default",
        }
    }
}

/// The prediction type `ckpt`'s files state, or `None` when the UNet must be probed.
pub fn stated_prediction(
    ckpt: &Checkpoint,
    family: &Family,
    wanted: Option<Prediction>,
) -> Result<Option<(Prediction, PredictionSource)>> {
    if let Some(p) = wanted {
        return Ok(Some((p, PredictionSource::Profile)));
    }
    if ckpt.raw_contains("v_pred") {
        return Ok(Some((Prediction::V, PredictionSource::VPredKey)));
    }
    if let Some(p) = ckpt.configs().prediction_type() {
        let p = Prediction::parse(&p)
            .map_err(|e| anyhow!("{}: scheduler prediction_type: {e}", ckpt.path().display()))?;
        return Ok(Some((p, PredictionSource::SchedulerConfig)));
    }
    // A1111 probes text-to-image SD 2.x files only: an inpainting one is
    // `v2-inpainting-inference.yaml`, eps (`sd_models_config.py`).
    let conv_in = ckpt.shape(&format!("{UNET_PREFIX}input_blocks.0.0.weight"));
    let plain_input = conv_in.is_none_or(|s| s.get(1) == Some(&4));
    let probe = family.prediction == PredictionRule::ProbeSingleFiles
        && ckpt.format() == Format::SingleFile
        && plain_input;
    Ok((!probe).then_some((Prediction::Eps, PredictionSource::FamilyDefault)))
}

/// A1111's probe for SD 2.x single files (`is_using_v_parameterization_for_sd2`): the mean of
/// `unet(0.5, t = 999, context = 0.5) - 0.5`.
pub fn probe_mean(unet: &UNetModel, device: Device, kind: Kind) -> Result<f64> {
    let cfg = unet.config();
    let opts = (kind, device);
    let x = Tensor::full(
        [1, cfg.in_channels, PROBE_LATENT, PROBE_LATENT],
        PROBE_VALUE,
        opts,
    );
    let t = Tensor::full([1], PROBE_TIMESTEP, (Kind::Float, device));
    let context = Tensor::full([1, 2, cfg.context_dim], PROBE_VALUE, opts);
    let y = cfg.adm_in_channels.map(|a| Tensor::zeros([1, a], opts));
    let out = tch::no_grad(|| unet.forward(&x, &t, &context, y.as_ref()))?;
    Ok(f64::try_from(
        (out - x).to_kind(Kind::Double).mean(Kind::Double),
    )?)
}

/// The prediction type by [`probe_mean`] of `unet`, loaded from `checkpoint` (logged).
pub(crate) fn probed_prediction(
    unet: &UNetModel,
    device: Device,
    kind: Kind,
    checkpoint: &Path,
) -> Result<(Prediction, PredictionSource)> {
    let mean = guarded("probing the UNet", || probe_mean(unet, device, kind))?;
    let p = match denoiser::probe_says_v(mean) {
        true => Prediction::V,
        false => Prediction::Eps,
    };
    log::info!(
        "{}: UNet probe mean {mean:.4} → {}-prediction",
        checkpoint.display(),
        p.as_str()
    );
    Ok((p, PredictionSource::UNetProbe))
}
