//! The transformers' tensors by stored name: one `.safetensors` file or a diffusers
//! `*.safetensors.index.json` and its shards, through model-parts' reader (memory-mapped,
//! validated headers, fp8 handed over as fp16), and ComfyUI's scaled fp8 undone as read.
//!
//! Scaled fp8 (ComfyUI's `*_fp8_scaled` files: a `scaled_fp8` marker tensor, and beside each
//! quantized `X.weight` a scalar `X.scale_weight`, optionally `X.scale_input`): the weight is
//! `X.weight · X.scale_weight` (ComfyUI's `comfy/ops.py` `scaled_fp8_op`, which multiplies in the
//! compute dtype; here in fp32, then the model's dtype). `scale_input` only matters to fp8
//! matmuls, which are not run here: the model computes in its own dtype.
use std::path::Path;

use anyhow::{anyhow, Result};
use hiresfix_model_parts::weights::folder::weights_files;
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use hiresfix_model_parts::weights::Weights;
use tch::{Kind, Tensor};

/// Named tensors, read one at a time (CPU).
pub trait TensorSource {
    /// What to name in errors (a path).
    fn describe(&self) -> String;
    /// The model tensors' names (a scaled-fp8 file's scales and marker left out).
    fn names(&self) -> Vec<String>;
    fn shape(&self, name: &str) -> Option<Vec<i64>>;
    /// The tensor `name` on the CPU: its stored dtype, fp16 for fp8, fp32 when a scale was
    /// applied.
    fn read(&self, name: &str) -> Result<Tensor>;
    fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }
}

/// The scaled-fp8 marker (bare or behind a checkpoint's prefix).
fn is_marker(name: &str) -> bool {
    name == "scaled_fp8" || name.ends_with(".scaled_fp8")
}

/// The scaled-fp8 marker and per-weight scales ([module docs](self)).
pub fn is_scale(name: &str) -> bool {
    is_marker(name) || name.ends_with(".scale_weight") || name.ends_with(".scale_input")
}

/// `info`'s stored dtype of `weights`: the dtypes of its tensors by parameters, scales left out,
/// and a scaled-fp8 file said to be one.
pub fn stored_dtype(weights: &Weights) -> String {
    let summary = weights.dtype_summary(|k| !is_scale(k));
    match weights.keys().any(is_marker) {
        true => format!("{summary}, ComfyUI scaled fp8 (each weight times its scale_weight)"),
        false => summary,
    }
}

/// The scale stored beside weight `name`, if the file is scaled fp8.
fn scale_of(name: &str) -> Option<String> {
    Some(format!("{}.scale_weight", name.strip_suffix(".weight")?))
}

impl TensorSource for Weights {
    fn describe(&self) -> String {
        self.path().display().to_string()
    }

    fn names(&self) -> Vec<String> {
        self.keys()
            .filter(|k| !is_scale(k))
            .map(String::from)
            .collect()
    }

    /// `None` for a scale or the marker, as [`Self::names`] leaves them out.
    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        match is_scale(name) {
            true => None,
            false => Weights::shape(self, name),
        }
    }

    fn read(&self, name: &str) -> Result<Tensor> {
        let (stored, scale) = read_with_scale(self, name)?;
        Ok(match scale {
            Some(scale) => stored.to_kind(Kind::Float) * scale,
            None => stored,
        })
    }
}

/// Tensor `name` as stored (fp8 as fp16) and, in a scaled-fp8 file, the scale it is to be
/// multiplied by: for a reader that multiplies once converted to its own dtype (T5, which
/// would otherwise hold a whole scaled T5-XXL in fp32).
pub fn read_with_scale(weights: &Weights, name: &str) -> Result<(Tensor, Option<f64>)> {
    let stored = Weights::read(weights, name)?;
    if !stored.is_floating_point() {
        return Err(anyhow!(
            "{}: tensor `{name}` is stored as {:?}, not floating point: not a model this loader \
             reads (quantized formats such as bnb-nf4 are not supported; use an fp16, bf16 or \
             fp8 file)",
            weights.describe(),
            stored.kind()
        ));
    }
    let Some(scale) = scale_of(name).filter(|s| Weights::contains(weights, s)) else {
        return Ok((stored, None));
    };
    let scale = Weights::read(weights, &scale)?.to_kind(Kind::Float);
    if scale.numel() != 1 {
        return Err(anyhow!(
            "{}: `{name}`'s scale_weight has {} values; scaled fp8 files hold one",
            weights.describe(),
            scale.numel()
        ));
    }
    Ok((stored, Some(f64::try_from(scale.reshape([1]).get(0))?)))
}

/// Opens `path`: a `.safetensors` file, or a `NAME.safetensors.index.json` and the shards its
/// `weight_map` lists. Tensors keep their stored names.
pub fn open(path: &Path) -> Result<Weights> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let stem = name
        .as_deref()
        .and_then(|n| n.strip_suffix(".safetensors.index.json"));
    let files = match stem {
        Some(stem) => weights_files(path.parent().unwrap_or(Path::new(".")), stem)?,
        None => vec![path.to_path_buf()],
    };
    let mut weights = Weights::new(path);
    for file in files {
        weights.add_file(SafetensorsFile::open(&file)?, |k| Some(k.to_string()));
    }
    Ok(weights)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_and_the_marker_are_not_model_tensors() {
        for name in [
            "scaled_fp8",
            "model.diffusion_model.scaled_fp8",
            "double_blocks.0.img_attn.qkv.scale_weight",
            "double_blocks.0.img_attn.qkv.scale_input",
        ] {
            assert!(is_scale(name), "{name}");
        }
        assert!(!is_scale("double_blocks.0.img_attn.qkv.weight"));
        assert_eq!(
            scale_of("img_in.weight").as_deref(),
            Some("img_in.scale_weight")
        );
        assert_eq!(scale_of("img_in.bias"), None);
    }
}
