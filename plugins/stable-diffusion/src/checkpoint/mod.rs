//! A checkpoint seen through the model's own keys, whatever its layout on disk: a single-file
//! LDM `.safetensors` (Civitai) or a diffusers folder, optionally with its VAE replaced. Opening
//! one ([`Checkpoint::open`], in [`crate::detect`]) also tells its family; refused files end
//! there. The reader knows the family types ([`crate::families::spec`]), not the family list.
//! The files and the key map are the shared [`Weights`] (crates/model-parts), which a
//! checkpoint dereferences to; what is SD's here is the layouts and the family.
mod diffusers;

use std::collections::BTreeMap;
use std::ops::Deref;
use std::path::Path;

use anyhow::{anyhow, bail, Result};

use crate::convert::{hf_clip, indices_under, open_clip, Transform, UNET_PREFIX, VAE_PREFIX};
use crate::families::spec::{EncoderSpec, Family, TextLayout};
use hiresfix_model_parts::vae::files::replace_vae;
use hiresfix_model_parts::weights::{Source, Weights};

pub use diffusers::DiffusersConfigs;
pub use hiresfix_model_parts::weights::{describe_merge, mapped, safetensors};
use safetensors::SafetensorsFile;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    SingleFile,
    Diffusers,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Format::SingleFile => "single file",
            Format::Diffusers => "diffusers folder",
        }
    }
}

pub struct Checkpoint {
    /// The files read and where each model key is stored.
    weights: Weights,
    format: Format,
    /// Single files: every stored key, as stored (what detection looks at).
    raw: Vec<String>,
    /// diffusers folders: text-encoder sub-folder → its file, before detection maps it.
    text_files: BTreeMap<String, usize>,
    configs: DiffusersConfigs,
    family: Option<&'static Family>,
}

impl Checkpoint {
    /// Opens without detection: the stored tensors, text encoders not yet mapped (detection
    /// then calls [`Self::set_family`]).
    pub(crate) fn open_unchecked(path: &Path) -> Result<Self> {
        if !path.exists() {
            bail!(
                "{}: checkpoint not found — check model.checkpoint in the profile",
                path.display()
            );
        }
        let mut ckpt = Self {
            weights: Weights::new(path),
            format: Format::SingleFile,
            raw: Vec::new(),
            text_files: BTreeMap::new(),
            configs: Default::default(),
            family: None,
        };
        if path.is_dir() {
            ckpt.format = Format::Diffusers;
            let folder = diffusers::open(path)?;
            ckpt.configs = folder.configs;
            for (file, rename) in folder.weights {
                ckpt.weights.add_file(file, |k| rename.model_key(k));
            }
            for (name, file) in folder.text_encoders {
                let index = ckpt.weights.add_file(file, |_| None);
                ckpt.text_files.insert(name, index);
            }
        } else {
            let file = SafetensorsFile::open(path)?;
            refuse_scaled_fp8(&file)?;
            ckpt.raw = file.entries().keys().cloned().collect();
            ckpt.weights.add_file(file, |k| Some(k.to_string()));
        }
        Ok(ckpt)
    }

    /// The files read and where each model key is stored (what `*self` is).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Records the family detection found and puts each of its text encoders under its model
    /// keys.
    pub(crate) fn set_family(&mut self, family: &'static Family) -> Result<()> {
        self.map_text_encoders(family)?;
        self.family = Some(family);
        Ok(())
    }

    /// Puts each of `family`'s text encoders under its model keys.
    fn map_text_encoders(&mut self, family: &Family) -> Result<()> {
        for spec in family.encoders {
            match self.format {
                Format::SingleFile => self.map_single_file_encoder(spec),
                Format::Diffusers => {
                    let file = *self.text_files.get(spec.diffusers_folder).ok_or_else(|| {
                        anyhow!(
                            "{}: no {} folder",
                            self.path().display(),
                            spec.diffusers_folder
                        )
                    })?;
                    let keys: Vec<String> = self.files()[file].entries().keys().cloned().collect();
                    for key in keys {
                        if let Some(model_key) = hf_clip::text_encoder_key(spec.ldm_prefix, &key) {
                            let source = Source {
                                file,
                                name: key,
                                transform: Transform::AsIs,
                            };
                            self.weights.insert(model_key, source);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn map_single_file_encoder(&mut self, spec: &EncoderSpec) {
        let prefix = spec.ldm_prefix;
        let stored: Vec<(String, Source)> = self
            .sources()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, s)| (k.to_string(), s.clone()))
            .collect();
        let layers = indices_under(
            stored.iter().map(|(k, _)| k.as_str()),
            &format!("{prefix}transformer.resblocks."),
        )
        .len();
        let used = layers.saturating_sub(spec.unused_ldm_layers);
        for (key, source) in stored {
            self.weights.remove(&key);
            let rest = &key[prefix.len()..];
            let renamed = match spec.ldm_layout {
                TextLayout::HfClip => hf_clip::text_encoder_key(prefix, rest)
                    .map(|k| vec![(k, Transform::AsIs)])
                    .unwrap_or_default(),
                TextLayout::OpenClip => open_clip::to_model(prefix, rest, used),
            };
            for (model_key, transform) in renamed {
                let source = Source {
                    transform,
                    ..source.clone()
                };
                self.weights.insert(model_key, source);
            }
        }
    }

    /// Replaces every `first_stage_model.*` tensor with those of a standalone VAE: a
    /// `.safetensors` file (LDM or diffusers keys) or a diffusers `vae` folder.
    pub fn use_vae(&mut self, path: &Path) -> Result<()> {
        self.configs.vae = replace_vae(&mut self.weights, path)?;
        Ok(())
    }

    pub fn format(&self) -> Format {
        self.format
    }

    /// The family detected when opening.
    pub fn family(&self) -> Result<&'static Family> {
        self.family
            .ok_or_else(|| anyhow!("{}: family not detected", self.path().display()))
    }

    pub fn configs(&self) -> &DiffusersConfigs {
        &self.configs
    }

    /// Single files: the keys as stored (empty for folders).
    pub fn raw_keys(&self) -> impl Iterator<Item = &str> + Clone {
        self.raw.iter().map(String::as_str)
    }

    pub fn raw_has_prefix(&self, prefix: &str) -> bool {
        self.raw.iter().any(|k| k.starts_with(prefix))
    }

    pub fn raw_contains(&self, key: &str) -> bool {
        self.raw.iter().any(|k| k == key)
    }

    /// Whether the slot of `spec` holds a text encoder of its kind.
    pub fn has_encoder(&self, spec: &EncoderSpec) -> bool {
        match self.format {
            Format::SingleFile => {
                let p = spec.ldm_prefix;
                match spec.ldm_layout {
                    TextLayout::HfClip => {
                        self.raw_has_prefix(&format!("{p}text_model.embeddings."))
                            || self.raw_has_prefix(&format!("{p}embeddings."))
                    }
                    TextLayout::OpenClip => {
                        self.raw_has_prefix(&format!("{p}transformer.resblocks."))
                    }
                }
            }
            Format::Diffusers => {
                self.text_files.contains_key(spec.diffusers_folder)
                    && self.configs.text_activation(spec.diffusers_folder) == Some(spec.activation)
            }
        }
    }

    /// Whether a UNet is there (its first conv).
    pub fn has_unet(&self) -> bool {
        self.contains(&format!("{UNET_PREFIX}input_blocks.0.0.weight"))
    }

    /// Reads a tensor stored under `key` in a single file as is (markers, buffers).
    pub fn read_raw(&self, key: &str) -> Result<tch::Tensor> {
        match self.format {
            Format::SingleFile => self.files()[0].read(key),
            Format::Diffusers => bail!("{}: no tensor `{key}`", self.path().display()),
        }
    }

    /// Whether model key `key` is one of the model's weights (UNet, VAE, text encoders: not
    /// schedule buffers); every key before detection.
    fn is_weight(&self, key: &str) -> bool {
        let Some(family) = self.family else {
            return true;
        };
        [UNET_PREFIX, VAE_PREFIX]
            .into_iter()
            .chain(family.encoders.iter().map(|e| e.ldm_prefix))
            .any(|p| key.starts_with(p))
    }

    /// The dtype most model parameters are stored in (`F16`, `F8_E4M3`, ...).
    pub fn main_dtype(&self) -> String {
        self.weights
            .dtype_parameters(|k| self.is_weight(k))
            .first()
            .map(|(d, _)| d.to_string())
            .unwrap_or_default()
    }

    /// [`Self::main_dtype`], followed by the share of the parameters it holds when floating
    /// tensors of another dtype sit beside it: `F8_E4M3 (96% of the parameters; the rest
    /// F32)` (fp8 files often keep norms and biases wide).
    pub fn dtype_summary(&self) -> String {
        self.weights.dtype_summary(|k| self.is_weight(k))
    }
}

impl Deref for Checkpoint {
    type Target = Weights;

    fn deref(&self) -> &Weights {
        &self.weights
    }
}

/// ComfyUI's "scaled fp8" files store each weight divided by a per-layer `scale_weight`
/// (marked by a `scaled_fp8` tensor): read as plain fp8 they would give wrong weights
/// silently, so they are refused.
fn refuse_scaled_fp8(file: &SafetensorsFile) -> Result<()> {
    let scaled = file
        .entries()
        .keys()
        .any(|k| k == "scaled_fp8" || k.ends_with(".scale_weight"));
    if scaled {
        bail!(
            "{}: a ComfyUI scaled-fp8 checkpoint (`scaled_fp8`, per-layer `scale_weight`) is not supported — use a plain fp8 (F8_E4M3/F8_E5M2), fp16 or fp32 file",
            file.path().display()
        );
    }
    Ok(())
}
