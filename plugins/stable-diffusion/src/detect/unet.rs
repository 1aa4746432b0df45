//! A UNet's hyper-parameters read from a checkpoint: its tensor shapes, and the diffusers
//! `unet/config.json` where there is one (ComfyUI's `detect_unet_config`). The head count is
//! the one number shapes cannot tell: single files follow their family's [`HeadRule`].
use anyhow::{anyhow, bail, Result};

use crate::checkpoint::Checkpoint;
use crate::convert::UNET_PREFIX;
use crate::unet::config::{HeadRule, UNetConfig};

impl UNetConfig {
    /// Reads the architecture from tensor shapes; heads from the diffusers config when there
    /// is one, else by `head_rule`.
    pub fn infer(ckpt: &Checkpoint, head_rule: HeadRule) -> Result<Self> {
        let key = |k: &str| format!("{UNET_PREFIX}{k}");
        let conv_in = ckpt.require_shape(&key("input_blocks.0.0.weight"))?;
        let (model_channels, in_channels) = (conv_in[0], conv_in[1]);
        let out_channels = ckpt.require_shape(&key("out.2.weight"))?[0];
        let time_embed_dim = ckpt.require_shape(&key("time_embed.0.weight"))?[0];
        let levels = infer_levels(ckpt, model_channels)?;
        let attn_key = ckpt
            .keys()
            .find(|k| k.starts_with(UNET_PREFIX) && k.ends_with("attn2.to_k.weight"))
            .map(str::to_owned);
        let context_dim = match attn_key {
            Some(k) => ckpt.require_shape(&k)?[1],
            None => bail!(
                "{}: the UNet has no cross-attention (attn2.to_k) — not a text-to-image model",
                ckpt.path().display()
            ),
        };
        let proj_key = ckpt
            .keys()
            .find(|k| k.starts_with(UNET_PREFIX) && k.ends_with(".proj_in.weight"))
            .map(str::to_owned)
            .unwrap_or_default();
        let linear_projection = ckpt.shape(&proj_key).is_some_and(|s| s.len() == 2);
        let adm_in_channels = ckpt.shape(&key("label_emb.0.0.weight")).map(|s| s[1]);
        let mut cfg = Self {
            in_channels,
            out_channels,
            model_channels,
            channel_mult: levels.iter().map(|l| l.0).collect(),
            num_res_blocks: levels.iter().map(|l| l.1).collect(),
            transformer_depth: levels.iter().map(|l| l.2).collect(),
            mid_transformer_depth: ckpt.count_indexed(&key("middle_block.1.transformer_blocks.")),
            heads: Vec::new(),
            mid_heads: 0,
            context_dim,
            linear_projection,
            time_embed_dim,
            adm_in_channels,
        };
        match ckpt
            .configs()
            .unet
            .as_ref()
            .map(diffusers_heads)
            .transpose()?
        {
            Some(Some(heads)) => {
                cfg.heads = match heads.len() {
                    1 => vec![heads[0]; cfg.channel_mult.len()],
                    _ => heads,
                };
                cfg.mid_heads = *cfg.heads.last().unwrap_or(&0);
                let source = "unet/config.json attention_head_dim / num_attention_heads";
                cfg.validate()
                    .map_err(|e| anyhow!("{}: {e} ({source})", ckpt.path().display()))?;
            }
            _ => cfg.heads_by_rule(head_rule),
        }
        cfg.validate()
            .map_err(|e| anyhow!("{}: {e}", ckpt.path().display()))?;
        Ok(cfg)
    }
}

/// diffusers `num_attention_heads`, else its legacy `attention_head_dim` (which diffusers
/// reads as the head count): one number or one per level.
fn diffusers_heads(json: &serde_json::Value) -> Result<Option<Vec<i64>>> {
    let value = json
        .get("num_attention_heads")
        .filter(|v| !v.is_null())
        .or_else(|| json.get("attention_head_dim"));
    let heads: Vec<i64> = match value {
        Some(serde_json::Value::Number(n)) => vec![n.as_i64().unwrap_or(0)],
        Some(serde_json::Value::Array(list)) => {
            list.iter().map(|v| v.as_i64().unwrap_or(0)).collect()
        }
        _ => return Ok(None),
    };
    if heads.is_empty() {
        bail!("unet/config.json: attention_head_dim is an empty list");
    }
    Ok(Some(heads))
}

/// `(channel mult, res blocks, transformer depth)` per level, walking `input_blocks`.
fn infer_levels(ckpt: &Checkpoint, model_channels: i64) -> Result<Vec<(i64, usize, usize)>> {
    let p = UNET_PREFIX;
    let shown = ckpt.path().display();
    let mut levels = Vec::new();
    let mut current: Option<(i64, usize, usize)> = None;
    for i in 1..ckpt.count_indexed(&format!("{p}input_blocks.")) {
        if ckpt.contains(&format!("{p}input_blocks.{i}.0.op.weight")) {
            levels.push(current.take().ok_or_else(|| {
                anyhow!("{shown}: UNet level without ResBlocks before input_blocks.{i}")
            })?);
            continue;
        }
        let width = ckpt.require_shape(&format!("{p}input_blocks.{i}.0.out_layers.3.weight"))?[0];
        let depth = ckpt.count_indexed(&format!("{p}input_blocks.{i}.1.transformer_blocks."));
        if width % model_channels != 0 {
            bail!("{shown}: input_blocks.{i} is {width} wide, not a multiple of {model_channels}");
        }
        let level = current.get_or_insert((width / model_channels, 0, depth));
        if level.0 != width / model_channels || level.2 != depth {
            bail!("{shown}: input_blocks.{i} differs from the rest of its level (width {width}, depth {depth})");
        }
        level.1 += 1;
    }
    levels.extend(current);
    if levels.is_empty() {
        bail!("{shown}: the UNet has no input_blocks");
    }
    Ok(levels)
}
