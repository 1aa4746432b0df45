//! Loading: a model built from a checkpoint (or a weighted merge of several), its VAE
//! swapped in place later.
use std::cell::RefCell;
use std::path::Path;

use anyhow::{bail, Result};
use tch::nn::VarStore;
use tch::{Device, Kind};

use super::batch::RowCache;
use super::concat::Concat;
use super::config::{LoadOptions, ModelConfig, ModelInfo};
use super::modules::{decoder_prefixes, Modules};
use super::patcher::Patcher;
use super::prediction::{probed_prediction, stated_prediction};
use super::{Origin, SdModel};
use crate::checkpoint::Checkpoint;
use crate::families::Family;
use crate::guard::guarded;
use crate::layers::with_circular_padding;
use crate::lora::LoraState;
use crate::schedule::DiscreteSchedule;
use crate::text::conditioner::{Conditioner, TextEncoder};
use crate::vae::runner::Vae;
use crate::vae::tiling::{VaeTilingMode, VaeTilingOptions};
use crate::vae::{LatentScale, VaeConfig};
use hiresfix_model_parts::weights::Weights;

impl SdModel {
    /// `checkpoint`: a single-file LDM `.safetensors` or a diffusers folder;
    /// `vae_override`: a VAE file or folder replacing the checkpoint's. VAE tiling `auto`.
    pub fn load(
        checkpoint: &Path,
        vae_override: Option<&Path>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let mut options = LoadOptions::new(device, kind);
        options.vae = vae_override.map(Path::to_path_buf);
        Self::load_with(checkpoint, &options)
    }

    pub fn load_with(checkpoint: &Path, options: &LoadOptions) -> Result<Self> {
        options.vae_tiling.validate()?;
        let (device, kind) = (options.device, options.kind);
        if !matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16) {
            bail!("dtype {kind:?} is not supported — use fp32, fp16 or bf16");
        }
        let mut ckpt = Checkpoint::open(checkpoint)?;
        let family = ckpt.family()?;
        if let Some(vae) = &options.vae {
            ckpt.use_vae(vae)?;
        }
        let config = ModelConfig::infer(&ckpt, family)?;
        let schedule = DiscreteSchedule::from_checkpoint(&ckpt)?;
        let stated = stated_prediction(&ckpt, family, options.prediction)?;
        let (vs, modules) = load_modules(&ckpt, family, &config, options)?;
        let Modules {
            encoders,
            unet,
            vae,
        } = modules;
        let (prediction, source) = match stated {
            Some(found) => found,
            None => probed_prediction(&unet, device, kind, checkpoint)?,
        };
        let encoders = family
            .encoders
            .iter()
            .zip(encoders)
            .map(|(spec, model)| TextEncoder { spec, model })
            .collect();
        let conditioner =
            Conditioner::new(encoders, family, config.unet.adm_in_channels, device, kind)?;
        let vae = Vae::new(vae, &vs, vae_tiling(options)?, device, kind)?;
        let info = ModelInfo::new(family, prediction, source, config, device, kind);
        let lora = LoraState::new(
            family,
            &info.config.unet,
            vs.variables().keys().map(String::as_str),
        );
        Ok(Self {
            origin: Origin {
                checkpoint: checkpoint.to_path_buf(),
                merged: !options.merge.is_empty(),
                merge: (!options.merge.is_empty()).then(|| {
                    let sources: Vec<_> = options
                        .merge
                        .iter()
                        .map(|(p, w)| (p.as_path(), *w))
                        .collect();
                    crate::checkpoint::describe_merge(&sources)
                }),
                vae: RefCell::new(options.vae.clone()),
            },
            conditioner,
            patcher: Patcher::new(lora),
            rows: RowCache::default(),
            concat: Concat::new(info.config.concat_channels()),
            unet,
            vae,
            schedule,
            vs,
            info,
        })
    }

    /// Replaces the VAE's weights in place with those of `vae` (a file or diffusers folder),
    /// or with the checkpoint's own for `None`: a per-pass VAE without loading the checkpoint
    /// again. The VAE must have the loaded one's architecture; a merged model keeps its VAE.
    pub fn set_vae(&self, vae: Option<&Path>) -> Result<()> {
        if self.origin.vae.borrow().as_deref() == vae {
            return Ok(());
        }
        if self.origin.merged {
            bail!("a model merged at load time keeps the VAE it was loaded with");
        }
        let mut ckpt = Checkpoint::open(&self.origin.checkpoint)?;
        if let Some(vae) = vae {
            ckpt.use_vae(vae)?;
        }
        let config = VaeConfig::infer(
            &ckpt,
            ckpt.configs().vae.as_ref(),
            LatentScale::scaling(self.info.family.scaling_factor),
        )?;
        if config != self.info.config.vae {
            bail!(
                "{}: this VAE's architecture differs from the loaded model's — use a VAE of the same family",
                vae.map_or_else(|| self.origin.checkpoint.display().to_string(), |v| v.display().to_string())
            );
        }
        let released = self.patcher.released();
        let encoder_released = released & host_api::backend::release::VAE_ENCODER != 0;
        guarded("loading the VAE", || match encoder_released {
            false => ckpt.copy_into(&self.vs, crate::convert::VAE_PREFIX),
            true => decoder_prefixes()
                .iter()
                .try_for_each(|prefix| ckpt.copy_into(&self.vs, prefix)),
        })?;
        self.vae.parameters_changed()?;
        *self.origin.vae.borrow_mut() = vae.map(Path::to_path_buf);
        Ok(())
    }
}

/// The modules of a `family` model shaped by `config`, built in a new VarStore and filled
/// from `ckpt` (or from the weighted merge `options.merge` names), frozen.
fn load_modules(
    ckpt: &Checkpoint,
    family: &Family,
    config: &ModelConfig,
    options: &LoadOptions,
) -> Result<(VarStore, Modules)> {
    let mut vs = VarStore::new(options.device);
    vs.set_kind(options.kind);
    let modules = guarded("building the model", || {
        with_circular_padding(options.seamless, || Modules::new(vs.root(), family, config))
    })?;
    let others = options
        .merge
        .iter()
        .skip(1)
        .map(|(path, weight)| Ok((merge_input(path, family, ckpt)?, *weight)))
        .collect::<Result<Vec<_>>>()?;
    guarded("loading weights", || match options.merge.first() {
        None => ckpt.copy_into(&vs, ""),
        Some((_, first)) => {
            let mut sources = vec![(ckpt.weights(), *first)];
            sources.extend(others.iter().map(|(c, w)| (c.weights(), *w)));
            Weights::copy_weighted_into(&sources, &vs, "")
        }
    })?;
    vs.freeze();
    Ok((vs, modules))
}

/// A checkpoint to merge into a model of `family` whose first checkpoint is `first`.
fn merge_input(path: &Path, family: &Family, first: &Checkpoint) -> Result<Checkpoint> {
    let ckpt = Checkpoint::open(path)?;
    let other = ckpt.family()?;
    if other.id != family.id {
        bail!(
            "merge: {} is {} but the first checkpoint is {} — only checkpoints of one family merge",
            path.display(),
            other.name,
            family.name
        );
    }
    let key = format!("{}input_blocks.0.0.weight", crate::convert::UNET_PREFIX);
    let channels = |c: &Checkpoint| c.shape(&key).and_then(|s| s.get(1).copied());
    if channels(&ckpt) != channels(first) {
        bail!(
            "merge: {} has {} UNet input channels but the first checkpoint has {} — merge an inpainting checkpoint with `hiresfix merge` (inpainting first)",
            path.display(),
            channels(&ckpt).unwrap_or(0),
            channels(first).unwrap_or(0)
        );
    }
    Ok(ckpt)
}

/// The VAE tiling of `options`: seamless output cannot tile, since tiles would decode each
/// part on its own and break the wrap-around.
fn vae_tiling(options: &LoadOptions) -> Result<VaeTilingOptions> {
    let mut tiling = options.vae_tiling;
    if options.seamless {
        match tiling.mode {
            VaeTilingMode::On => {
                bail!("seamless output cannot use VAE tiling; set vae_tiling = \"auto\" or \"off\"")
            }
            _ => tiling.mode = VaeTilingMode::Off,
        }
    }
    Ok(tiling)
}
