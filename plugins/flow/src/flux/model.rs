//! The whole transformer under BFL names: embed, double blocks, single blocks, final layer
//! (BFL `Flux.forward`, diffusers `FluxTransformer2DModel.forward`).
use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use super::blocks::{DoubleBlock, FinalLayer, SingleBlock};
use super::config::FluxConfig;
use super::embeddings::{rope, timestep_features};
use super::layers::{linear, Linear, MlpEmbedder};

/// Channels of the sinusoidal timestep / guidance features.
const TIME_FEATURES: i64 = 256;

/// A Flux.1 transformer; module paths are the BFL keys.
#[derive(Debug)]
pub struct Flux {
    config: FluxConfig,
    img_in: Linear,
    txt_in: Linear,
    time_in: MlpEmbedder,
    guidance_in: Option<MlpEmbedder>,
    vector_in: MlpEmbedder,
    double_blocks: Vec<DoubleBlock>,
    single_blocks: Vec<SingleBlock>,
    final_layer: FinalLayer,
}

impl Flux {
    /// Builds the modules under `root` with uninitialized parameters (the loader fills them).
    pub fn new(root: &nn::Path, config: &FluxConfig) -> Self {
        let d = config.hidden_size();
        Flux {
            config: config.clone(),
            img_in: linear(root / "img_in", config.in_channels, d),
            txt_in: linear(root / "txt_in", config.joint_attention_dim, d),
            time_in: MlpEmbedder::new(root / "time_in", TIME_FEATURES, d),
            guidance_in: config
                .guidance_embeds
                .then(|| MlpEmbedder::new(root / "guidance_in", TIME_FEATURES, d)),
            vector_in: MlpEmbedder::new(root / "vector_in", config.pooled_projection_dim, d),
            double_blocks: (0..config.num_layers)
                .map(|i| DoubleBlock::new(root / "double_blocks" / i, config))
                .collect(),
            single_blocks: (0..config.num_single_layers)
                .map(|i| SingleBlock::new(root / "single_blocks" / i, config))
                .collect(),
            final_layer: FinalLayer::new(root / "final_layer", config),
        }
    }

    pub fn config(&self) -> &FluxConfig {
        &self.config
    }

    /// The packed velocity for packed latent tokens `x` `[B, L, in_channels]` at `sigma` `[B]`
    /// (0..1; the model multiplies by 1000 as diffusers and BFL do), `guidance` `[B]` (dev:
    /// required, e.g. 3.5; schnell: ignored, as BFL's model ignores it), T5 hidden states
    /// `context` `[B, T, joint_attention_dim]`, pooled CLIP `pooled` `[B, pooled_dim]`, ids
    /// `img_ids` `[L, 3]` and `txt_ids` `[T, 3]` → `[B, L, out_channels]`.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        guidance: Option<&Tensor>,
        context: &Tensor,
        pooled: &Tensor,
        img_ids: &Tensor,
        txt_ids: &Tensor,
    ) -> Result<Tensor> {
        self.check_inputs(x, sigma, context, pooled, img_ids, txt_ids)?;
        let features = |t: &Tensor| {
            timestep_features(&(t.to_kind(Kind::Float) * 1000.0), TIME_FEATURES).to_kind(x.kind())
        };
        let mut vec = self.time_in.forward(&features(sigma));
        if let Some(g_in) = &self.guidance_in {
            let Some(g) = guidance else {
                bail!("Flux dev: this transformer has a guidance embedding; give a guidance (3.5)");
            };
            if g.size() != sigma.size() {
                bail!(
                    "Flux: guidance must be [{}], not {:?}",
                    sigma.size()[0],
                    g.size()
                );
            }
            vec += g_in.forward(&features(g));
        }
        let vec = vec + self.vector_in.forward(pooled);
        let mut img = self.img_in.forward(x);
        let mut txt = self.txt_in.forward(context);
        let ids = Tensor::cat(&[txt_ids, img_ids], 0);
        let pe = rope(&ids, &self.config.axes_dims_rope, self.config.theta);
        let pe = (pe.0.to_kind(x.kind()), pe.1.to_kind(x.kind()));
        for block in &self.double_blocks {
            (img, txt) = block.forward(&img, &txt, &vec, &pe);
        }
        let t_len = txt.size()[1];
        let mut joint = Tensor::cat(&[txt, img], 1);
        for block in &self.single_blocks {
            joint = block.forward(&joint, &vec, &pe);
        }
        let img = joint.narrow(1, t_len, joint.size()[1] - t_len);
        Ok(self.final_layer.forward(&img, &vec))
    }

    fn check_inputs(
        &self,
        x: &Tensor,
        sigma: &Tensor,
        context: &Tensor,
        pooled: &Tensor,
        img_ids: &Tensor,
        txt_ids: &Tensor,
    ) -> Result<()> {
        let c = &self.config;
        let s = x.size();
        let [b, l, ch] = s[..] else {
            bail!(
                "Flux: the packed latent must be [batch, tokens, {}], not {s:?}",
                c.in_channels
            );
        };
        if ch != c.in_channels {
            bail!(
                "Flux: the packed latent has {ch} values per token, this transformer takes {}",
                c.in_channels
            );
        }
        if sigma.size() != [b] {
            bail!(
                "Flux: the timestep must be [{b}] (one per image), not {:?}",
                sigma.size()
            );
        }
        let cs = context.size();
        if cs.len() != 3 || cs[0] != b || cs[2] != c.joint_attention_dim {
            bail!(
                "Flux: the T5 states must be [{b}, tokens, {}], not {cs:?}",
                c.joint_attention_dim
            );
        }
        if pooled.size() != [b, c.pooled_projection_dim] {
            bail!(
                "Flux: the pooled CLIP vector must be [{b}, {}], not {:?}",
                c.pooled_projection_dim,
                pooled.size()
            );
        }
        if img_ids.size() != [l, 3] || txt_ids.size() != [cs[1], 3] {
            bail!(
                "Flux: ids must be [{l}, 3] (image) and [{}, 3] (text), not {:?} and {:?}",
                cs[1],
                img_ids.size(),
                txt_ids.size()
            );
        }
        Ok(())
    }
}
