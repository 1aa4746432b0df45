//! The backend plugin: exposes [`Sd1Model`] to the host through `host-api`.
use std::path::Path;

use host_api::backend::device_name;
use host_api::tch::Tensor;
use host_api::{Backend, Error, LoadRequest, ModelInfo, Result};

use crate::checkpoint::Checkpoint;
use crate::family::{self, SD1};
use crate::model::Sd1Model;
use crate::tiny::{write_random_checkpoint, TinySd1Config};
use crate::vae_tiling::VaeTilingOptions;

fn err(e: anyhow::Error) -> Error {
    Error::new(format!("{e:#}"))
}

/// SD 1.x: CLIP-L text encoder, eps prediction, 4-channel latent.
pub struct Sd1Backend(Sd1Model);

impl Backend for Sd1Backend {
    const FAMILY: &'static str = "sd1";

    fn detect(checkpoint: &Path) -> Result<Option<String>> {
        let ckpt = Checkpoint::open(checkpoint).map_err(err)?;
        Ok(family::identify(&ckpt)
            .filter(|f| f.id == SD1.id)
            .map(|f| f.name.to_owned()))
    }

    fn load(request: &LoadRequest) -> Result<Self> {
        let vae = request.vae_path();
        let tiling = VaeTilingOptions::from_profile(
            request.vae_tiling.as_str(),
            request.vae_tile_size,
            request.vae_tile_overlap,
        )
        .map_err(err)?;
        let model = Sd1Model::load_with(
            &request.checkpoint_path(),
            vae.as_deref(),
            request.tch_device()?,
            request.tch_kind()?,
            tiling,
        )
        .map_err(err)?;
        Ok(Self(model))
    }

    fn info(&self) -> ModelInfo {
        let info = self.0.info();
        ModelInfo {
            family: info.family.into(),
            prediction: info.prediction.as_str().into(),
            latent_channels: info.latent_channels as u32,
            vae_scale_factor: info.vae_scale_factor as u32,
            default_size: info.default_size as u32,
            text_encoders: info.text_encoders.as_str().into(),
            dtype: format!("{:?}", info.kind).as_str().into(),
            device: device_name(info.device).as_str().into(),
            sigmas: self.0.sigmas().into(),
        }
    }

    fn encode_prompts(&self, prompts: &[&str], clip_skip: usize) -> Result<Vec<Vec<Tensor>>> {
        let conds = self.0.encode_prompts(prompts, clip_skip).map_err(err)?;
        Ok(conds.into_iter().map(|c| vec![c]).collect())
    }

    /// One batched UNet call for all conditionings (CFG's uncond and cond together).
    fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&[Tensor]]) -> Result<Vec<Tensor>> {
        let contexts: Vec<&Tensor> = conds
            .iter()
            .map(|c| c.first().ok_or_else(|| Error::new("empty conditioning")))
            .collect::<Result<_>>()?;
        let n = contexts.len() as i64;
        let batch = x.size()[0];
        let context = Tensor::f_cat(
            &contexts
                .iter()
                .map(|c| c.repeat_interleave_self_int(batch, 0, None))
                .collect::<Vec<_>>(),
            0,
        )?;
        let xs = x.repeat([n, 1, 1, 1]);
        let out = self.0.denoise(&xs, sigma, &context).map_err(err)?;
        Ok(out.chunk(n, 0))
    }

    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.0.decode(latent).map_err(err)
    }

    fn encode(&self, image: &Tensor) -> Result<Tensor> {
        self.0.encode(image).map_err(err)
    }

    fn write_demo_checkpoint(path: &Path) -> Result<()> {
        write_random_checkpoint(path, &TinySd1Config::default(), 0).map_err(err)
    }
}

host_api::export_plugin! {
    backends: [Sd1Backend],
}
