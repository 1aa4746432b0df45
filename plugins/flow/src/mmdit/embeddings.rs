//! What enters the blocks: image patches with their positional embedding cropped from the
//! stored max grid, and the conditioning vector (timestep + pooled text).
//!
//! References: SD3's `mmditx.py` (`PatchEmbed`, `cropped_pos_embed`, `TimestepEmbedder`,
//! `VectorEmbedder`); diffusers `embeddings.py` (`PatchEmbed` with `pos_embed_max_size`,
//! `CombinedTimestepTextProjEmbeddings`, `get_timestep_embedding`).
use tch::nn;
use tch::{Kind, Tensor};

use super::config::MmDitConfig;
use super::layers::{param, TwoLayers};

/// Size of the sinusoidal timestep features (`frequency_embedding_size`, diffusers' 256).
pub const TIMESTEP_FEATURES: i64 = 256;

/// `x_embedder` (a `p×p` stride-`p` convolution) + `pos_embed` (`[1, M·M, D]`, `M` =
/// `pos_embed_max_size`), cropped to the latent's patch grid around the centre.
#[derive(Debug)]
pub struct PatchEmbed {
    weight: Tensor,
    bias: Tensor,
    pos_embed: Tensor,
    patch: i64,
    max_grid: i64,
}

impl PatchEmbed {
    /// `root` is the transformer's root: the keys are `x_embedder.proj.*` and `pos_embed`.
    pub fn new(root: &nn::Path, cfg: &MmDitConfig) -> Self {
        let (p, d) = (cfg.patch_size, cfg.hidden_size());
        let proj = root / "x_embedder" / "proj";
        let m = cfg.pos_embed_max_size;
        PatchEmbed {
            weight: param(&proj, "weight", &[d, cfg.in_channels, p, p]),
            bias: param(&proj, "bias", &[d]),
            pos_embed: param(root, "pos_embed", &[1, m * m, d]),
            patch: p,
            max_grid: m,
        }
    }

    /// `[B, C, H, W]` → `[B, (H/p)·(W/p), D]`, row-major patches, positions added.
    pub fn forward(&self, latent: &Tensor) -> Tensor {
        let p = self.patch;
        let x = latent.conv2d(&self.weight, Some(&self.bias), [p, p], [0, 0], [1, 1], 1);
        let s = x.size();
        let x = x.flatten(2, 3).transpose(1, 2);
        x + self.cropped_pos_embed(s[2], s[3])
    }

    /// The `h×w` centre crop of the max grid (top = ⌊(M − h)/2⌋, left = ⌊(M − w)/2⌋).
    fn cropped_pos_embed(&self, h: i64, w: i64) -> Tensor {
        let m = self.max_grid;
        let d = self.pos_embed.size()[2];
        let (top, left) = ((m - h) / 2, (m - w) / 2);
        self.pos_embed
            .reshape([1, m, m, d])
            .narrow(1, top, h)
            .narrow(2, left, w)
            .reshape([1, h * w, d])
    }
}

/// Sinusoidal features of `t` (`[B]`, diffusion timesteps 0..1000): `[cos(t·fᵢ), sin(t·fᵢ)]`
/// with `fᵢ = 10000^(−i/half)` (diffusers `get_timestep_embedding`, `flip_sin_to_cos=True`,
/// `downscale_freq_shift=0`; the SD3 reference's `timestep_embedding`).
pub fn timestep_features(t: &Tensor, dim: i64) -> Tensor {
    let half = dim / 2;
    let exponent = Tensor::arange(half, (Kind::Float, t.device())) * (-(10000f64.ln()));
    let freqs = (exponent / half as f64).exp();
    let args = t.to_kind(Kind::Float).unsqueeze(1) * freqs.unsqueeze(0);
    Tensor::cat(&[args.cos(), args.sin()], -1)
}

/// The conditioning vector `c = t_embedder(features(t)) + y_embedder(pooled)`, both MLPs with
/// SiLU (`t_embedder.mlp.0/2`, `y_embedder.mlp.0/2`).
#[derive(Debug)]
pub struct Conditioning {
    t_embedder: TwoLayers,
    y_embedder: TwoLayers,
}

impl Conditioning {
    pub fn new(root: &nn::Path, cfg: &MmDitConfig) -> Self {
        let d = cfg.hidden_size();
        let names = ["0", "2"];
        Conditioning {
            t_embedder: TwoLayers::new(
                &(root / "t_embedder" / "mlp"),
                names,
                [TIMESTEP_FEATURES, d, d],
            ),
            y_embedder: TwoLayers::new(
                &(root / "y_embedder" / "mlp"),
                names,
                [cfg.pooled_projection_dim, d, d],
            ),
        }
    }

    /// `timestep` `[B]`, `pooled` `[B, P]` → `[B, D]`.
    pub fn forward(&self, timestep: &Tensor, pooled: &Tensor) -> Tensor {
        let features = timestep_features(timestep, TIMESTEP_FEATURES).to_kind(pooled.kind());
        self.t_embedder.silu(&features) + self.y_embedder.silu(pooled)
    }
}
