//! The two key layouts SD3 transformers come in, and how each model tensor is made from a
//! file's tensors. The model's own keys are the original layout (SD3's `mmditx.py`, what the
//! single files people download hold under `model.diffusion_model.`); diffusers' layout is
//! renamed into it, the reverse of diffusers' `convert_sd3_transformer_checkpoint_to_diffusers`
//! (loaders/single_file_utils.py): q/k/v concatenated into `qkv`, and the scale/shift halves of
//! `norm_out` and of the last block's `norm1_context` swapped back.
use anyhow::{bail, Result};

use super::config::MmDitConfig;

/// The single-file prefix of the transformer's keys.
pub const SINGLE_FILE_PREFIX: &str = "model.diffusion_model.";

/// How the tensors of a file are named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The original keys behind `prefix` (`model.diffusion_model.`, or none in a
    /// transformer-only file).
    Original { prefix: String },
    /// diffusers `SD3Transformer2DModel` keys (`transformer_blocks.N.attn.to_q.weight`, ...).
    Diffusers,
}

/// What a model tensor is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    /// One stored tensor as it is.
    Key(String),
    /// Stored tensors concatenated along dim 0 (q, k, v → `qkv`).
    Concat(Vec<String>),
    /// One stored tensor with the two halves of dim 0 swapped (scale, shift → shift, scale).
    SwapHalves(String),
}

impl Recipe {
    /// The stored tensors it reads.
    pub fn sources(&self) -> Vec<&str> {
        match self {
            Recipe::Key(k) | Recipe::SwapHalves(k) => vec![k],
            Recipe::Concat(ks) => ks.iter().map(String::as_str).collect(),
        }
    }
}

impl Layout {
    /// The layout of a file with tensors `names`, `None` when it holds no SD3 transformer.
    pub fn detect(names: &[String]) -> Option<Layout> {
        let has = |k: &str| names.iter().any(|n| n == k);
        let marker = "x_embedder.proj.weight";
        if has(&format!("{SINGLE_FILE_PREFIX}{marker}")) {
            Some(Layout::Original {
                prefix: SINGLE_FILE_PREFIX.into(),
            })
        } else if has(marker) {
            Some(Layout::Original {
                prefix: String::new(),
            })
        } else if has("pos_embed.proj.weight") && has("transformer_blocks.0.attn.to_q.weight") {
            Some(Layout::Diffusers)
        } else {
            None
        }
    }

    /// How the model tensor `key` (original layout, no prefix) is made from this layout.
    pub fn recipe(&self, key: &str, cfg: &MmDitConfig) -> Result<Recipe> {
        match self {
            Layout::Original { prefix } => Ok(Recipe::Key(format!("{prefix}{key}"))),
            Layout::Diffusers => diffusers_recipe(key, cfg),
        }
    }
}

/// Original → diffusers names outside the blocks (prefixes of the parameter names).
const TOP_LEVEL: [(&str, &str); 7] = [
    ("x_embedder.proj.", "pos_embed.proj."),
    (
        "t_embedder.mlp.0.",
        "time_text_embed.timestep_embedder.linear_1.",
    ),
    (
        "t_embedder.mlp.2.",
        "time_text_embed.timestep_embedder.linear_2.",
    ),
    (
        "y_embedder.mlp.0.",
        "time_text_embed.text_embedder.linear_1.",
    ),
    (
        "y_embedder.mlp.2.",
        "time_text_embed.text_embedder.linear_2.",
    ),
    ("context_embedder.", "context_embedder."),
    ("final_layer.linear.", "proj_out."),
];

/// Original → diffusers names inside `joint_blocks.N.` / `transformer_blocks.N.`, one to one.
const IN_BLOCK: [(&str, &str); 15] = [
    ("x_block.attn.proj.", "attn.to_out.0."),
    ("x_block.attn.ln_q.", "attn.norm_q."),
    ("x_block.attn.ln_k.", "attn.norm_k."),
    ("x_block.attn2.proj.", "attn2.to_out.0."),
    ("x_block.attn2.ln_q.", "attn2.norm_q."),
    ("x_block.attn2.ln_k.", "attn2.norm_k."),
    ("x_block.adaLN_modulation.1.", "norm1.linear."),
    ("x_block.mlp.fc1.", "ff.net.0.proj."),
    ("x_block.mlp.fc2.", "ff.net.2."),
    ("context_block.attn.proj.", "attn.to_add_out."),
    ("context_block.attn.ln_q.", "attn.norm_added_q."),
    ("context_block.attn.ln_k.", "attn.norm_added_k."),
    ("context_block.adaLN_modulation.1.", "norm1_context.linear."),
    ("context_block.mlp.fc1.", "ff_context.net.0.proj."),
    ("context_block.mlp.fc2.", "ff_context.net.2."),
];

/// Fused projections: original `qkv` → the three diffusers projections.
const QKV: [(&str, [&str; 3]); 3] = [
    (
        "x_block.attn.qkv.",
        ["attn.to_q.", "attn.to_k.", "attn.to_v."],
    ),
    (
        "x_block.attn2.qkv.",
        ["attn2.to_q.", "attn2.to_k.", "attn2.to_v."],
    ),
    (
        "context_block.attn.qkv.",
        ["attn.add_q_proj.", "attn.add_k_proj.", "attn.add_v_proj."],
    ),
];

fn diffusers_recipe(key: &str, cfg: &MmDitConfig) -> Result<Recipe> {
    if key == "pos_embed" {
        return Ok(Recipe::Key("pos_embed.pos_embed".into()));
    }
    if let Some(param) = key.strip_prefix("final_layer.adaLN_modulation.1.") {
        return Ok(Recipe::SwapHalves(format!("norm_out.linear.{param}")));
    }
    if let Some(rest) = key.strip_prefix("joint_blocks.") {
        if let Some((index, inner)) = rest.split_once('.') {
            if let Ok(index) = index.parse::<usize>() {
                return block_recipe(index, inner, cfg).map(|r| rename(r, index));
            }
        }
    }
    for (original, diffusers) in TOP_LEVEL {
        if let Some(param) = key.strip_prefix(original) {
            return Ok(Recipe::Key(format!("{diffusers}{param}")));
        }
    }
    bail!("no diffusers name for the transformer's `{key}`")
}

/// The recipe inside block `index` (names relative to `transformer_blocks.{index}.`).
fn block_recipe(index: usize, inner: &str, cfg: &MmDitConfig) -> Result<Recipe> {
    for (original, parts) in QKV {
        if let Some(param) = inner.strip_prefix(original) {
            return Ok(Recipe::Concat(
                parts.iter().map(|p| format!("{p}{param}")).collect(),
            ));
        }
    }
    let last = index + 1 == cfg.num_layers;
    for (original, diffusers) in IN_BLOCK {
        if let Some(param) = inner.strip_prefix(original) {
            let name = format!("{diffusers}{param}");
            // The last block's pre-only text stream is diffusers' `AdaLayerNormContinuous`.
            return Ok(match last && original.starts_with("context_block.adaLN") {
                true => Recipe::SwapHalves(name),
                false => Recipe::Key(name),
            });
        }
    }
    bail!("no diffusers name for the transformer's `joint_blocks.{index}.{inner}`")
}

/// Puts block-relative names under `transformer_blocks.{index}.`.
fn rename(recipe: Recipe, index: usize) -> Recipe {
    let full = |n: String| format!("transformer_blocks.{index}.{n}");
    match recipe {
        Recipe::Key(k) => Recipe::Key(full(k)),
        Recipe::SwapHalves(k) => Recipe::SwapHalves(full(k)),
        Recipe::Concat(ks) => Recipe::Concat(ks.into_iter().map(full).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_names_follow_the_single_file_conversion() {
        let cfg = MmDitConfig::sd35_medium();
        let r = |k: &str| Layout::Diffusers.recipe(k, &cfg).unwrap();
        let key = |k: &str| Recipe::Key(k.into());
        assert_eq!(r("pos_embed"), key("pos_embed.pos_embed"));
        assert_eq!(r("x_embedder.proj.bias"), key("pos_embed.proj.bias"));
        assert_eq!(
            r("joint_blocks.3.context_block.attn.qkv.weight"),
            Recipe::Concat(vec![
                "transformer_blocks.3.attn.add_q_proj.weight".into(),
                "transformer_blocks.3.attn.add_k_proj.weight".into(),
                "transformer_blocks.3.attn.add_v_proj.weight".into(),
            ])
        );
        assert_eq!(
            r("joint_blocks.0.x_block.attn2.ln_k.weight"),
            key("transformer_blocks.0.attn2.norm_k.weight")
        );
        assert_eq!(
            r("joint_blocks.22.context_block.adaLN_modulation.1.bias"),
            key("transformer_blocks.22.norm1_context.linear.bias")
        );
        assert_eq!(
            r("joint_blocks.23.context_block.adaLN_modulation.1.bias"),
            Recipe::SwapHalves("transformer_blocks.23.norm1_context.linear.bias".into())
        );
        assert_eq!(
            r("final_layer.adaLN_modulation.1.weight"),
            Recipe::SwapHalves("norm_out.linear.weight".into())
        );
        assert_eq!(r("final_layer.linear.weight"), key("proj_out.weight"));
    }
}
