//! UNet hyper-parameters. Read from a checkpoint's tensor shapes (and a diffusers
//! `unet/config.json` where there is one) by detection (`UNetConfig::infer`, in
//! [`crate::detect::unet`]); the head count is the one number shapes cannot tell: single files
//! follow their family's [`HeadRule`].
use anyhow::{bail, Result};

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

    /// Number of input blocks (`input_blocks.N`): the first conv, each level's ResBlocks and
    /// each level's downsample but the last's.
    pub fn input_blocks(&self) -> usize {
        1 + self.num_res_blocks.iter().sum::<usize>() + self.downsamples()
    }

    /// Width of each level in channels.
    pub fn widths(&self) -> Vec<i64> {
        self.channel_mult
            .iter()
            .map(|m| m * self.model_channels)
            .collect()
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
