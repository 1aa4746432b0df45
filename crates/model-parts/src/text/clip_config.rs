//! A CLIP text encoder's hyper-parameters read from its weights: tensor shapes under its
//! prefix, and its transformers `config.json` where there is one.
use anyhow::{bail, Result};
use serde_json::Value;

use super::clip::{Activation, ClipConfig};
use crate::weights::Weights;

/// Where a CLIP text encoder sits and what its file cannot tell.
pub struct ClipSlot<'a> {
    /// e.g. `CLIP-L`, `OpenCLIP ViT-bigG` (messages).
    pub name: &'a str,
    /// Model-key prefix: the encoder's keys are `{prefix}text_model.*`.
    pub prefix: &'a str,
    /// The MLP activation where no config says it (single files carry none).
    pub activation: Activation,
    /// Whether the projected end-of-text token is used (its `text_projection` required).
    pub pooled: bool,
    /// Its transformers `config.json` and the folder it was read from (messages).
    pub config: Option<(&'a str, &'a Value)>,
}

impl ClipConfig {
    /// Reads the config of the encoder in `slot` from tensor shapes, or from its
    /// `config.json` where present.
    pub fn infer(weights: &Weights, slot: &ClipSlot) -> Result<Self> {
        let p = format!("{}text_model.", slot.prefix);
        let tokens = weights.require_shape(&format!("{p}embeddings.token_embedding.weight"))?;
        let positions =
            weights.require_shape(&format!("{p}embeddings.position_embedding.weight"))?;
        let fc1 = weights.require_shape(&format!("{p}encoder.layers.0.mlp.fc1.weight"))?;
        let projection = format!("{}text_projection.weight", slot.prefix);
        let (vocab_size, hidden_size) = (tokens[0], tokens[1]);
        let mut cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: fc1[0],
            num_layers: weights.count_indexed(&format!("{p}encoder.layers.")),
            num_heads: Self::heads_for(hidden_size),
            max_positions: positions[0],
            activation: slot.activation,
            projection_dim: weights.shape(&projection).map(|s| s[0]),
            ..Self::default()
        };
        if let Some((folder, json)) = slot.config {
            if let Some(heads) = json.get("num_attention_heads").and_then(|v| v.as_i64()) {
                cfg.num_heads = heads;
            }
            let act = json.get("hidden_act").and_then(|v| v.as_str());
            cfg.activation = Activation::from_name(act.unwrap_or("quick_gelu")).map_err(|e| {
                anyhow::anyhow!("{}: {folder}/config.json: {e}", weights.path().display())
            })?;
            if let Some(eps) = json.get("layer_norm_eps").and_then(|v| v.as_f64()) {
                cfg.layer_norm_eps = eps;
            }
        }
        if cfg.num_heads <= 0 || hidden_size % cfg.num_heads != 0 {
            bail!(
                "{}: text encoder width {hidden_size} does not split into {} heads",
                weights.path().display(),
                cfg.num_heads
            );
        }
        if slot.pooled && cfg.projection_dim.is_none() {
            bail!(
                "{}: the {} text encoder has no text_projection — the checkpoint is incomplete",
                weights.path().display(),
                slot.name
            );
        }
        Ok(cfg)
    }
}
