//! The Flux backend as the host sees it (host-api 1.5, a rectified-flow model): two families,
//! `flux-dev` and `flux-schnell`, each detecting its own variant. The profile's `[model] vae`,
//! `text_encoders` and `t5_tokenizer` arrive as for SD3 (`crate::common::load_options`).
//!
//! Distilled guidance (dev) travels in the pass's `EncodeRequest.options` under `guidance`
//! (the host puts the pass's `guidance` there; default 3.5): each conditioning is
//! `[context, pooled, guidance]`, so every pass denoises with its own. Schnell ignores it.
//! The shift is the pass's own: [`Backend::model_sampling`] answers each size.
use std::marker::PhantomData;
use std::path::Path;

use host_api::backend::device_name;
use host_api::options::{keys, Options};
use host_api::tch::{Kind, Tensor};
use host_api::{
    Backend, EncodeRequest, Error, LoadRequest, LoraSpec, ModelInfo, ModelSampling, OptionEntry,
    OptionValue, Result,
};

use super::files::FluxFiles;
use super::model::FluxModel;
use super::names::{DEFAULT_GUIDANCE, GUIDANCE_KEY, MULTIPLIER, TIMESTEPS};
use super::shift::image_tokens;
use crate::common::{err, load_options};
use crate::flux::Variant;
use crate::lora::LoraFile;

/// Which variant a backend type serves.
pub trait FluxVariant: 'static {
    const VARIANT: Variant;
    const FAMILY: &'static str;
}

pub struct Dev;
pub struct Schnell;

impl FluxVariant for Dev {
    const VARIANT: Variant = Variant::Dev;
    const FAMILY: &'static str = "flux-dev";
}

impl FluxVariant for Schnell {
    const VARIANT: Variant = Variant::Schnell;
    const FAMILY: &'static str = "flux-schnell";
}

/// A loaded Flux model of variant `V`.
pub struct FluxBackend<V: FluxVariant>(pub FluxModel, PhantomData<V>);
pub type FluxDev = FluxBackend<Dev>;
pub type FluxSchnell = FluxBackend<Schnell>;

impl<V: FluxVariant> FluxBackend<V> {
    /// The sampling of a `width × height` px pass: the shift of its token count.
    pub fn sampling(&self, width: u32, height: u32) -> Result<ModelSampling> {
        let f = self.0.vae.config().spatial_factor() as u32;
        let shift = self.0.shift.shift(image_tokens(width, height, f));
        ModelSampling::flow(shift, TIMESTEPS, MULTIPLIER)
    }
}

/// The pass's distilled guidance from an encode request's options (3.5 without one).
pub fn guidance_of(options: &[OptionEntry]) -> Result<f64> {
    let g = Options(options).number(GUIDANCE_KEY, DEFAULT_GUIDANCE)?;
    match g.is_finite() && g >= 0.0 {
        true => Ok(g),
        false => Err(Error::new(format!(
            "guidance = {g}: Flux's distilled guidance must be a number ≥ 0 (3.5 is dev's default)"
        ))),
    }
}

impl<V: FluxVariant> Backend for FluxBackend<V> {
    const FAMILY: &'static str = V::FAMILY;

    fn detect(checkpoint: &Path) -> Result<Option<String>> {
        let found = super::detect(checkpoint).map_err(err)?;
        Ok(found
            .filter(|d| d.variant == V::VARIANT)
            .map(|d| format!("Flux.1 {} ({})", V::FAMILY, d.layout.describe())))
    }

    fn load(request: &LoadRequest) -> Result<Self> {
        let (device, kind) = (request.tch_device()?, request.tch_kind()?);
        let files = FluxFiles::open(
            &request.checkpoint_path(),
            &load_options(request).map_err(err)?,
        )
        .map_err(err)?;
        let model = FluxModel::load(files, device, kind).map_err(err)?;
        Ok(Self(model, PhantomData))
    }

    fn info(&self) -> ModelInfo {
        let m = &self.0;
        let sampling = self.sampling(1024, 1024).expect("a positive shift");
        ModelInfo {
            family: V::FAMILY.into(),
            prediction: "flow".into(),
            latent_channels: m.vae.config().embed_dim as u32,
            vae_scale_factor: m.vae.config().spatial_factor() as u32,
            default_size: 1024,
            text_encoders: m.describe_text_encoders().as_str().into(),
            dtype: format!("{:?}", m.kind).as_str().into(),
            device: device_name(m.device).as_str().into(),
            extra: vec![OptionEntry {
                key: keys::MODEL_SAMPLING.into(),
                value: OptionValue::Text(m.shift.describe().as_str().into()),
            }]
            .into(),
            sigmas: sampling.sigmas,
        }
    }

    fn model_sampling(&self, width: u32, height: u32) -> Result<ModelSampling> {
        self.sampling(width, height)
    }

    /// Per prompt `[context, pooled, guidance]` (guidance `[1]`, the pass's).
    fn encode_prompts(&self, request: &EncodeRequest) -> Result<Vec<Vec<Tensor>>> {
        let guidance = guidance_of(&request.options)?;
        let g = Tensor::from_slice(&[guidance as f32]).to_kind(Kind::Float);
        request
            .prompts
            .iter()
            .map(|p| {
                let e = self.0.encode_prompt(p.text.as_str()).map_err(err)?;
                Ok(vec![e.context, e.pooled, g.shallow_clone()])
            })
            .collect()
    }

    /// The text encoders can go (T5-XXL is 9.5 GB in bf16), and the transformer before the
    /// final decodes (with the base weights its LoRAs kept); the VAE stays.
    fn release(&self, parts: u32) -> Result<()> {
        use host_api::backend::release::{TEXT_ENCODERS, UNET};
        if parts & TEXT_ENCODERS != 0 {
            self.0.release_text_encoders();
        }
        if parts & UNET != 0 {
            self.0.release_transformer();
        }
        Ok(())
    }

    /// The pass's LoRAs merged into the transformer, each weighed by its UNet multiplier (the
    /// text-encoder one would weigh CLIP-L / T5 layers, skipped with a warning for now); an
    /// empty set is the base weights. A LoRA of another family is refused in one line.
    fn set_loras(&self, loras: &[LoraSpec]) -> Result<Vec<String>> {
        let set: Vec<LoraFile> = loras.iter().map(LoraFile::from_spec).collect();
        self.0.set_loras(&set).map_err(err)
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
}
