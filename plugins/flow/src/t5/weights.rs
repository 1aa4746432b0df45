//! T5 encoder weights as files carry them: transformers' / ComfyUI's split `t5xxl_*.safetensors`
//! (`encoder.block.N.…`, `shared.weight`), a diffusers `text_encoder_3` / `text_encoder_2`
//! folder (possibly sharded), and single-file checkpoints (`text_encoders.t5xxl.transformer.…`,
//! one prefix strip, as diffusers' `convert_sd3_t5_checkpoint_to_diffusers` does).
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::Path;
use tch::{Kind, Tensor};

use crate::common::weights::{read_with_scale, TensorSource};

/// A stored tensor by name, with its scaled-fp8 scale if any (`common::weights::read_with_scale`).
pub type ScaledTensor = (String, Tensor, Option<f64>);

/// Prefix of the T5 encoder's keys in SD3 / Flux all-in-one checkpoints.
pub const SINGLE_FILE_PREFIX: &str = "text_encoders.t5xxl.transformer.";

/// The encoder's tensors under transformers' names, on the CPU in their stored dtype.
pub struct T5Weights {
    source: String,
    tensors: HashMap<String, Tensor>,
    /// Scaled fp8: the scale each of these weights is still to be multiplied by.
    scales: HashMap<String, f64>,
    /// `relative_attention_max_distance` and `layer_norm_epsilon` from a folder's config.json.
    pub(super) max_distance: Option<i64>,
    pub(super) epsilon: Option<f64>,
}

impl T5Weights {
    /// A `.safetensors` file (split or single-file layout) or a folder of them (diffusers'
    /// `text_encoder_3`, with its config.json).
    pub fn from_path(path: &Path) -> Result<Self> {
        let source = path.display().to_string();
        if !path.is_dir() {
            return Self::from_tensors(source, read_safetensors(path, is_t5_key)?);
        }
        let files = folder_files(path)?;
        let mut tensors = Vec::new();
        for file in &files {
            tensors.extend(read_safetensors(file, is_t5_key)?);
        }
        let mut weights = Self::from_tensors(source, tensors)?;
        let config = path.join("config.json");
        if config.is_file() {
            let json = read_json(&config)?;
            weights.max_distance = json["relative_attention_max_distance"].as_i64();
            weights.epsilon = json["layer_norm_epsilon"].as_f64();
        }
        Ok(weights)
    }

    /// Named tensors in either layout, each with the scale a scaled-fp8 file gives it
    /// (applied in the run's dtype by [`Self::converted`]); `source` names them in errors.
    pub fn from_tensors(source: String, tensors: Vec<ScaledTensor>) -> Result<Self> {
        let single_file = tensors
            .iter()
            .any(|(k, _, _)| k.starts_with(SINGLE_FILE_PREFIX));
        let mut scales = HashMap::new();
        let mut map: HashMap<String, Tensor> = HashMap::new();
        for (key, t, scale) in tensors {
            let key = match single_file {
                true => match key.strip_prefix(SINGLE_FILE_PREFIX) {
                    Some(k) => k.to_string(),
                    None => continue,
                },
                false => key,
            };
            if !(key.starts_with("encoder.") || key == "shared.weight") {
                continue;
            }
            if let Some(scale) = scale {
                scales.insert(key.clone(), scale);
            }
            map.insert(key, t);
        }
        // The embedding is tied: files keep it as `shared` or as `encoder.embed_tokens`.
        if let Some(embed) = map.remove("encoder.embed_tokens.weight") {
            if !map.contains_key("shared.weight") {
                if let Some(scale) = scales.remove("encoder.embed_tokens.weight") {
                    scales.insert("shared.weight".into(), scale);
                }
                map.insert("shared.weight".into(), embed);
            }
        }
        if !map.contains_key("encoder.block.0.layer.0.SelfAttention.q.weight") {
            bail!(
                "{source}: no T5 encoder weights (expected `encoder.block.N.…` and \
                 `shared.weight`, or `{SINGLE_FILE_PREFIX}…` in a single-file checkpoint)"
            );
        }
        Ok(Self {
            source,
            tensors: map,
            scales,
            max_distance: None,
            epsilon: None,
        })
    }

    /// Where the weights came from, for messages.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The same weights on `device` as `kind` (a scaled-fp8 weight times its scale there, as
    /// ComfyUI multiplies in the compute dtype), each stored tensor dropped once converted.
    pub fn converted(self, device: tch::Device, kind: Kind) -> Self {
        let scales = self.scales;
        let tensors = self
            .tensors
            .into_iter()
            .map(|(name, t)| {
                let t = t.to_device(device).to_kind(kind);
                let t = match scales.get(&name) {
                    Some(scale) => t * *scale,
                    None => t,
                };
                (name, t)
            })
            .collect();
        Self {
            tensors,
            scales: HashMap::new(),
            ..self
        }
    }

    /// Elements of every tensor held.
    pub fn parameters(&self) -> i64 {
        self.tensors.values().map(|t| t.numel() as i64).sum()
    }

    pub fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .with_context(|| format!("{}: T5 weight `{name}` is missing", self.source))
    }

    /// The tensor `name` checked to have `shape`.
    pub fn get_shaped(&self, name: &str, shape: &[i64]) -> Result<&Tensor> {
        let t = self.get(name)?;
        if t.size() != shape {
            bail!(
                "{}: T5 weight `{name}` has shape {:?}, expected {shape:?}",
                self.source,
                t.size()
            );
        }
        Ok(t)
    }

    /// The shape of a 2-D tensor.
    pub fn shape2(&self, name: &str) -> Result<[i64; 2]> {
        match self.get(name)?.size()[..] {
            [a, b] => Ok([a, b]),
            ref other => bail!("{}: T5 weight `{name}` is not 2-D: {other:?}", self.source),
        }
    }
}

/// The weight files of a transformers folder: `model.safetensors`, else the shards its
/// `model.safetensors.index.json` lists, else its only `.safetensors` file.
fn folder_files(folder: &Path) -> Result<Vec<std::path::PathBuf>> {
    let shown = folder.display();
    let single = folder.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = folder.join("model.safetensors.index.json");
    if index.is_file() {
        let mut shards: Vec<_> = read_json(&index)?["weight_map"]
            .as_object()
            .with_context(|| format!("{}: no weight_map", index.display()))?
            .values()
            .filter_map(|v| v.as_str())
            .map(|name| folder.join(name))
            .collect();
        shards.sort();
        shards.dedup();
        return Ok(shards);
    }
    let found: Vec<_> = std::fs::read_dir(folder)
        .with_context(|| format!("{shown}: cannot list the folder"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    match found.len() {
        1 => Ok(found),
        0 => bail!("{shown}: no .safetensors file in this T5 encoder folder"),
        n => bail!(
            "{shown}: {n} .safetensors files and no model.safetensors(.index.json): name the \
             one T5 file to use"
        ),
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))
}

fn is_t5_key(key: &str) -> bool {
    let key = key.strip_prefix(SINGLE_FILE_PREFIX).unwrap_or(key);
    key.starts_with("encoder.") || key == "shared.weight"
}

/// The tensors of a `.safetensors` file whose names pass `keep`, on the CPU in their stored
/// dtype (fp8 as fp16), each with its scale in a scaled-fp8 file (ComfyUI's
/// `t5xxl_fp8_e4m3fn_scaled`), read by the flow backends' transformer reader.
fn read_safetensors(path: &Path, keep: impl Fn(&str) -> bool) -> Result<Vec<ScaledTensor>> {
    let weights = crate::common::weights::open(path)?;
    let mut out = Vec::new();
    for name in TensorSource::names(&weights) {
        if keep(&name) {
            let (tensor, scale) = read_with_scale(&weights, &name)?;
            out.push((name, tensor, scale));
        }
    }
    Ok(out)
}
