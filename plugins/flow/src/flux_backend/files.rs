//! A Flux model's files read into model keys, whatever the layout: a diffusers folder
//! (`transformer/`, `text_encoder/` CLIP-L, `text_encoder_2/` T5, `tokenizer_2/`, `vae/`,
//! `scheduler/`), an all-in-one file (`model.diffusion_model.*`,
//! `text_encoders.clip_l/t5xxl.transformer.*`, `vae.*`), or a transformer file (BFL or
//! diffusers names) with the split `clip_l` and `t5xxl` files `[model] text_encoders` lists and
//! the `ae` file `[model] vae` names.
//!
//! Flux pools CLIP-L unprojected (diffusers `CLIPTextModel.pooler_output`, BFL `HFEmbedder`):
//! a `text_projection` in the file (ComfyUI's clip_l is SD3's too) is not read.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use hiresfix_model_parts::convert::diffusers_vae::vae_renames;
use hiresfix_model_parts::convert::hf_clip::text_encoder_key;
use hiresfix_model_parts::convert::VAE_PREFIX;
use hiresfix_model_parts::weights::folder::{read_json, weights_files};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use hiresfix_model_parts::weights::Weights;
use serde_json::Value;

use super::detect::{detect, Detected, FluxLayout};
use super::names::{AIO_VAE_PREFIX, CLIP_L_PREFIX, T5_KEY};
use super::shift::ShiftRule;
use crate::common::load::apply_vae;
use crate::common::LoadOptions;
use crate::flux::Variant;
use crate::t5::{self, T5Placement, T5Weights};

/// The files of one Flux model, read (headers mapped) but not yet built.
pub struct FluxFiles {
    pub path: PathBuf,
    pub layout: FluxLayout,
    pub variant: Variant,
    /// CLIP-L and the VAE under model keys.
    pub weights: Weights,
    pub vae_json: Option<Value>,
    pub clip_l_json: Option<Value>,
    /// T5's weights and its tokenizer file.
    pub t5: (T5Weights, PathBuf),
    pub shift: ShiftRule,
    /// Where T5 runs (the profile's `[model] t5`).
    pub t5_placement: T5Placement,
    /// `[model] weight_dtype = "fp8_e4m3fn"`: the transformer's linear weights held in fp8.
    pub fp8_weights: bool,
}

/// A CLIP-L key (relative to its prefix) → model key; the projection is not Flux's.
fn clip_l_key(rest: &str) -> Option<String> {
    (rest != "text_projection.weight")
        .then(|| text_encoder_key(CLIP_L_PREFIX, rest))
        .flatten()
}

impl FluxFiles {
    pub fn open(path: &Path, options: &LoadOptions) -> Result<Self> {
        let found =
            detect(path)?.ok_or_else(|| anyhow!("{}: not a Flux checkpoint", path.display()))?;
        let mut files = match found.layout {
            FluxLayout::Folder => Self::open_folder(path, found, options)?,
            FluxLayout::SingleFile => Self::open_single(path, found, options)?,
        };
        files.t5_placement = options.t5_placement;
        files.fp8_weights = options.fp8_weights;
        if let Some(json) = apply_vae(&mut files.weights, options, path, "Flux's ae.safetensors")? {
            files.vae_json = Some(json);
        }
        if !files.weights.has_prefix(CLIP_L_PREFIX) {
            bail!(
                "{}: no CLIP-L text encoder — list the clip_l and t5xxl files in `[model] \
                 text_encoders`",
                path.display()
            );
        }
        Ok(files)
    }

    fn open_folder(path: &Path, found: Detected, options: &LoadOptions) -> Result<Self> {
        let mut weights = Weights::new(path);
        for file in weights_files(&path.join("text_encoder"), "model")? {
            weights.add_file(SafetensorsFile::open(&file)?, clip_l_key);
        }
        crate::common::folder::add_vae(&mut weights, path)?;
        let json = |sub: &str| read_json(&path.join(sub).join("config.json"));
        let scheduler = path.join("scheduler").join("scheduler_config.json");
        let shift = ShiftRule::from_scheduler(
            read_json(&scheduler)?.as_ref(),
            found.variant,
            &scheduler.display().to_string(),
        )?;
        let encoder = path.join("text_encoder_2");
        if !encoder.is_dir() {
            bail!(
                "{}: no text_encoder_2 (T5): a Flux folder needs it",
                path.display()
            );
        }
        let t5 = T5Weights::from_path(&encoder)?;
        let tokenizer = t5::locate_tokenizer(path, options.t5_tokenizer.as_deref())?;
        Ok(Self {
            path: path.into(),
            layout: FluxLayout::Folder,
            variant: found.variant,
            vae_json: json("vae")?,
            clip_l_json: json("text_encoder")?,
            weights,
            t5: (t5, tokenizer),
            shift,
            t5_placement: T5Placement::default(),
            fp8_weights: false,
        })
    }

    /// An all-in-one file, or a transformer file with the split text encoders.
    fn open_single(path: &Path, found: Detected, options: &LoadOptions) -> Result<Self> {
        let mut weights = Weights::new(path);
        let file = SafetensorsFile::open(path)?;
        let vae_keys = vae_renames(
            file.entries()
                .keys()
                .filter(|k| k.starts_with(AIO_VAE_PREFIX) || k.starts_with(VAE_PREFIX))
                .map(String::as_str),
        );
        let has_t5 = file.entries().keys().any(|k| k.ends_with(T5_KEY));
        weights.add_file(file, |k| match k.strip_prefix(CLIP_L_PREFIX) {
            Some(rest) => clip_l_key(rest),
            None => vae_keys.get(k).cloned(),
        });
        let mut t5 = has_t5.then(|| T5Weights::from_path(path)).transpose()?;
        let mut clips = Vec::new();
        for file in &options.text_encoders {
            let opened = SafetensorsFile::open(file)?;
            if opened.entries().keys().any(|k| k.ends_with(T5_KEY)) {
                t5 = Some(T5Weights::from_path(file)?);
                continue;
            }
            if !opened
                .entries()
                .keys()
                .any(|k| k.ends_with("embeddings.token_embedding.weight"))
            {
                bail!(
                    "{}: neither a CLIP nor a T5 text encoder (`[model] text_encoders`)",
                    file.display()
                );
            }
            clips.push(opened);
        }
        match clips.len() {
            0 => {}
            1 => {
                weights.retain(|k| !k.starts_with(CLIP_L_PREFIX));
                let clip = clips.pop().expect("one");
                weights.add_file(clip, clip_l_key);
            }
            n => bail!(
                "{}: `[model] text_encoders` lists {n} CLIP files; Flux takes one (clip_l) and a \
                 t5xxl",
                path.display()
            ),
        }
        let t5 = t5.ok_or_else(|| {
            anyhow!(
                "{}: no T5 text encoder — list the t5xxl file in `[model] text_encoders`",
                path.display()
            )
        })?;
        let tokenizer = t5::locate_tokenizer(path, options.t5_tokenizer.as_deref())?;
        Ok(Self {
            path: path.into(),
            layout: FluxLayout::SingleFile,
            variant: found.variant,
            weights,
            vae_json: None,
            clip_l_json: None,
            t5: (t5, tokenizer),
            shift: ShiftRule::published(found.variant),
            t5_placement: T5Placement::default(),
            fp8_weights: false,
        })
    }
}
