//! What a UNet patch sees of the forward pass: the hook points and where a self-attention
//! runs (the backend's side of host-api's `Patch` hooks; `crate::patches` implements them).
use anyhow::Result;
use tch::Tensor;

/// What a UNet patch sees: called at the LDM / ComfyUI hook points of the forward pass with
/// the block's index and the resolution level of the tensor handed over (0 = full size).
pub trait Hooks {
    /// After input block `block`: `after_skip` false before its output is stored as a skip
    /// connection (the skip is what this returns), true after (what the next block sees).
    fn input(&self, block: usize, level: usize, after_skip: bool, h: Tensor) -> Result<Tensor>;
    /// Before output block `block` concatenates `h` with `skip`.
    fn output(
        &self,
        block: usize,
        level: usize,
        h: Tensor,
        skip: Tensor,
    ) -> Result<(Tensor, Tensor)>;
    /// Whether [`Self::attention`] does anything (else the transformers run unhooked).
    fn wraps_attention(&self) -> bool {
        false
    }
    /// Around a transformer block's self-attention: `x` the block's input tokens `(B, N, C)`,
    /// `normed` = `norm1(x)`; returns what `attention` (the block's `attn1`) returns for them.
    fn attention(
        &self,
        _at: &AttentionAt,
        _x: &Tensor,
        normed: Tensor,
        attention: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        attention(&normed)
    }
}

/// Where a self-attention runs, for [`Hooks::attention`] (host-api `AttentionCtx`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionAt {
    /// 0: input blocks, 1: the middle block, 2: output blocks.
    pub part: u32,
    pub block: u32,
    pub level: u32,
    /// The transformer block's index among the UNet's, in forward order.
    pub transformer: u32,
    /// The token grid.
    pub height: u32,
    pub width: u32,
    /// The UNet input's latent size.
    pub latent_height: u32,
    pub latent_width: u32,
    pub model_channels: u32,
}
