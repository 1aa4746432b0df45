//! T5 v1.1 encoder sizes (transformers `T5Config`), inferred from the weights as Spandrel
//! infers an architecture: nothing is guessed from a file name.
use super::weights::T5Weights;
use anyhow::{bail, Result};

/// The encoder's hyper-parameters. [`Default`] is T5-XXL v1.1 (google/t5-v1_1-xxl), the text
/// encoder of SD3 / SD 3.5 and Flux.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    /// Rows of the token embedding (`shared`).
    pub vocab_size: i64,
    /// Width of the hidden states.
    pub d_model: i64,
    /// Width of one attention head.
    pub d_kv: i64,
    pub num_heads: i64,
    /// Inner width of the gated-GELU feed-forward.
    pub d_ff: i64,
    pub num_layers: usize,
    /// Relative position buckets (half for each direction: the encoder is bidirectional).
    pub relative_attention_num_buckets: i64,
    /// Distances beyond this share the last bucket. Not readable from the weights: 128 in
    /// every T5 v1.1 checkpoint; a diffusers folder's config.json overrides it.
    pub relative_attention_max_distance: i64,
    pub layer_norm_epsilon: f64,
}

impl Default for T5Config {
    fn default() -> Self {
        Self {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            num_heads: 64,
            d_ff: 10240,
            num_layers: 24,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
        }
    }
}

impl T5Config {
    /// The sizes the weights have; refuses weights that are not a T5 v1.1 encoder.
    pub fn from_weights(weights: &T5Weights) -> Result<Self> {
        let [vocab_size, d_model] = weights.shape2("shared.weight")?;
        let [inner, _] = weights.shape2("encoder.block.0.layer.0.SelfAttention.q.weight")?;
        let [buckets, num_heads] = weights
            .shape2("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight")?;
        if weights.has("encoder.block.0.layer.1.DenseReluDense.wi.weight") {
            bail!(
                "{}: a T5 v1.0 encoder (ReLU feed-forward `wi`); SD3 and Flux use T5 v1.1 \
                 (gated-GELU `wi_0`/`wi_1`): use a t5xxl v1.1 file",
                weights.source()
            );
        }
        let [d_ff, _] = weights.shape2("encoder.block.0.layer.1.DenseReluDense.wi_0.weight")?;
        let num_layers = (0..)
            .take_while(|i| {
                weights.has(&format!("encoder.block.{i}.layer.0.SelfAttention.q.weight"))
            })
            .count();
        if num_heads <= 0 || inner % num_heads != 0 {
            bail!(
                "{}: attention width {inner} does not split into {num_heads} heads",
                weights.source()
            );
        }
        Ok(Self {
            vocab_size,
            d_model,
            d_kv: inner / num_heads,
            num_heads,
            d_ff,
            num_layers,
            relative_attention_num_buckets: buckets,
            ..Self::default()
        })
    }

    /// Width of all heads together (`inner_dim`).
    pub fn inner_dim(&self) -> i64 {
        self.num_heads * self.d_kv
    }
}
