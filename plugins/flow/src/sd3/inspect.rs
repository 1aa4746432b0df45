//! What an SD3 checkpoint is, from its safetensors headers and config files alone (no tensor
//! data is read): `hiresfix info`, the pre-run checks, and `check`'s memory table. A split
//! transformer file (no VAE, no text encoders) inspects fine: its missing parts are reported
//! absent, and the latent facts are SD3's (the transformer's input channels, the SD3 VAE's
//! scale and shift).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use hiresfix_model_parts::convert::VAE_PREFIX;
use hiresfix_model_parts::vae::{LatentScale, VaeConfig};
use hiresfix_model_parts::weights::folder::{read_json, weights_files};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use hiresfix_model_parts::weights::Weights;
use serde_json::Value;

use super::detect::{detect, Sd3Layout};
use super::files::{folder_shift, T5_KEY};
use super::names::{CLIP_G_PREFIX, CLIP_L_PREFIX, DEFAULT_SHIFT};
use crate::mmdit::{MmDitConfig, SINGLE_FILE_PREFIX};

/// A text encoder found in the headers: layers and width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderShape {
    pub layers: usize,
    pub width: i64,
}

/// The parts of an SD3 checkpoint, from its headers.
pub struct Sd3Headers {
    pub path: PathBuf,
    pub layout: Sd3Layout,
    /// Every tensor under a part prefix (see the `*_prefix` fields); VAE keys as model keys.
    pub weights: Weights,
    pub transformer: MmDitConfig,
    pub vae: Option<VaeConfig>,
    pub clip_l: Option<EncoderShape>,
    pub clip_g: Option<EncoderShape>,
    pub t5: Option<EncoderShape>,
    pub shift: f64,
    /// Where the shift came from.
    pub shift_source: &'static str,
    transformer_prefix: &'static str,
    clip_l_prefix: &'static str,
    clip_g_prefix: &'static str,
    t5_prefix: &'static str,
}

/// A folder's parts under these (invented) key prefixes.
const FOLDER_PARTS: [(&str, &str, &str); 4] = [
    ("transformer", "diffusion_pytorch_model", "transformer/"),
    ("text_encoder", "model", "text_encoder/"),
    ("text_encoder_2", "model", "text_encoder_2/"),
    ("text_encoder_3", "model", "text_encoder_3/"),
];

impl Sd3Headers {
    pub fn read(path: &Path) -> Result<Self> {
        let layout =
            detect(path)?.ok_or_else(|| anyhow!("{}: not an SD3 checkpoint", path.display()))?;
        let mut weights = Weights::new(path);
        let (vae_json, transformer, shift, shift_source, prefixes);
        match layout {
            Sd3Layout::Folder => {
                for (sub, stem, prefix) in FOLDER_PARTS {
                    if path.join(sub).is_dir() {
                        for file in weights_files(&path.join(sub), stem)? {
                            weights.add_file(SafetensorsFile::open(&file)?, |k| {
                                Some(format!("{prefix}{k}"))
                            });
                        }
                    }
                }
                if path.join("vae").is_dir() {
                    crate::common::folder::add_vae(&mut weights, path)?;
                }
                vae_json = read_json(&path.join("vae").join("config.json"))?;
                let file = path.join("transformer").join("config.json");
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| anyhow!("{}: cannot read: {e}", file.display()))?;
                transformer = MmDitConfig::from_diffusers_json(&text, &file.display().to_string())?;
                shift = folder_shift(path)?;
                let configured = read_json(&path.join("scheduler").join("scheduler_config.json"))?
                    .is_some_and(|s| s.get("shift").is_some());
                shift_source = match configured {
                    true => "scheduler config",
                    false => "SD3's default",
                };
                prefixes = [
                    "transformer/",
                    "text_encoder/",
                    "text_encoder_2/",
                    "text_encoder_3/",
                ];
            }
            Sd3Layout::SingleFile => {
                weights.add_file(SafetensorsFile::open(path)?, |k| Some(k.to_string()));
                vae_json = None::<Value>;
                transformer = MmDitConfig::infer(&weights, SINGLE_FILE_PREFIX)?;
                (shift, shift_source) = (DEFAULT_SHIFT, "SD3's default");
                prefixes = [
                    SINGLE_FILE_PREFIX,
                    CLIP_L_PREFIX,
                    CLIP_G_PREFIX,
                    crate::t5::SINGLE_FILE_PREFIX,
                ];
            }
        }
        let vae = match weights.has_prefix(&format!("{VAE_PREFIX}decoder.")) {
            true => Some(VaeConfig::infer(
                &weights,
                vae_json.as_ref(),
                LatentScale::SD3,
            )?),
            false => None,
        };
        let [transformer_prefix, clip_l_prefix, clip_g_prefix, t5_prefix] = prefixes;
        Ok(Self {
            clip_l: clip_shape(&weights, clip_l_prefix),
            clip_g: clip_shape(&weights, clip_g_prefix),
            t5: t5_shape(&weights, t5_prefix),
            path: path.into(),
            layout,
            weights,
            transformer,
            vae,
            shift,
            shift_source,
            transformer_prefix,
            clip_l_prefix,
            clip_g_prefix,
            t5_prefix,
        })
    }

    /// The transformer's parameters.
    pub fn transformer_parameters(&self) -> u64 {
        self.weights.parameters_under(self.transformer_prefix)
    }

    /// Parameters of CLIP-L, CLIP-G, T5 and the VAE present in the checkpoint.
    pub fn other_parameters(&self) -> [u64; 4] {
        [
            self.weights.parameters_under(self.clip_l_prefix),
            self.weights.parameters_under(self.clip_g_prefix),
            self.weights.parameters_under(self.t5_prefix),
            self.weights.parameters_under(VAE_PREFIX),
        ]
    }

    /// e.g. `CLIP-L (12 layers, 768) + OpenCLIP bigG (32 layers, 1280) + T5 (24 layers,
    /// 4096)`, an absent one named so (a split file's come from `[model] text_encoders`).
    pub fn describe_text_encoders(&self) -> String {
        let part = |name: &str, s: Option<EncoderShape>| match s {
            Some(s) => format!("{name} ({} layers, {})", s.layers, s.width),
            None => format!("{name} absent"),
        };
        if self.clip_l.is_none() && self.clip_g.is_none() && self.t5.is_none() {
            return "none in the file (a split file's come from `[model] text_encoders`)".into();
        }
        format!(
            "{} + {} + {}",
            part("CLIP-L", self.clip_l),
            part("OpenCLIP bigG", self.clip_g),
            part("T5", self.t5)
        )
    }

    /// Equal for the same text encoders' shapes and stored parameters (headers only).
    pub fn text_fingerprint(&self) -> String {
        let [l, g, t5, _] = self.other_parameters();
        format!("sd3:{l}:{g}:{t5}:{}", self.describe_text_encoders())
    }

    /// The MMDiT's size, e.g. `24 blocks (13 with dual attention), width 1536`.
    pub fn describe_transformer(&self) -> String {
        let t = &self.transformer;
        let dual = match t.dual_attention_layers.len() {
            0 => String::new(),
            n => format!(" ({n} with dual attention)"),
        };
        format!("{} blocks{dual}, width {}", t.num_layers, t.hidden_size())
    }
}

/// A CLIP text model under `prefix`: its layers and the token embedding's width.
pub(crate) fn clip_shape(weights: &Weights, prefix: &str) -> Option<EncoderShape> {
    let width = weights
        .keys()
        .filter(|k| k.starts_with(prefix) && k.ends_with("token_embedding.weight"))
        .find_map(|k| weights.shape(k))?
        .get(1)
        .copied()?;
    let layers = weights.count_indexed(&format!("{prefix}text_model.encoder.layers."));
    Some(EncoderShape { layers, width })
}

/// T5's encoder under `prefix`: its blocks and `d_model`.
pub(crate) fn t5_shape(weights: &Weights, prefix: &str) -> Option<EncoderShape> {
    let key = weights
        .keys()
        .find(|k| k.starts_with(prefix) && k.ends_with(T5_KEY))?
        .to_string();
    let width = weights.shape(&key)?.get(1).copied()?;
    let blocks = &key[..key.len() - T5_KEY.len()];
    let layers = weights.count_indexed(&format!("{blocks}encoder.block."));
    Some(EncoderShape { layers, width })
}
