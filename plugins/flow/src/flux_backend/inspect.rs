//! What a Flux checkpoint is, from its safetensors headers and config files alone (no tensor
//! data is read): `hiresfix info` and `check`'s memory table. A transformer-only file inspects
//! fine: its text encoders and VAE are reported absent (they come from the profile).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use hiresfix_model_parts::convert::diffusers_vae::vae_renames;
use hiresfix_model_parts::convert::VAE_PREFIX;
use hiresfix_model_parts::vae::{LatentScale, VaeConfig};
use hiresfix_model_parts::weights::folder::{read_json, weights_files};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use hiresfix_model_parts::weights::Weights;

use super::detect::{detect, FluxLayout};
use super::names::CLIP_L_PREFIX;
use super::shift::ShiftRule;
use crate::flux::{FluxConfig, Variant, SINGLE_FILE_PREFIX};
use crate::sd3::inspect::{clip_shape, t5_shape, EncoderShape};

/// The parts of a Flux checkpoint, from its headers.
pub struct FluxHeaders {
    pub path: PathBuf,
    pub layout: FluxLayout,
    pub variant: Variant,
    /// Every tensor (a folder's under `transformer/`, `text_encoder/`, `text_encoder_2/`);
    /// VAE keys as model keys.
    pub weights: Weights,
    pub transformer: FluxConfig,
    pub vae: Option<VaeConfig>,
    pub clip_l: Option<EncoderShape>,
    pub t5: Option<EncoderShape>,
    pub shift: ShiftRule,
    /// Where the shift rule came from.
    pub shift_source: &'static str,
    prefixes: [&'static str; 3],
}

impl FluxHeaders {
    pub fn read(path: &Path) -> Result<Self> {
        let found =
            detect(path)?.ok_or_else(|| anyhow!("{}: not a Flux checkpoint", path.display()))?;
        let mut weights = Weights::new(path);
        let (transformer, _) = crate::flux::read_config(path)?;
        let (vae_json, shift, shift_source, prefixes);
        match found.layout {
            FluxLayout::Folder => {
                prefixes = ["transformer/", "text_encoder/", "text_encoder_2/"];
                for (sub, stem) in [
                    ("transformer", "diffusion_pytorch_model"),
                    ("text_encoder", "model"),
                    ("text_encoder_2", "model"),
                ] {
                    if path.join(sub).is_dir() {
                        for file in weights_files(&path.join(sub), stem)? {
                            weights.add_file(SafetensorsFile::open(&file)?, |k| {
                                Some(format!("{sub}/{k}"))
                            });
                        }
                    }
                }
                if path.join("vae").is_dir() {
                    crate::common::folder::add_vae(&mut weights, path)?;
                }
                vae_json = read_json(&path.join("vae").join("config.json"))?;
                let scheduler = path.join("scheduler").join("scheduler_config.json");
                let json = read_json(&scheduler)?;
                shift_source = match json {
                    Some(_) => "from the scheduler config",
                    None => "from the published scheduler",
                };
                shift = ShiftRule::from_scheduler(
                    json.as_ref(),
                    found.variant,
                    &scheduler.display().to_string(),
                )?;
            }
            FluxLayout::SingleFile => {
                let file = SafetensorsFile::open(path)?;
                let renames = vae_renames(
                    file.entries()
                        .keys()
                        .filter(|k| k.starts_with("vae.") || k.starts_with(VAE_PREFIX))
                        .map(String::as_str),
                );
                weights.add_file(file, |k| {
                    Some(renames.get(k).cloned().unwrap_or_else(|| k.to_string()))
                });
                let bare = weights.keys().any(|k| k.starts_with("double_blocks."))
                    || weights.keys().any(|k| k.starts_with("single_blocks."));
                prefixes = [
                    if bare { "" } else { SINGLE_FILE_PREFIX },
                    CLIP_L_PREFIX,
                    crate::t5::SINGLE_FILE_PREFIX,
                ];
                vae_json = None;
                shift = ShiftRule::published(found.variant);
                shift_source = "from the published scheduler";
            }
        }
        let vae = match weights.has_prefix(&format!("{VAE_PREFIX}decoder.")) {
            true => Some(VaeConfig::infer(
                &weights,
                vae_json.as_ref(),
                LatentScale::FLUX,
            )?),
            false => None,
        };
        Ok(Self {
            clip_l: clip_shape(&weights, prefixes[1]),
            t5: t5_shape(&weights, prefixes[2]),
            path: path.into(),
            layout: found.layout,
            variant: found.variant,
            weights,
            transformer,
            vae,
            shift,
            shift_source,
            prefixes,
        })
    }

    /// The transformer's parameters (a bare transformer file: every tensor but the VAE's and
    /// the text encoders').
    pub fn transformer_parameters(&self) -> u64 {
        match self.prefixes[0] {
            "" => self.weights.parameters_under("") - self.other_parameters().iter().sum::<u64>(),
            prefix => self.weights.parameters_under(prefix),
        }
    }

    /// Parameters of CLIP-L, T5 and the VAE present in the checkpoint.
    pub fn other_parameters(&self) -> [u64; 3] {
        [
            self.weights.parameters_under(self.prefixes[1]),
            self.weights.parameters_under(self.prefixes[2]),
            self.weights.parameters_under(VAE_PREFIX),
        ]
    }

    /// `CLIP-L (12 layers, 768, pooled only) + T5 (24 layers, 4096)`, an absent one named so.
    pub fn describe_text_encoders(&self) -> String {
        if self.clip_l.is_none() && self.t5.is_none() {
            return "none in the file (a transformer file's come from `[model] text_encoders`)"
                .into();
        }
        let clip = match self.clip_l {
            Some(s) => format!("CLIP-L ({} layers, {}, pooled only)", s.layers, s.width),
            None => "CLIP-L absent".into(),
        };
        let t5 = match self.t5 {
            Some(s) => format!("T5 ({} layers, {})", s.layers, s.width),
            None => "T5 absent".into(),
        };
        format!("{clip} + {t5}")
    }

    /// e.g. `Flux.1 dev, guidance embedding yes, 19 double + 38 single blocks, width 3072`.
    pub fn describe(&self) -> String {
        let t = &self.transformer;
        let (name, guidance) = match self.variant {
            Variant::Dev => ("dev", "yes"),
            Variant::Schnell => ("schnell", "no"),
        };
        format!(
            "Flux.1 {name}, guidance embedding {guidance}, {} double + {} single blocks, width {}",
            t.num_layers,
            t.num_single_layers,
            t.hidden_size()
        )
    }
}
