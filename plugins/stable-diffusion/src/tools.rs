//! The family's command-line tools (`hiresfix info`, `merge`, `demo`, `check`'s memory table):
//! host API's optional [`BackendTools`] table.
use std::path::Path;

use host_api::{BackendTools, CheckpointInfo, Error, Result};

use crate::families::{sd1, Prediction, UNetInput};
use crate::merge::{merge, Recipe};
use crate::plugin::{err, model_facts, FamilyEntry, SdBackend};
use crate::random::{write_random_checkpoint, RandomModel};

impl<F: FamilyEntry> BackendTools for SdBackend<F> {
    fn inspect(checkpoint: &Path, probe: bool) -> Result<CheckpointInfo> {
        let found = crate::inspect(checkpoint, probe).map_err(err)?;
        let cfg = &found.config;
        let (prediction, source) = match found.prediction {
            Some(p) => (p.as_str(), found.prediction_source.as_str()),
            None => ("eps or v", "decided by A1111's UNet probe when loaded"),
        };
        Ok(CheckpointInfo {
            family: found.family.id.into(),
            family_name: match UNetInput::of(cfg.unet.in_channels) {
                // e.g. `Stable Diffusion 1.x inpainting`: also in the lint's messages.
                Some(input) if input.concat > 0 => {
                    format!("{} {}", found.family.name, input.kind)
                }
                _ => found.family.name.to_string(),
            }
            .as_str()
            .into(),
            prediction: prediction.into(),
            prediction_source: source.into(),
            format: found.format.as_str().into(),
            extra: model_facts(cfg).into(),
            latent_channels: cfg.vae.embed_dim as u32,
            vae_scale_factor: cfg.vae.spatial_factor() as u32,
            latent_scaling_factor: cfg.vae.scaling_factor,
            text_encoders: crate::model::describe_encoders(found.family, &cfg.encoders)
                .as_str()
                .into(),
            unet_parameters: found.unet_parameters,
            stored_dtype: found.stored_dtype.as_str().into(),
            file_bytes: found.file_bytes,
            text_encoder_fingerprint: found.text_fingerprint.as_str().into(),
            default_size: found
                .family
                .default_size(found.prediction.unwrap_or(Prediction::Eps))
                as u32,
        })
    }

    fn estimate_memory(request: &host_api::MemoryRequest) -> Result<host_api::MemoryEstimate> {
        crate::estimate::estimate(request).map_err(err)
    }

    fn merge(request: &host_api::MergeRequest) -> Result<String> {
        let inputs: Vec<(std::path::PathBuf, f64)> = request
            .inputs
            .iter()
            .map(|m| (m.path.as_str().into(), m.weight))
            .collect();
        let recipe = match (request.add_difference, inputs.as_slice()) {
            (true, [(a, _), (b, _), (c, _)]) => Recipe::AddDifference {
                a: a.clone(),
                b: b.clone(),
                c: c.clone(),
                multiplier: request.multiplier,
            },
            (true, _) => return Err(Error::new("add-difference takes three checkpoints: A B C")),
            (false, _) => Recipe::WeightedSum(inputs),
        };
        let report = merge(&recipe, Path::new(request.out.as_str())).map_err(err)?;
        let mut note = format!("{} tensors merged ({})", report.merged, recipe.describe());
        if report.inpainting {
            note.push_str("; the inpainting input convolution merged on its 4 latent channels, its mask and masked-image channels kept from the first (A1111's merger)");
        }
        if report.widened > 0 {
            note.push_str(&format!(
                "; {} fp8 tensors of the first input written as fp16",
                report.widened
            ));
        }
        if !report.copied.is_empty() {
            note.push_str(&format!(
                "; {} taken from the first input because another lacks them or has another shape (first: {})",
                report.copied.len(),
                report.copied[0]
            ));
        }
        Ok(note)
    }

    fn write_demo_checkpoint(path: &Path) -> Result<()> {
        if F::ENTRY.id != sd1::SD1.id {
            return Err(Error::new(format!(
                "family {} has no demo model",
                F::ENTRY.id
            )));
        }
        write_random_checkpoint(path, &RandomModel::tiny_sd1(), 0).map_err(err)
    }
}
