//! The modules of a model (text encoders, UNet, VAE), built under their model key paths in
//! one VarStore, and the key prefixes of their parts.
use anyhow::Result;
use tch::nn;

use super::config::ModelConfig;
use crate::families::Family;
use crate::text::clip::ClipTextTransformer;
use crate::unet::config::UNetConfig;
use crate::unet::UNetModel;
use crate::vae::AutoencoderKL;

/// The modules, built under their model key paths in one VarStore.
pub(crate) struct Modules {
    pub encoders: Vec<ClipTextTransformer>,
    pub unet: UNetModel,
    pub vae: AutoencoderKL,
}

impl Modules {
    pub fn new(root: nn::Path, family: &Family, cfg: &ModelConfig) -> Result<Self> {
        let encoders = family
            .encoders
            .iter()
            .zip(&cfg.encoders)
            .map(|(spec, clip)| ClipTextTransformer::new(prefix_path(&root, spec.ldm_prefix), clip))
            .collect::<Result<_>>()?;
        Ok(Self {
            encoders,
            unet: unet_module(&root, &cfg.unet)?,
            vae: AutoencoderKL::new(&root / "first_stage_model", &cfg.vae)?,
        })
    }
}

/// The UNet alone under `model.diffusion_model`.
pub(crate) fn unet_module(root: &nn::Path, cfg: &UNetConfig) -> Result<UNetModel> {
    UNetModel::new(root / "model" / "diffusion_model", cfg)
}

/// `a.b.c.` → the VarStore path `a / b / c`.
fn prefix_path<'a>(root: &nn::Path<'a>, prefix: &str) -> nn::Path<'a> {
    let mut parts = prefix.split('.').filter(|p| !p.is_empty());
    let first = parts.next().unwrap_or("text_encoder");
    parts.fold(root.sub(first), |p, part| p.sub(part))
}

/// The parameter prefixes the VAE's decoder reads.
pub(crate) fn decoder_prefixes() -> [String; 2] {
    let vae = crate::convert::VAE_PREFIX;
    [format!("{vae}decoder."), format!("{vae}post_quant_conv.")]
}
