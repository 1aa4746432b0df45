//! The backend plugin: one registration per supported family (`sd1`, `sd2`, `sdxl`,
//! `sdxl-refiner`), all
//! served by [`SdModel`].
use std::marker::PhantomData;
use std::path::Path;

use host_api::backend::device_name;
use host_api::tch::Tensor;
use host_api::{
    keys, Backend, EncodeRequest, Error, LoadRequest, ModelInfo, OptionEntry, OptionValue, Result,
};

use crate::checkpoint::Checkpoint;
use crate::families::{sd1, sd2, sdxl, sdxl_refiner, Family, Prediction};
use crate::lora::LoraSpec;
use crate::model::{LoadOptions, ModelConfig, SdModel};
use crate::text::conditioner::{Conditioning, PromptInput};
use crate::vae::tiling::VaeTilingOptions;

pub(crate) fn err(e: anyhow::Error) -> Error {
    Error::new(format!("{e:#}"))
}

/// The model's facts added in host-api 1.x, for `ModelInfo.extra` and
/// `CheckpointInfo.extra`: the UNet's input blocks and the channels of image conditioning
/// it takes (5 for an inpainting checkpoint, else 0).
pub(crate) fn model_facts(config: &ModelConfig) -> Vec<OptionEntry> {
    vec![
        OptionEntry {
            key: keys::UNET_INPUT_BLOCKS.into(),
            value: OptionValue::Number(config.unet.input_blocks() as f64),
        },
        OptionEntry {
            key: keys::CONCAT_CHANNELS.into(),
            value: OptionValue::Number(config.concat_channels() as f64),
        },
    ]
}

/// Which registry entry a registration serves.
pub trait FamilyEntry: 'static {
    const ENTRY: &'static Family;
}

pub struct Sd1;
pub struct Sd2;
pub struct Sdxl;
pub struct SdxlRefiner;

impl FamilyEntry for Sd1 {
    const ENTRY: &'static Family = &sd1::SD1;
}
impl FamilyEntry for Sd2 {
    const ENTRY: &'static Family = &sd2::SD2;
}
impl FamilyEntry for Sdxl {
    const ENTRY: &'static Family = &sdxl::SDXL;
}
impl FamilyEntry for SdxlRefiner {
    const ENTRY: &'static Family = &sdxl_refiner::SDXL_REFINER;
}

/// A loaded model of family `F`.
pub struct SdBackend<F: FamilyEntry>(SdModel, PhantomData<F>);

impl<F: FamilyEntry> Backend for SdBackend<F> {
    const FAMILY: &'static str = F::ENTRY.id;

    fn detect(checkpoint: &Path) -> Result<Option<String>> {
        let ckpt = Checkpoint::open(checkpoint).map_err(err)?;
        let family = ckpt.family().map_err(err)?;
        Ok((family.id == F::ENTRY.id).then(|| family.name.to_owned()))
    }

    fn load(request: &LoadRequest) -> Result<Self> {
        let vae_tiling = VaeTilingOptions::from_profile(
            request.vae_tiling.as_str(),
            request.vae_tile_size,
            request.vae_tile_overlap,
        )
        .map_err(err)?;
        let prediction = request
            .prediction_override()
            .map(Prediction::parse)
            .transpose()
            .map_err(err)?;
        let merge = request
            .merge
            .iter()
            .map(|m| (std::path::PathBuf::from(m.path.as_str()), m.weight))
            .collect();
        let options = LoadOptions {
            merge,
            vae: request.vae_path(),
            device: request.tch_device()?,
            kind: request.tch_kind()?,
            vae_tiling,
            prediction,
            seamless: request.seamless,
        };
        let model = SdModel::load_with(&request.checkpoint_path(), &options).map_err(err)?;
        let family = model.info().family;
        if family.id != F::ENTRY.id {
            return Err(Error::new(format!(
                "{}: a {} checkpoint, not {}",
                request.checkpoint,
                family.name,
                F::ENTRY.name
            )));
        }
        Ok(Self(model, PhantomData))
    }

    fn info(&self) -> ModelInfo {
        let info = self.0.info();
        ModelInfo {
            family: info.family.id.into(),
            prediction: info.prediction.as_str().into(),
            latent_channels: info.latent_channels as u32,
            vae_scale_factor: info.vae_scale_factor as u32,
            default_size: info.default_size as u32,
            text_encoders: info.text_encoders.as_str().into(),
            dtype: format!("{:?}", info.kind).as_str().into(),
            device: device_name(info.device).as_str().into(),
            sigmas: self.0.sigmas().into(),
            extra: model_facts(&info.config).into(),
        }
    }

    fn encode_prompts(&self, request: &EncodeRequest) -> Result<Vec<Vec<Tensor>>> {
        request
            .prompts
            .iter()
            .map(|prompt| {
                let input = PromptInput {
                    text: prompt.text.as_str(),
                    negative: prompt.negative,
                    clip_skip: request.clip_skip as usize,
                    width: i64::from(request.width),
                    height: i64::from(request.height),
                };
                Ok(self.0.encode(&input).map_err(err)?.into_tensors())
            })
            .collect()
    }

    /// One batched UNet call for all conditionings (CFG's uncond and cond together).
    fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&[Tensor]]) -> Result<Vec<Tensor>> {
        let conds = conds
            .iter()
            .map(|c| Conditioning::from_tensors(c))
            .collect::<anyhow::Result<Vec<_>>>()
            .map_err(err)?;
        let refs: Vec<&Conditioning> = conds.iter().collect();
        self.0.denoise(x, sigma, &refs).map_err(err)
    }

    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.0.decode(latent).map_err(err)
    }

    fn encode(&self, image: &Tensor) -> Result<Tensor> {
        self.0.encode_image(image).map_err(err)
    }

    fn set_concat(&self, concat: Option<&Tensor>) -> Result<()> {
        self.0.set_concat(concat).map_err(err)
    }

    fn set_vae(&self, vae: Option<&str>) -> Result<()> {
        self.0.set_vae(vae.map(std::path::Path::new)).map_err(err)
    }

    fn set_loras(&self, loras: &[host_api::LoraSpec]) -> Result<Vec<String>> {
        let set: Vec<LoraSpec> = loras
            .iter()
            .map(|l| LoraSpec {
                path: l.path.as_str().into(),
                name: l.name.to_string(),
                te: l.te,
                unet: l.unet,
            })
            .collect();
        self.0.set_loras(&set).map_err(err)
    }

    fn set_embeddings(
        &self,
        embeddings: &[host_api::EmbeddingSpec],
    ) -> Result<Vec<host_api::EmbeddingState>> {
        Ok(self.0.set_embeddings(embeddings))
    }

    fn used_embeddings(&self, prompts: &[&str]) -> Result<Vec<String>> {
        self.0.conditioner().used_embeddings(prompts).map_err(err)
    }

    fn set_patches(
        &self,
        patches: Vec<host_api::PatchBox>,
        pass: host_api::PassSigmas,
    ) -> Result<()> {
        self.0.set_patches(patches, pass);
        Ok(())
    }

    fn release(&self, parts: u32) -> Result<()> {
        self.0.release(parts);
        Ok(())
    }

    fn nonfinite_cause(&self) -> String {
        self.0.nonfinite_cause("")
    }
}

host_api::export_plugin! {
    backends_with_tools: [
        SdBackend<Sd1>,
        SdBackend<Sd2>,
        SdBackend<Sdxl>,
        SdBackend<SdxlRefiner>,
    ],
}
