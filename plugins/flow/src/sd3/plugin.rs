//! The SD3 backend as the host sees it (host-api 1.5, a rectified-flow model): family `sd3`.
//! The profile's `[model] vae` arrives as `LoadRequest.vae`; `[model] text_encoders` as one
//! `text_encoder` option per file, `[model] t5_tokenizer` and `[model] t5` as the options of
//! those names (`crate::common::load_options`).
use std::path::Path;

use host_api::backend::device_name;
use host_api::options::keys;
use host_api::tch::Tensor;
use host_api::{
    Backend, EncodeRequest, LoadRequest, LoraSpec, ModelInfo, ModelSampling, OptionEntry,
    OptionValue, Result,
};

use super::files::Sd3Files;
use super::model::Sd3Model;
use crate::common::{err, load_options};
use crate::lora::{self, LoraFamily};

/// The SD3 family id.
pub const FAMILY: &str = "sd3";
/// SD3's timestep is σ·1000 over a 1000-entry table (ComfyUI `ModelSamplingDiscreteFlow`).
const TIMESTEPS: usize = 1000;
const MULTIPLIER: f64 = 1000.0;

/// A loaded SD 3 / 3.5 model.
pub struct Sd3Backend(pub Sd3Model);

impl Sd3Backend {
    fn sampling(&self) -> Result<ModelSampling> {
        ModelSampling::flow(self.0.shift, TIMESTEPS, MULTIPLIER)
    }
}

impl Backend for Sd3Backend {
    const FAMILY: &'static str = FAMILY;

    fn detect(checkpoint: &Path) -> Result<Option<String>> {
        let layout = super::detect(checkpoint).map_err(err)?;
        Ok(layout.map(|_| "Stable Diffusion 3".to_string()))
    }

    fn load(request: &LoadRequest) -> Result<Self> {
        let (device, kind) = (request.tch_device()?, request.tch_kind()?);
        let options = load_options(request).map_err(err)?;
        let files = Sd3Files::open(&request.checkpoint_path(), &options).map_err(err)?;
        Ok(Self(Sd3Model::load(files, device, kind).map_err(err)?))
    }

    fn info(&self) -> ModelInfo {
        let sampling = self.sampling().expect("a positive shift");
        let m = &self.0;
        ModelInfo {
            family: FAMILY.into(),
            prediction: "flow".into(),
            latent_channels: m.vae.config().embed_dim as u32,
            vae_scale_factor: m.vae.config().spatial_factor() as u32,
            default_size: 1024,
            text_encoders: m.describe_text_encoders().as_str().into(),
            dtype: format!("{:?}", m.kind).as_str().into(),
            device: device_name(m.device).as_str().into(),
            extra: vec![OptionEntry {
                key: keys::MODEL_SAMPLING.into(),
                value: OptionValue::Text(sampling.describe().as_str().into()),
            }]
            .into(),
            sigmas: sampling.sigmas,
        }
    }

    fn model_sampling(&self, _width: u32, _height: u32) -> Result<ModelSampling> {
        self.sampling()
    }

    /// Per prompt `[context, pooled]`.
    fn encode_prompts(&self, request: &EncodeRequest) -> Result<Vec<Vec<Tensor>>> {
        let clip_skip = request.clip_skip.max(1) as usize;
        request
            .prompts
            .iter()
            .map(|p| {
                let e = self
                    .0
                    .encode_prompt(p.text.as_str(), clip_skip)
                    .map_err(err)?;
                Ok(vec![e.context, e.pooled])
            })
            .collect()
    }

    fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&[Tensor]]) -> Result<Vec<Tensor>> {
        self.0.denoise(x, sigma, conds).map_err(err)
    }

    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.0.decode(latent).map_err(err)
    }

    fn encode(&self, image: &Tensor) -> Result<Tensor> {
        self.0.encode(image).map_err(err)
    }

    /// Frees what the host will not use again, as the UNet backend does (see
    /// [`Sd3Model::release`]).
    fn release(&self, parts: u32) -> Result<()> {
        self.0.release(parts);
        Ok(())
    }

    /// SD 3.5 applies no LoRA yet: one is refused in one line naming the file, and its family
    /// when it is another model's (a Flux LoRA, an SDXL one).
    fn set_loras(&self, loras: &[LoraSpec]) -> Result<Vec<String>> {
        match loras.first() {
            None => Ok(Vec::new()),
            Some(l) => Err(err(lora::refuse(
                Path::new(l.path.as_str()),
                LoraFamily::Sd3,
                "SD 3.5",
            ))),
        }
    }
}
