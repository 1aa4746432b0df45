//! The whole transformer: embed, joint blocks, final layer, unpatchify (diffusers
//! `SD3Transformer2DModel.forward`, SD3's `MMDiTX.forward`).
use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::Tensor;

use super::blocks::{FinalLayer, JointBlock};
use super::config::MmDitConfig;
use super::embeddings::{Conditioning, PatchEmbed};
use super::layers::linear;

/// An SD3 / SD 3.5 MMDiT; module paths are the original (single-file) keys.
#[derive(Debug)]
pub struct MmDit {
    config: MmDitConfig,
    x_embedder: PatchEmbed,
    conditioning: Conditioning,
    context_embedder: nn::Linear,
    joint_blocks: Vec<JointBlock>,
    final_layer: FinalLayer,
}

impl MmDit {
    /// Builds the modules under `root` with uninitialized parameters (the loader fills them).
    pub fn new(root: &nn::Path, config: &MmDitConfig) -> Self {
        let d = config.hidden_size();
        MmDit {
            config: config.clone(),
            x_embedder: PatchEmbed::new(root, config),
            conditioning: Conditioning::new(root, config),
            context_embedder: linear(root / "context_embedder", config.joint_attention_dim, d),
            joint_blocks: (0..config.num_layers)
                .map(|i| JointBlock::new(root / "joint_blocks" / i, config, i))
                .collect(),
            final_layer: FinalLayer::new(root / "final_layer", config),
        }
    }

    pub fn config(&self) -> &MmDitConfig {
        &self.config
    }

    /// The velocity prediction for `latent` `[B, C, H, W]` at `timestep` `[B]` (0..1000, as
    /// diffusers passes it: σ·1000), text tokens `context` `[B, T, joint_attention_dim]` and
    /// `pooled` `[B, pooled_projection_dim]` → `[B, C_out, H, W]`.
    pub fn forward(
        &self,
        latent: &Tensor,
        timestep: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
    ) -> Result<Tensor> {
        self.check_inputs(latent, timestep, context, pooled)?;
        let s = latent.size();
        let mut x = self.x_embedder.forward(latent);
        let c = self.conditioning.forward(timestep, pooled);
        let mut context = Some(self.context_embedder.forward(context));
        for block in &self.joint_blocks {
            let Some(ctx) = context else { break };
            let (next, out) = block.forward(&ctx, &x, &c);
            (context, x) = (next, out);
        }
        let x = self.final_layer.forward(&x, &c);
        Ok(self.unpatchify(&x, s[2], s[3]))
    }

    /// `[B, h·w, p·p·C]` → `[B, C, h·p, w·p]` (diffusers' `einsum("nhwpqc->nchpwq")`).
    fn unpatchify(&self, x: &Tensor, height: i64, width: i64) -> Tensor {
        let (p, c) = (self.config.patch_size, self.config.out_channels);
        let (h, w) = (height / p, width / p);
        let b = x.size()[0];
        x.reshape([b, h, w, p, p, c])
            .permute([0, 5, 1, 3, 2, 4])
            .reshape([b, c, height, width])
    }

    fn check_inputs(
        &self,
        latent: &Tensor,
        t: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
    ) -> Result<()> {
        let cfg = &self.config;
        let (p, max) = (cfg.patch_size, cfg.pos_embed_max_size * cfg.patch_size);
        let s = latent.size();
        let [b, ch, h, w] = s[..] else {
            bail!("MMDiT: the latent must be [batch, channels, height, width], not {s:?}");
        };
        if ch != cfg.in_channels {
            bail!(
                "MMDiT: the latent has {ch} channels, this transformer takes {}",
                cfg.in_channels
            );
        }
        if h % p != 0 || w % p != 0 || h > max || w > max || h == 0 || w == 0 {
            bail!(
                "MMDiT: a {h}×{w} latent does not fit: sides must be multiples of {p} up to {max} \
                 (pos_embed_max_size {} patches)",
                cfg.pos_embed_max_size
            );
        }
        if t.size() != [b] {
            bail!(
                "MMDiT: the timestep must be [{b}] (one per image), not {:?}",
                t.size()
            );
        }
        let cs = context.size();
        if cs.len() != 3 || cs[0] != b || cs[2] != cfg.joint_attention_dim {
            bail!(
                "MMDiT: the text tokens must be [{b}, tokens, {}], not {cs:?}",
                cfg.joint_attention_dim
            );
        }
        if pooled.size() != [b, cfg.pooled_projection_dim] {
            bail!(
                "MMDiT: the pooled text vector must be [{b}, {}], not {:?}",
                cfg.pooled_projection_dim,
                pooled.size()
            );
        }
        Ok(())
    }
}
