//! A checkpoint seen through LDM key names, whatever its layout on disk: a single-file LDM
//! `.safetensors` (Civitai) or a diffusers folder, optionally with its VAE replaced.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tch::nn::VarStore;
use tch::Tensor;

use crate::convert::{self, indices_under, UnetLayout, VAE_PREFIX};
use crate::safetensors::SafetensorsFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    SingleFile,
    Diffusers,
}

/// The JSON configs of a diffusers folder (all `None` for a single file).
#[derive(Debug, Default)]
pub struct DiffusersConfigs {
    pub model_index: Option<Value>,
    pub unet: Option<Value>,
    pub vae: Option<Value>,
    pub text_encoder: Option<Value>,
    pub scheduler: Option<Value>,
}

impl DiffusersConfigs {
    pub fn pipeline_class(&self) -> String {
        json_str(&self.model_index, "_class_name").unwrap_or_default()
    }

    /// diffusers scheduler `prediction_type` (`epsilon`, `v_prediction`), when given.
    pub fn prediction_type(&self) -> Option<String> {
        json_str(&self.scheduler, "prediction_type")
    }

    /// transformers' default activation for `CLIPTextModel` is `quick_gelu`.
    pub fn text_hidden_act(&self) -> String {
        json_str(&self.text_encoder, "hidden_act").unwrap_or_else(|| "quick_gelu".into())
    }
}

fn json_str(config: &Option<Value>, key: &str) -> Option<String> {
    config.as_ref()?.get(key)?.as_str().map(str::to_string)
}

pub struct Checkpoint {
    path: PathBuf,
    format: Format,
    files: Vec<SafetensorsFile>,
    /// LDM key → (index into `files`, key inside that file).
    tensors: BTreeMap<String, (usize, String)>,
    configs: DiffusersConfigs,
}

impl Checkpoint {
    /// Opens a single `.safetensors` file or a diffusers folder (one with `model_index.json`).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "{}: checkpoint not found — check model.checkpoint in the profile",
                path.display()
            );
        }
        if path.is_dir() {
            Self::open_diffusers(path)
        } else {
            Self::open_single_file(path)
        }
    }

    fn open_single_file(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let tensors = file
            .entries()
            .keys()
            .map(|k| (convert::single_file_key(k), (0, k.clone())))
            .collect();
        Ok(Self {
            path: path.into(),
            format: Format::SingleFile,
            files: vec![file],
            tensors,
            configs: Default::default(),
        })
    }

    fn open_diffusers(path: &Path) -> Result<Self> {
        let model_index = read_json(&path.join("model_index.json"))?.ok_or_else(|| {
            anyhow!("{}: a folder but not a diffusers model (no model_index.json) — point model.checkpoint at a .safetensors file or a diffusers folder", path.display())
        })?;
        let mut ckpt = Self {
            path: path.into(),
            format: Format::Diffusers,
            files: Vec::new(),
            tensors: BTreeMap::new(),
            configs: DiffusersConfigs {
                model_index: Some(model_index),
                unet: read_json(&path.join("unet/config.json"))?,
                vae: read_json(&path.join("vae/config.json"))?,
                text_encoder: read_json(&path.join("text_encoder/config.json"))?,
                scheduler: read_json(&path.join("scheduler/scheduler_config.json"))?,
            },
        };
        let unet = SafetensorsFile::open(&weights_file(
            &path.join("unet"),
            "diffusion_pytorch_model",
        )?)?;
        let layout = UnetLayout::from_keys(unet.entries().keys().map(String::as_str));
        ckpt.add_file(unet, |k| convert::diffusers_unet_key(k, &layout));
        let vae =
            SafetensorsFile::open(&weights_file(&path.join("vae"), "diffusion_pytorch_model")?)?;
        let num_up = indices_under(
            vae.entries().keys().map(String::as_str),
            "decoder.up_blocks.",
        )
        .len();
        ckpt.add_file(vae, |k| convert::diffusers_vae_key(k, num_up));
        let text = SafetensorsFile::open(&weights_file(&path.join("text_encoder"), "model")?)?;
        ckpt.add_file(text, convert::diffusers_text_encoder_key);
        Ok(ckpt)
    }

    fn add_file(&mut self, file: SafetensorsFile, rename: impl Fn(&str) -> Option<String>) {
        let index = self.files.len();
        for key in file.entries().keys() {
            if let Some(ldm) = rename(key) {
                self.tensors.insert(ldm, (index, key.clone()));
            }
        }
        self.files.push(file);
    }

    /// Replaces every `first_stage_model.*` tensor with those of a standalone VAE: a
    /// `.safetensors` file (LDM or diffusers keys) or a diffusers `vae` folder.
    pub fn use_vae(&mut self, path: &Path) -> Result<()> {
        let shown = path.display();
        if !path.exists() {
            bail!("{shown}: VAE not found — check model.vae in the profile");
        }
        let (file, config) = if path.is_dir() {
            (
                weights_file(path, "diffusion_pytorch_model")?,
                read_json(&path.join("config.json"))?,
            )
        } else {
            (path.to_path_buf(), None)
        };
        let file = SafetensorsFile::open(&file)?;
        let renamed = convert::standalone_vae_keys(file.entries().keys().map(String::as_str));
        if !renamed
            .keys()
            .any(|k| k.starts_with(&format!("{VAE_PREFIX}decoder.")))
        {
            bail!("{shown}: no VAE tensors found (expected encoder.*/decoder.* keys) — model.vae must be a VAE file or folder");
        }
        self.tensors.retain(|k, _| !k.starts_with(VAE_PREFIX));
        let index = self.files.len();
        self.tensors
            .extend(renamed.into_iter().map(|(ldm, key)| (ldm, (index, key))));
        self.files.push(file);
        self.configs.vae = config;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn format(&self) -> Format {
        self.format
    }

    pub fn configs(&self) -> &DiffusersConfigs {
        &self.configs
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> + Clone {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    pub fn shape(&self, key: &str) -> Option<&[i64]> {
        let (file, name) = self.tensors.get(key)?;
        Some(&self.files[*file].entries()[name].shape)
    }

    /// The shape of a tensor the model cannot do without.
    pub fn require_shape(&self, key: &str) -> Result<&[i64]> {
        self.shape(key).ok_or_else(|| {
            anyhow!(
                "{}: missing tensor `{key}` — the checkpoint is incomplete or not of this family",
                self.path.display()
            )
        })
    }

    /// The distinct `i` of keys `prefix{i}.…`, counted.
    pub fn count_indexed(&self, prefix: &str) -> usize {
        indices_under(self.keys(), prefix).len()
    }

    /// The dtype most tensors are stored in.
    pub fn main_dtype(&self) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for (file, name) in self.tensors.values() {
            *counts
                .entry(self.files[*file].entries()[name].dtype.as_str())
                .or_default() += 1;
        }
        counts
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map(|(d, _)| d.to_string())
            .unwrap_or_default()
    }

    /// The file holding `key`, and the tensor's own name there when it differs (diffusers).
    fn origin(&self, key: &str) -> String {
        match self.tensors.get(key) {
            Some((file, name)) if name != key => {
                format!("{} (as `{name}`)", self.files[*file].path().display())
            }
            Some((file, _)) => self.files[*file].path().display().to_string(),
            None => self.path.display().to_string(),
        }
    }

    /// Reads one tensor (CPU, stored dtype) by its LDM key.
    pub fn read(&self, key: &str) -> Result<Tensor> {
        let (file, name) = self
            .tensors
            .get(key)
            .ok_or_else(|| anyhow!("{}: missing tensor `{key}`", self.path.display()))?;
        self.files[*file].read(name)
    }

    /// Copies the checkpoint into every variable of `vs` (named by LDM key), converting dtype
    /// and device. Keys the model has no variable for are ignored (EMA, `model_ema.*`, ...).
    pub fn copy_into(&self, vs: &VarStore) -> Result<()> {
        let shown = self.path.display();
        let mut variables: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        variables.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, mut var) in variables {
            let wanted = var.size();
            let stored = self.shape(&key).ok_or_else(|| {
                anyhow!("{shown}: missing tensor `{key}` (the model expects shape {wanted:?}) — the checkpoint is incomplete or not of this family")
            })?.to_vec();
            let src = self.read(&key)?;
            // diffusers and some converters store the VAE attention 1x1 convs as Linear weights.
            let src = if stored.len() == 2
                && wanted.len() == 4
                && wanted[..2] == stored[..]
                && wanted[2..] == [1, 1]
            {
                src.reshape(&wanted)
            } else if stored != wanted {
                bail!("{}: tensor `{key}` has shape {stored:?} but the model built from this checkpoint's other tensors expects {wanted:?} — the file is damaged or mixes two models", self.origin(&key));
            } else {
                src
            };
            tch::no_grad(|| var.f_copy_(&src.to_device(var.device()).to_kind(var.kind())))
                .with_context(|| format!("{shown}: cannot copy tensor `{key}` into the model"))?;
        }
        Ok(())
    }
}

/// The weights of one diffusers component; pickle-only folders are refused by name.
fn weights_file(folder: &Path, stem: &str) -> Result<PathBuf> {
    for name in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ] {
        if folder.join(&name).is_file() {
            return Ok(folder.join(name));
        }
    }
    let pickle = folder.join(format!("{stem}.bin"));
    if pickle.is_file() {
        bail!(
            "{}: pickle checkpoints are refused; convert to .safetensors",
            pickle.display()
        );
    }
    bail!(
        "{}: no {stem}.safetensors — the diffusers folder is incomplete",
        folder.display()
    )
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not valid JSON ({e}) — re-download it", path.display()))?;
    Ok(Some(value))
}
