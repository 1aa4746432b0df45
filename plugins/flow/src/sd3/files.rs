//! An SD3 model's files read into model keys, whatever the layout: a diffusers folder
//! (`transformer/`, `text_encoder{,_2,_3}/`, `tokenizer_3/`, `vae/`, `scheduler/`), a single
//! file (`model.diffusion_model.*`, `text_encoders.clip_l/clip_g/t5xxl.transformer.*`,
//! `first_stage_model.*`) or ComfyUI's split files (a transformer file, the text-encoder files
//! `[model] text_encoders` lists, the VAE `[model] vae` names).
//!
//! CLIP-L pools unprojected in SD3 (sd3_impls and ComfyUI `return_projected_pooled=False`;
//! diffusers' single-file loader sets its `text_projection` to the identity): a single or
//! split file's CLIP-L projection is ignored; a folder's is used, as diffusers does.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use hiresfix_model_parts::convert::hf_clip::text_encoder_key;
use hiresfix_model_parts::convert::VAE_PREFIX;
use hiresfix_model_parts::weights::folder::{read_json, weights_files};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use hiresfix_model_parts::weights::Weights;
use serde_json::Value;
use tch::{Device, Kind};

use super::detect::{detect, Sd3Layout};
use super::names::{CLIP_G_PREFIX, CLIP_L_PREFIX, DEFAULT_SHIFT};
use crate::common::load::apply_vae;
use crate::common::weights::{read_with_scale, TensorSource};
use crate::common::LoadOptions;
use crate::mmdit::{self, Layout, LoadedMmDit, MmDitConfig, SINGLE_FILE_PREFIX};
use crate::t5::{self, T5Placement, T5Weights};

/// The files of one SD3 model, read (headers mapped) but not yet built.
pub struct Sd3Files {
    pub path: PathBuf,
    pub layout: Sd3Layout,
    /// CLIP-L, CLIP-G and the VAE (single / split: the transformer too) under model keys.
    pub weights: Weights,
    pub vae_json: Option<Value>,
    pub clip_l_json: Option<Value>,
    pub clip_g_json: Option<Value>,
    /// T5 and its tokenizer, or why the model runs without T5.
    pub t5: std::result::Result<(T5Weights, PathBuf), String>,
    /// The flow shift (scheduler config; 3.0 otherwise).
    pub shift: f64,
    /// Where T5 runs (the profile's `[model] t5`).
    pub t5_placement: T5Placement,
}

pub(crate) const T5_KEY: &str = "encoder.block.0.layer.0.SelfAttention.q.weight";

impl Sd3Files {
    pub fn open(path: &Path, options: &LoadOptions) -> Result<Self> {
        let layout =
            detect(path)?.ok_or_else(|| anyhow!("{}: not an SD3 checkpoint", path.display()))?;
        let mut files = match layout {
            Sd3Layout::Folder => Self::open_folder(path)?,
            Sd3Layout::SingleFile => Self::open_single(path, options)?,
        };
        files.t5_placement = options.t5_placement;

        if let Some(json) = apply_vae(&mut files.weights, options, path, "the SD3 VAE file")? {
            files.vae_json = Some(json);
        }
        for (name, prefix) in [("CLIP-L", CLIP_L_PREFIX), ("CLIP-G", CLIP_G_PREFIX)] {
            if !files.weights.has_prefix(prefix) {
                bail!(
                    "{}: no {name} text encoder — list the clip_l, clip_g (and t5xxl) files in \
                     `[model] text_encoders`",
                    path.display()
                );
            }
        }
        Ok(files)
    }

    fn open_folder(path: &Path) -> Result<Self> {
        let mut weights = Weights::new(path);
        for (sub, prefix) in [
            ("text_encoder", CLIP_L_PREFIX),
            ("text_encoder_2", CLIP_G_PREFIX),
        ] {
            for file in weights_files(&path.join(sub), "model")? {
                weights.add_file(SafetensorsFile::open(&file)?, |k| {
                    text_encoder_key(prefix, k)
                });
            }
        }
        crate::common::folder::add_vae(&mut weights, path)?;
        let json = |sub: &str| read_json(&path.join(sub).join("config.json"));
        let shift = folder_shift(path)?;
        let t5 = match path.join("text_encoder_3").is_dir() {
            false => Err(format!("{}: no text_encoder_3", path.display())),
            true => with_tokenizer(
                T5Weights::from_path(&path.join("text_encoder_3"))?,
                path,
                None,
            )?,
        };
        Ok(Self {
            path: path.into(),
            layout: Sd3Layout::Folder,
            vae_json: json("vae")?,
            clip_l_json: json("text_encoder")?,
            clip_g_json: json("text_encoder_2")?,
            weights,
            t5,
            shift,
            t5_placement: T5Placement::default(),
        })
    }

    /// A single file, or a transformer file with the split text encoders.
    fn open_single(path: &Path, options: &LoadOptions) -> Result<Self> {
        let mut weights = Weights::new(path);
        let t5_prefix = t5::SINGLE_FILE_PREFIX;
        weights.add_file(SafetensorsFile::open(path)?, |k| {
            if let Some(rest) = k.strip_prefix(CLIP_L_PREFIX) {
                return clip_l_key(rest);
            }
            if let Some(rest) = k.strip_prefix(CLIP_G_PREFIX) {
                return text_encoder_key(CLIP_G_PREFIX, rest);
            }
            let ours = [SINGLE_FILE_PREFIX, VAE_PREFIX, t5_prefix];
            ours.iter().any(|p| k.starts_with(p)).then(|| k.to_string())
        });
        let mut t5_weights = None;
        let mut clips = Vec::new();
        for file in &options.text_encoders {
            let opened = SafetensorsFile::open(file)?;
            if opened.entries().keys().any(|k| k.ends_with(T5_KEY)) {
                t5_weights = Some(T5Weights::from_path(file)?);
                continue;
            }
            let width = opened
                .entries()
                .iter()
                .find(|(k, _)| k.ends_with("embeddings.token_embedding.weight"))
                .map(|(_, e)| e.shape[1])
                .ok_or_else(|| {
                    anyhow!(
                        "{}: neither a CLIP nor a T5 text encoder (`[model] text_encoders`)",
                        file.display()
                    )
                })?;
            clips.push((width, opened));
        }
        match clips.len() {
            0 => {}
            2 => {
                // CLIP-L is the narrower (768 against bigG's 1280), whatever the list's order.
                clips.sort_by_key(|(w, _)| *w);
                let mut it = clips.into_iter();
                let (_, l) = it.next().expect("two");
                let (_, g) = it.next().expect("two");
                weights.retain(|k| !k.starts_with(CLIP_L_PREFIX) && !k.starts_with(CLIP_G_PREFIX));
                weights.add_file(l, clip_l_key_stored);
                weights.add_file(g, |k| text_encoder_key(CLIP_G_PREFIX, k));
            }
            n => bail!(
                "{}: `[model] text_encoders` lists {n} CLIP files; SD3 takes two (clip_l and clip_g) and a t5xxl",
                path.display()
            ),
        }
        if t5_weights.is_none() && weights.has_prefix(t5_prefix) {
            // Through the flow reader: a scaled-fp8 file's scales applied, left out as tensors.
            let keys: Vec<String> = TensorSource::names(&weights)
                .into_iter()
                .filter(|k| k.starts_with(t5_prefix))
                .collect();
            let tensors = keys
                .iter()
                .map(|k| {
                    let (t, scale) = read_with_scale(&weights, k)?;
                    Ok((k.clone(), t, scale))
                })
                .collect::<Result<Vec<_>>>()?;
            t5_weights = Some(T5Weights::from_tensors(
                path.display().to_string(),
                tensors,
            )?);
        }
        weights.retain(|k| !k.starts_with(t5_prefix));
        let t5 = match t5_weights {
            None => Err(format!(
                "{}: no T5 (text_encoders.t5xxl.* or a t5xxl file in `[model] text_encoders`)",
                path.display()
            )),
            Some(w) => with_tokenizer(w, path, options.t5_tokenizer.as_deref())?,
        };
        Ok(Self {
            path: path.into(),
            layout: Sd3Layout::SingleFile,
            weights,
            vae_json: None,
            clip_l_json: None,
            clip_g_json: None,
            t5,
            shift: DEFAULT_SHIFT,
            t5_placement: T5Placement::default(),
        })
    }

    /// Builds the transformer on `device` in `kind`.
    pub fn load_transformer(&self, device: Device, kind: Kind) -> Result<LoadedMmDit> {
        match self.layout {
            Sd3Layout::Folder => mmdit::load(&self.path, device, kind),
            Sd3Layout::SingleFile => {
                let source = &self.weights;
                let config = MmDitConfig::infer(source, SINGLE_FILE_PREFIX)?;
                let layout = Layout::Original {
                    prefix: SINGLE_FILE_PREFIX.into(),
                };
                mmdit::load_from(source, layout, &config, device, kind)
            }
        }
    }

    /// The transformer's config without building it (`info`, memory estimates).
    pub fn transformer_config(&self) -> Result<MmDitConfig> {
        match self.layout {
            Sd3Layout::Folder => {
                let file = self.path.join("transformer").join("config.json");
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("{}: cannot read", file.display()))?;
                MmDitConfig::from_diffusers_json(&text, &file.display().to_string())
            }
            Sd3Layout::SingleFile => MmDitConfig::infer(&self.weights, SINGLE_FILE_PREFIX),
        }
    }
}

/// A diffusers folder's flow shift: its scheduler config's, else [`DEFAULT_SHIFT`].
pub fn folder_shift(path: &Path) -> Result<f64> {
    let scheduler = read_json(&path.join("scheduler").join("scheduler_config.json"))?;
    Ok(match scheduler.as_ref().and_then(|s| s.get("shift")) {
        None => DEFAULT_SHIFT,
        Some(v) => v.as_f64().filter(|s| *s > 0.0).ok_or_else(|| {
            anyhow!(
                "{}: scheduler/scheduler_config.json: shift {v} must be a positive number",
                path.display()
            )
        })?,
    })
}

/// A single file's CLIP-L key (relative to its prefix) → model key; the projection is not
/// SD3's (see the module docs).
fn clip_l_key(rest: &str) -> Option<String> {
    (rest != "text_projection.weight")
        .then(|| text_encoder_key(CLIP_L_PREFIX, rest))
        .flatten()
}

/// A split clip_l file's key → model key.
fn clip_l_key_stored(key: &str) -> Option<String> {
    clip_l_key(key)
}

/// T5 with its tokenizer, or (no tokenizer) why the model runs without T5.
fn with_tokenizer(
    weights: T5Weights,
    model: &Path,
    configured: Option<&Path>,
) -> Result<std::result::Result<(T5Weights, PathBuf), String>> {
    Ok(match t5::locate_tokenizer(model, configured) {
        Ok(tokenizer) => Ok((weights, tokenizer)),
        // A tokenizer named but not found is the user's mistake: say so.
        Err(e) if configured.is_some() => return Err(e),
        Err(e) => Err(format!("{e:#}")),
    })
}
