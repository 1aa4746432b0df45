//! The transformer's hyper-parameters: read from a diffusers `config.json`, or inferred from
//! the tensor shapes of a single file (as ComfyUI's `model_detection.py` does for MMDiT).
use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::common::weights::TensorSource;

/// diffusers `SD3Transformer2DModel`'s configuration, the fields the forward uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MmDitConfig {
    /// Side of the square patches (2).
    pub patch_size: i64,
    /// Latent channels in (16).
    pub in_channels: i64,
    /// Latent channels out (16).
    pub out_channels: i64,
    /// Joint blocks; the last one's text stream is pre-only.
    pub num_layers: usize,
    /// Channels per attention head (64 in every published SD3 model).
    pub attention_head_dim: i64,
    pub num_attention_heads: i64,
    /// Width of the text encoders' token embeddings (4096: T5-XXL, CLIP padded).
    pub joint_attention_dim: i64,
    /// Width of the projected text tokens; equals the hidden size.
    pub caption_projection_dim: i64,
    /// Width of the pooled text vector (2048: CLIP-L + CLIP-G).
    pub pooled_projection_dim: i64,
    /// Side, in patches, of the stored positional-embedding grid (192 for SD3 / 3.5 large,
    /// 384 for 3.5 medium); a latent's grid is cropped from its centre.
    pub pos_embed_max_size: i64,
    /// Blocks whose image stream has a second self-attention `attn2` (SD 3.5 medium: 0..=12).
    pub dual_attention_layers: Vec<usize>,
    /// Per-head RMSNorm of queries and keys (`qk_norm = "rms_norm"`: SD 3.5).
    pub qk_norm: bool,
}

impl MmDitConfig {
    /// Width of every token inside the blocks.
    pub fn hidden_size(&self) -> i64 {
        self.num_attention_heads * self.attention_head_dim
    }

    /// stabilityai/stable-diffusion-3.5-medium's `transformer/config.json`.
    pub fn sd35_medium() -> Self {
        MmDitConfig {
            patch_size: 2,
            in_channels: 16,
            out_channels: 16,
            num_layers: 24,
            attention_head_dim: 64,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            caption_projection_dim: 1536,
            pooled_projection_dim: 2048,
            pos_embed_max_size: 384,
            dual_attention_layers: (0..=12).collect(),
            qk_norm: true,
        }
    }

    /// From a diffusers `transformer/config.json` (`what` names it in errors).
    pub fn from_diffusers_json(text: &str, what: &str) -> Result<Self> {
        let json: Value =
            serde_json::from_str(text).with_context(|| format!("{what}: not JSON"))?;
        let int = |key: &str, default: Option<i64>| -> Result<i64> {
            match json.get(key) {
                Some(v) => v
                    .as_i64()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| anyhow!("{what}: `{key}` must be a positive integer")),
                None => default.ok_or_else(|| anyhow!("{what}: no `{key}`")),
            }
        };
        let qk_norm = match json.get("qk_norm") {
            None | Some(Value::Null) => false,
            Some(v) if v.as_str() == Some("rms_norm") => true,
            Some(v) => bail!("{what}: qk_norm {v} is not supported (only \"rms_norm\", SD 3.5)"),
        };
        let dual = match json.get("dual_attention_layers") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_u64().map(|n| n as usize))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    anyhow!("{what}: `dual_attention_layers` must list block numbers")
                })?,
            Some(_) => bail!("{what}: `dual_attention_layers` must list block numbers"),
        };
        let in_channels = int("in_channels", Some(16))?;
        let cfg = MmDitConfig {
            patch_size: int("patch_size", Some(2))?,
            in_channels,
            out_channels: int("out_channels", Some(in_channels))?,
            num_layers: int("num_layers", Some(18))? as usize,
            attention_head_dim: int("attention_head_dim", Some(64))?,
            num_attention_heads: int("num_attention_heads", Some(18))?,
            joint_attention_dim: int("joint_attention_dim", Some(4096))?,
            caption_projection_dim: int("caption_projection_dim", Some(1152))?,
            pooled_projection_dim: int("pooled_projection_dim", Some(2048))?,
            pos_embed_max_size: int("pos_embed_max_size", Some(96))?,
            dual_attention_layers: dual,
            qk_norm,
        };
        cfg.check(what)?;
        Ok(cfg)
    }

    /// From the shapes of the tensors of `source` in the original layout behind `prefix`.
    /// Heads are 64 wide unless `ln_q` says otherwise (SD3 convention: hidden size = 64 ·
    /// depth); the block count is the highest `joint_blocks.N` + 1, as diffusers counts.
    pub fn infer(source: &dyn TensorSource, prefix: &str) -> Result<Self> {
        let what = source.describe();
        let shape = |key: &str| source.shape(&format!("{prefix}{key}"));
        let need = |key: &str, rank: usize| -> Result<Vec<i64>> {
            shape(key).filter(|s| s.len() == rank).ok_or_else(|| {
                anyhow!("{what}: no {rank}-D tensor `{prefix}{key}`: not an SD3 transformer")
            })
        };
        let x_embedder = need("x_embedder.proj.weight", 4)?;
        let (hidden, in_channels, patch) = (x_embedder[0], x_embedder[1], x_embedder[2]);
        let blocks = format!("{prefix}joint_blocks.");
        let num_layers = source
            .names()
            .iter()
            .filter_map(|n| {
                n.strip_prefix(&blocks)?
                    .split('.')
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .max()
            .map_or(0, |last| last + 1);
        let head_dim = match shape(&block_key(0, "x_block.attn.ln_q.weight")) {
            Some(s) => s.first().copied().unwrap_or(64),
            None => 64,
        };
        if head_dim <= 0 || hidden % head_dim != 0 {
            bail!("{what}: hidden size {hidden} is not a whole number of {head_dim}-wide heads");
        }
        let context = need("context_embedder.weight", 2)?;
        let pos = need("pos_embed", 3)?;
        let max = (pos[1] as f64).sqrt().round() as i64;
        let cfg = MmDitConfig {
            patch_size: patch,
            in_channels,
            out_channels: need("final_layer.linear.weight", 2)?[0] / (patch * patch).max(1),
            num_layers,
            attention_head_dim: head_dim,
            num_attention_heads: hidden / head_dim,
            joint_attention_dim: context[1],
            caption_projection_dim: context[0],
            pooled_projection_dim: need("y_embedder.mlp.0.weight", 2)?[1],
            pos_embed_max_size: max,
            dual_attention_layers: (0..num_layers)
                .filter(|i| shape(&block_key(*i, "x_block.attn2.qkv.weight")).is_some())
                .collect(),
            qk_norm: shape(&block_key(0, "x_block.attn.ln_q.weight")).is_some(),
        };
        if max * max != pos[1] {
            bail!(
                "{what}: `pos_embed` holds {} positions, not a square grid",
                pos[1]
            );
        }
        cfg.check(&what)?;
        Ok(cfg)
    }

    fn check(&self, what: &str) -> Result<()> {
        if self.num_layers == 0 {
            bail!("{what}: no joint blocks (`joint_blocks.0.*`): not an SD3 transformer");
        }
        if self.hidden_size() != self.caption_projection_dim {
            bail!(
                "{what}: caption_projection_dim {} differs from heads × head dim = {}",
                self.caption_projection_dim,
                self.hidden_size()
            );
        }
        if let Some(i) = self
            .dual_attention_layers
            .iter()
            .find(|i| **i >= self.num_layers)
        {
            bail!(
                "{what}: dual attention layer {i} is past the last block ({})",
                self.num_layers - 1
            );
        }
        Ok(())
    }
}

/// `joint_blocks.{index}.{rest}`.
pub fn block_key(index: usize, rest: &str) -> String {
    format!("joint_blocks.{index}.{rest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_config_of_sd35_medium_reads_as_the_builtin() {
        let text = r#"{"_class_name": "SD3Transformer2DModel", "attention_head_dim": 64,
            "caption_projection_dim": 1536, "dual_attention_layers": [0,1,2,3,4,5,6,7,8,9,10,11,12],
            "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24,
            "num_layers": 24, "out_channels": 16, "patch_size": 2, "pooled_projection_dim": 2048,
            "pos_embed_max_size": 384, "qk_norm": "rms_norm", "sample_size": 128}"#;
        let cfg = MmDitConfig::from_diffusers_json(text, "config.json").unwrap();
        assert_eq!(cfg, MmDitConfig::sd35_medium());
        assert_eq!(cfg.hidden_size(), 1536);
    }

    #[test]
    fn unsupported_diffusers_configs_are_refused_naming_the_field() {
        let refuse = |text: &str| {
            MmDitConfig::from_diffusers_json(text, "c.json")
                .unwrap_err()
                .to_string()
        };
        assert!(refuse(r#"{"qk_norm": "layer_norm"}"#)
            .contains("qk_norm \"layer_norm\" is not supported"));
        assert!(refuse(r#"{"num_layers": 0}"#).contains("`num_layers` must be a positive integer"));
        assert!(refuse(r#"{"num_layers": 2, "dual_attention_layers": [2]}"#)
            .contains("dual attention layer 2"));
        assert!(
            refuse(r#"{"caption_projection_dim": 1000}"#).contains("caption_projection_dim 1000")
        );
    }
}
