//! UNet hyper-parameters, read from a checkpoint's tensor shapes (and a diffusers
//! `unet/config.json` where there is one). The head count is the one number shapes cannot
//! tell: single files follow their family's [`HeadRule`].
use anyhow::{anyhow, bail, Result};

use crate::checkpoint::Checkpoint;
use crate::convert::UNET_PREFIX;

/// How a family splits a transformer's width into attention heads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRule {
    /// A fixed number of heads at every width (SD 1.x: 8).
    FixedHeads(i64),
    /// A fixed width per head (SD 2.x, SDXL: 64).
    FixedDim(i64),
}

impl HeadRule {
    /// Heads for a transformer `channels` wide, `None` when the width does not split.
    pub fn heads(self, channels: i64) -> Option<i64> {
        let heads = match self {
            HeadRule::FixedHeads(h) => h,
            HeadRule::FixedDim(d) if d > 0 => channels / d,
            HeadRule::FixedDim(_) => 0,
        };
        (heads > 0 && channels % heads == 0).then_some(heads)
    }
}

/// UNet hyper-parameters (LDM `UNetModel` arguments), per level from the top.
#[derive(Debug, Clone, PartialEq)]
pub struct UNetConfig {
    /// Latent channels in (4; 9 for inpainting models).
    pub in_channels: i64,
    /// Channels out (the predicted noise or velocity).
    pub out_channels: i64,
    /// Width of the first level (320 for SD).
    pub model_channels: i64,
    /// Width of each level as a multiple of `model_channels`.
    pub channel_mult: Vec<i64>,
    /// ResBlocks per level on the way down (one more on the way up).
    pub num_res_blocks: Vec<usize>,
    /// Transformer blocks per SpatialTransformer at each level; 0 = no attention there.
    pub transformer_depth: Vec<usize>,
    /// Transformer blocks in the middle block's SpatialTransformer.
    pub mid_transformer_depth: usize,
    /// Attention heads at each level (ignored where the depth is 0).
    pub heads: Vec<i64>,
    /// Attention heads in the middle block.
    pub mid_heads: i64,
    /// Width of the text conditioning (cross-attention key/value input).
    pub context_dim: i64,
    /// SD 2.x / SDXL style Linear `proj_in`/`proj_out` instead of 1x1 convs.
    pub linear_projection: bool,
    /// Width of the timestep embedding (4 × `model_channels` in SD).
    pub time_embed_dim: i64,
    /// Width of the vector conditioning added to the timestep embedding through
    /// `label_emb` (SDXL's pooled text + size ids: 2816); `None` without one.
    pub adm_in_channels: Option<i64>,
}

impl UNetConfig {
    /// Per-level and middle head counts for `channel_mult` by `rule`; 0 where the width does
    /// not split (allowed only where there is no attention).
    pub fn heads_by_rule(&mut self, rule: HeadRule) {
        let width = |m: &i64| m * self.model_channels;
        self.heads = self
            .channel_mult
            .iter()
            .map(|m| rule.heads(width(m)).unwrap_or(0))
            .collect();
        self.mid_heads = self
            .channel_mult
            .last()
            .and_then(|m| rule.heads(width(m)))
            .unwrap_or(0);
    }

    /// Number of times the latent is halved on the way down.
    pub fn downsamples(&self) -> usize {
        self.channel_mult.len().saturating_sub(1)
    }

    /// Width of each level in channels.
    pub fn widths(&self) -> Vec<i64> {
        self.channel_mult
            .iter()
            .map(|m| m * self.model_channels)
            .collect()
    }

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

    /// The checks that keep shape errors out of the forward pass.
    pub fn validate(&self) -> Result<()> {
        let levels = self.channel_mult.len();
        if levels == 0
            || self.num_res_blocks.len() != levels
            || self.transformer_depth.len() != levels
            || self.heads.len() != levels
        {
            bail!("UNet config: channel_mult, num_res_blocks, transformer_depth and heads need one entry per level");
        }
        let widths = self.widths();
        let attention = widths
            .iter()
            .zip(&self.heads)
            .zip(&self.transformer_depth)
            .filter(|(_, depth)| **depth > 0)
            .map(|((w, h), _)| (*w, *h))
            .chain(std::iter::once((
                *widths.last().unwrap_or(&0),
                self.mid_heads,
            )));
        for (width, heads) in attention {
            if heads <= 0 || width % heads != 0 {
                bail!("a UNet attention block {width} channels wide does not split into {heads} heads");
            }
        }
        if let Some(w) = widths
            .iter()
            .find(|w| **w <= 0 || **w % crate::layers::NORM_GROUPS != 0)
        {
            bail!(
                "a UNet block {w} channels wide does not split into {} GroupNorm groups",
                crate::layers::NORM_GROUPS
            );
        }
        Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_rules_split_widths() {
        assert_eq!(HeadRule::FixedHeads(8).heads(320), Some(8));
        assert_eq!(HeadRule::FixedDim(64).heads(1280), Some(20));
        assert_eq!(HeadRule::FixedDim(64).heads(32), None);
        assert_eq!(HeadRule::FixedHeads(8).heads(36), None);
    }
}
