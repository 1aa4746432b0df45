//! A CLIP text encoder's hyper-parameters read from a checkpoint: tensor shapes under its
//! family slot's prefix, and its diffusers `config.json` where there is one.
use anyhow::{bail, Result};

use crate::checkpoint::Checkpoint;
use crate::families::EncoderSpec;
use crate::text::clip::{Activation, ClipConfig};

impl ClipConfig {
    /// Reads the config of `spec`'s encoder from tensor shapes, or from its diffusers
    /// `config.json` where present; the activation of single files is the family's.
    pub fn infer(ckpt: &Checkpoint, spec: &EncoderSpec) -> Result<Self> {
        let p = format!("{}text_model.", spec.ldm_prefix);
        let tokens = ckpt.require_shape(&format!("{p}embeddings.token_embedding.weight"))?;
        let positions = ckpt.require_shape(&format!("{p}embeddings.position_embedding.weight"))?;
        let fc1 = ckpt.require_shape(&format!("{p}encoder.layers.0.mlp.fc1.weight"))?;
        let projection = format!("{}text_projection.weight", spec.ldm_prefix);
        let (vocab_size, hidden_size) = (tokens[0], tokens[1]);
        let mut cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: fc1[0],
            num_layers: ckpt.count_indexed(&format!("{p}encoder.layers.")),
            num_heads: Self::heads_for(hidden_size),
            max_positions: positions[0],
            activation: spec.activation,
            projection_dim: ckpt.shape(&projection).map(|s| s[0]),
            ..Self::default()
        };
        if let Some(json) = ckpt.configs().text_encoder(spec.diffusers_folder) {
            if let Some(heads) = json.get("num_attention_heads").and_then(|v| v.as_i64()) {
                cfg.num_heads = heads;
            }
            let act = json.get("hidden_act").and_then(|v| v.as_str());
            cfg.activation = Activation::from_name(act.unwrap_or("quick_gelu")).map_err(|e| {
                let folder = spec.diffusers_folder;
                anyhow::anyhow!("{}: {folder}/config.json: {e}", ckpt.path().display())
            })?;
            if let Some(eps) = json.get("layer_norm_eps").and_then(|v| v.as_f64()) {
                cfg.layer_norm_eps = eps;
            }
        }
        if cfg.num_heads <= 0 || hidden_size % cfg.num_heads != 0 {
            bail!(
                "{}: text encoder width {hidden_size} does not split into {} heads",
                ckpt.path().display(),
                cfg.num_heads
            );
        }
        if spec.pooled && cfg.projection_dim.is_none() {
            bail!(
                "{}: the {} text encoder has no text_projection — the checkpoint is incomplete",
                ckpt.path().display(),
                spec.name
            );
        }
        Ok(cfg)
    }
}
