//! CLIP text transformer, the math of transformers' `CLIPTextModel` (modeling_clip.py), which
//! OpenAI CLIP-L and OpenCLIP ViT-H/bigG share: token + position embeddings, pre-LayerNorm
//! encoder layers with a causal mask, final LayerNorm, and (bigG) a text projection of the
//! end-of-text token. Module paths are transformers' names under the encoder's LDM prefix
//! (`cond_stage_model.transformer.text_model.*`); OpenCLIP keys are renamed into them
//! ([`crate::convert::open_clip`]).
use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

use crate::layers::{attention, embedding, layer_norm, linear};

/// Activation of the MLP inside each encoder layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI CLIP (SD 1.x).
    QuickGelu,
    /// Exact (erf) GELU, OpenCLIP.
    Gelu,
}

impl Activation {
    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "quick_gelu" => Ok(Activation::QuickGelu),
            "gelu" => Ok(Activation::Gelu),
            other => bail!("hidden_act `{other}` is not supported (use quick_gelu or gelu)"),
        }
    }

    fn apply(self, x: &Tensor) -> Tensor {
        match self {
            Activation::QuickGelu => x * (x * 1.702).sigmoid(),
            Activation::Gelu => x.gelu("none"),
        }
    }
}

/// CLIP text model hyper-parameters (transformers `CLIPTextConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// Token vocabulary size (49408 for OpenAI's BPE vocabulary).
    pub vocab_size: i64,
    /// Width of the embeddings and of every layer (768 for CLIP-L).
    pub hidden_size: i64,
    /// Width of the MLP inside each layer.
    pub intermediate_size: i64,
    /// Number of encoder layers.
    pub num_layers: usize,
    /// Attention heads per layer.
    pub num_heads: i64,
    /// Length of the position table (77).
    pub max_positions: i64,
    pub activation: Activation,
    pub layer_norm_eps: f64,
    /// Width of the pooled-output projection (`text_projection`, OpenCLIP bigG in SDXL).
    pub projection_dim: Option<i64>,
}

impl Default for ClipConfig {
    /// OpenAI CLIP ViT-L/14 text model, SD 1.x's text encoder.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 768,
            intermediate_size: 3072,
            num_layers: 12,
            num_heads: 12,
            max_positions: 77,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            projection_dim: None,
        }
    }
}

impl ClipConfig {
    /// OpenAI's rule: one head per 64 channels.
    pub fn heads_for(hidden_size: i64) -> i64 {
        (hidden_size / 64).max(1)
    }
}

struct EncoderLayer {
    layer_norm1: nn::LayerNorm,
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    layer_norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
    activation: Activation,
}

impl EncoderLayer {
    fn new(p: nn::Path, cfg: &ClipConfig) -> Self {
        let (h, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        let attn = &p / "self_attn";
        let mlp = &p / "mlp";
        Self {
            layer_norm1: layer_norm(&p / "layer_norm1", h, eps),
            q_proj: linear(&attn / "q_proj", h, h, true),
            k_proj: linear(&attn / "k_proj", h, h, true),
            v_proj: linear(&attn / "v_proj", h, h, true),
            out_proj: linear(&attn / "out_proj", h, h, true),
            layer_norm2: layer_norm(&p / "layer_norm2", h, eps),
            fc1: linear(&mlp / "fc1", h, cfg.intermediate_size, true),
            fc2: linear(&mlp / "fc2", cfg.intermediate_size, h, true),
            heads: cfg.num_heads,
            activation: cfg.activation,
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.layer_norm1.forward(x);
        let h = attention(
            &self.q_proj.forward(&h),
            &self.k_proj.forward(&h),
            &self.v_proj.forward(&h),
            self.heads,
            true,
        );
        let x = x + self.out_proj.forward(&h);
        let h = self
            .activation
            .apply(&self.fc1.forward(&self.layer_norm2.forward(&x)));
        x + self.fc2.forward(&h)
    }
}

/// Which hidden state a family conditions on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextLayer {
    /// The last layer through `final_layer_norm` (SD 1.x; SD 2.x, whose single files carry
    /// one more layer than the model uses).
    LastNormed,
    /// The penultimate layer's output, no final norm (SDXL's `hidden_states[-2]`).
    Penultimate,
}

/// What one encoder call returns.
pub struct TextOutput {
    /// `[B, L, hidden]`.
    pub hidden: Tensor,
    /// `[B, projection_dim]`: the projected end-of-text token of the last layer, normed.
    pub pooled: Option<Tensor>,
}

/// Vectors written over one row's token embeddings from `position` on (A1111's
/// `EmbeddingsWithFixes`: a textual-inversion embedding; cut at the row's end).
pub struct TokenFix {
    pub row: i64,
    pub position: i64,
    /// `[n, hidden]`.
    pub vectors: Tensor,
}

/// The text encoder; `new` takes the path of the encoder's LDM prefix.
pub struct ClipTextTransformer {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
    layers: Vec<EncoderLayer>,
    final_layer_norm: nn::LayerNorm,
    text_projection: Option<nn::Linear>,
    config: ClipConfig,
}

impl ClipTextTransformer {
    pub fn new(vs: nn::Path, cfg: &ClipConfig) -> Result<Self> {
        let tm = &vs / "text_model";
        let emb = &tm / "embeddings";
        let layers = &tm / "encoder" / "layers";
        Ok(Self {
            token_embedding: embedding(&emb / "token_embedding", cfg.vocab_size, cfg.hidden_size),
            position_embedding: embedding(
                &emb / "position_embedding",
                cfg.max_positions,
                cfg.hidden_size,
            ),
            layers: (0..cfg.num_layers)
                .map(|i| EncoderLayer::new(&layers / i, cfg))
                .collect(),
            final_layer_norm: layer_norm(
                &tm / "final_layer_norm",
                cfg.hidden_size,
                cfg.layer_norm_eps,
            ),
            text_projection: cfg
                .projection_dim
                .map(|d| linear(&vs / "text_projection", cfg.hidden_size, d, false)),
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// `tokens` `[B, L]` (int64) → the hidden state `layer` says, `clip_skip - 1` layers
    /// earlier (A1111 "Clip skip": 1 = the family's usual layer), and the pooled output
    /// when the encoder has a projection.
    pub fn forward(
        &self,
        tokens: &Tensor,
        layer: TextLayer,
        clip_skip: usize,
    ) -> Result<TextOutput> {
        self.forward_with(tokens, &[], layer, clip_skip)
    }

    /// [`Self::forward`] with `fixes` written over the token embeddings.
    pub fn forward_with(
        &self,
        tokens: &Tensor,
        fixes: &[TokenFix],
        layer: TextLayer,
        clip_skip: usize,
    ) -> Result<TextOutput> {
        let n = self.layers.len();
        let offset = usize::from(layer == TextLayer::Penultimate);
        let back = clip_skip + offset;
        if clip_skip == 0 || back > n {
            bail!(
                "clip_skip = {clip_skip} is out of range — use 1..={} (1 = the model's usual layer)",
                n.saturating_sub(offset)
            );
        }
        let len = tokens.size()[1];
        if len > self.config.max_positions {
            bail!(
                "{len} tokens exceed the text encoder's {} positions",
                self.config.max_positions
            );
        }
        let positions = Tensor::arange(len, (Kind::Int64, tokens.device()));
        let embedded = self.token_embedding.forward(tokens);
        for fix in fixes {
            let n = fix.vectors.size()[0].min(len - fix.position);
            if n > 0 {
                let vectors = fix
                    .vectors
                    .narrow(0, 0, n)
                    .to_device(embedded.device())
                    .to_kind(embedded.kind());
                embedded
                    .get(fix.row)
                    .narrow(0, fix.position, n)
                    .copy_(&vectors);
            }
        }
        let mut x = embedded + self.position_embedding.forward(&positions).unsqueeze(0);
        let wanted = n + 1 - back;
        let run = if self.text_projection.is_some() {
            n
        } else {
            wanted
        };
        let mut hidden = None;
        for (i, layer) in self.layers[..run].iter().enumerate() {
            x = layer.forward(&x);
            if i + 1 == wanted {
                hidden = Some(x.shallow_clone());
            }
        }
        let hidden = hidden.unwrap_or_else(|| x.shallow_clone());
        let hidden = match layer {
            TextLayer::LastNormed => self.final_layer_norm.forward(&hidden),
            TextLayer::Penultimate => hidden,
        };
        let pooled = self.text_projection.as_ref().map(|projection| {
            // The end-of-text token: the highest id, first occurrence (OpenCLIP's argmax).
            let eos = tokens.argmax(-1, false);
            let rows = Tensor::arange(tokens.size()[0], (Kind::Int64, tokens.device()));
            let last = self.final_layer_norm.forward(&x);
            projection.forward(&last.index(&[Some(rows), Some(eos)]))
        });
        Ok(TextOutput { hidden, pooled })
    }
}
