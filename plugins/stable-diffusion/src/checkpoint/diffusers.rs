//! diffusers pipeline folders: configs, weight files (plain, `.fp16`, sharded), and the UNet and
//! VAE renamed to LDM keys. Text encoders wait for detection, which tells their LDM prefix.
use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use serde_json::Value;

use crate::convert::diffusers_unet::{diffusers_unet_key, UnetLayout};
use crate::convert::diffusers_vae::diffusers_vae_key;
use crate::convert::indices_under;
use crate::text::clip::Activation;
use hiresfix_model_parts::weights::folder::{read_json, weights_files};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;

/// Text-encoder sub-folders a pipeline may have.
const TEXT_FOLDERS: [&str; 2] = ["text_encoder", "text_encoder_2"];

/// The JSON configs of a diffusers folder (all empty for a single file).
#[derive(Debug, Default)]
pub struct DiffusersConfigs {
    pub model_index: Option<Value>,
    pub unet: Option<Value>,
    pub vae: Option<Value>,
    pub scheduler: Option<Value>,
    /// Text-encoder sub-folder → its `config.json`.
    pub text_encoders: BTreeMap<String, Value>,
}

impl DiffusersConfigs {
    pub fn pipeline_class(&self) -> String {
        json_str(&self.model_index, "_class_name").unwrap_or_default()
    }

    /// diffusers scheduler `prediction_type` (`epsilon`, `v_prediction`), when given.
    pub fn prediction_type(&self) -> Option<String> {
        json_str(&self.scheduler, "prediction_type")
    }

    pub fn text_encoder(&self, folder: &str) -> Option<&Value> {
        self.text_encoders.get(folder)
    }

    /// The encoder's MLP activation; transformers' `CLIPTextConfig` default is `quick_gelu`.
    pub fn text_activation(&self, folder: &str) -> Option<Activation> {
        let config = self.text_encoders.get(folder)?;
        let act = config.get("hidden_act").and_then(|v| v.as_str());
        Activation::from_name(act.unwrap_or("quick_gelu")).ok()
    }
}

fn json_str(config: &Option<Value>, key: &str) -> Option<String> {
    config.as_ref()?.get(key)?.as_str().map(str::to_string)
}

/// How the stored keys of a UNet or VAE weight file become model keys.
pub(super) enum Rename {
    Unet(UnetLayout),
    /// A VAE with this many decoder up blocks.
    Vae(usize),
}

impl Rename {
    pub(super) fn model_key(&self, key: &str) -> Option<String> {
        match self {
            Rename::Unet(layout) => diffusers_unet_key(key, layout),
            Rename::Vae(num_up) => diffusers_vae_key(key, *num_up),
        }
    }
}

/// What a diffusers folder holds, in the order it was read.
pub(super) struct Folder {
    pub configs: DiffusersConfigs,
    /// The UNet's and the VAE's weight files, each with how its keys are renamed.
    pub weights: Vec<(SafetensorsFile, Rename)>,
    /// Text-encoder sub-folder → its weight file, whose keys wait for detection.
    pub text_encoders: Vec<(String, SafetensorsFile)>,
}

/// Reads the diffusers folder at `path`: its configs and weight files.
pub(super) fn open(path: &Path) -> Result<Folder> {
    let model_index = read_json(&path.join("model_index.json"))?.ok_or_else(|| {
        anyhow!("{}: a folder but not a diffusers model (no model_index.json) — point model.checkpoint at a .safetensors file or a diffusers folder", path.display())
    })?;
    let mut folder = Folder {
        configs: DiffusersConfigs {
            model_index: Some(model_index),
            unet: read_json(&path.join("unet/config.json"))?,
            vae: read_json(&path.join("vae/config.json"))?,
            scheduler: read_json(&path.join("scheduler/scheduler_config.json"))?,
            text_encoders: BTreeMap::new(),
        },
        weights: Vec::new(),
        text_encoders: Vec::new(),
    };
    for file in weights_files(&path.join("unet"), "diffusion_pytorch_model")? {
        let unet = SafetensorsFile::open(&file)?;
        let layout = UnetLayout::from_keys(unet.entries().keys().map(String::as_str));
        folder.weights.push((unet, Rename::Unet(layout)));
    }
    for file in weights_files(&path.join("vae"), "diffusion_pytorch_model")? {
        let vae = SafetensorsFile::open(&file)?;
        let num_up = indices_under(
            vae.entries().keys().map(String::as_str),
            "decoder.up_blocks.",
        )
        .len();
        folder.weights.push((vae, Rename::Vae(num_up)));
    }
    for name in TEXT_FOLDERS {
        let dir = path.join(name);
        if !dir.is_dir() {
            continue;
        }
        let config = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
        if let Some(act) = config.get("hidden_act").and_then(|v| v.as_str()) {
            Activation::from_name(act)
                .map_err(|e| anyhow!("{}: {e}", dir.join("config.json").display()))?;
        }
        folder.configs.text_encoders.insert(name.into(), config);
        let files = weights_files(&dir, "model")?;
        if files.len() != 1 {
            bail!("{}: sharded text encoders are not supported yet — save it as one model.safetensors", dir.display());
        }
        let file = SafetensorsFile::open(&files[0])?;
        folder.text_encoders.push((name.into(), file));
    }
    Ok(folder)
}
