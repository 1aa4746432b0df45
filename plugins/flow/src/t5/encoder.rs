//! The T5 v1.1 encoder stack (transformers `T5EncoderModel` → `last_hidden_state`).
use super::config::T5Config;
use super::emphasis::apply_emphasis;
use super::layers::{relative_position_buckets, T5Block, T5LayerNorm};
use super::tokenizer::T5Tokens;
use super::weights::T5Weights;
use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

/// T5 encoder weights on one device in one dtype.
pub struct T5Encoder {
    config: T5Config,
    shared: Tensor,
    relative_attention_bias: Tensor,
    blocks: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    device: Device,
    /// Elements of its weights.
    parameters: i64,
}

impl T5Encoder {
    /// Builds the encoder from `weights` (every shape checked against the inferred config),
    /// moved to `device` as `kind` one tensor at a time (peak memory: the converted weights
    /// plus one stored tensor, not both copies: T5-XXL is 19 GB in fp32).
    pub fn new(weights: T5Weights, device: Device, kind: Kind) -> Result<Self> {
        let mut config = T5Config::from_weights(&weights)?;
        if let Some(distance) = weights.max_distance {
            config.relative_attention_max_distance = distance;
        }
        if let Some(eps) = weights.epsilon {
            config.layer_norm_epsilon = eps;
        }
        if config.num_layers == 0 {
            bail!("{}: no T5 encoder blocks", weights.source());
        }
        let moved = weights.converted(device, kind);
        let bias_key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
        let relative_attention_bias = moved
            .get_shaped(
                bias_key,
                &[config.relative_attention_num_buckets, config.num_heads],
            )?
            .shallow_clone();
        let blocks = (0..config.num_layers)
            .map(|i| T5Block::new(&moved, &format!("encoder.block.{i}"), &config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            parameters: moved.parameters(),
            shared: moved
                .get_shaped("shared.weight", &[config.vocab_size, config.d_model])?
                .shallow_clone(),
            relative_attention_bias,
            final_layer_norm: T5LayerNorm::new(&moved, "encoder.final_layer_norm", &config)?,
            blocks,
            config,
            device,
        })
    }

    pub fn config(&self) -> &T5Config {
        &self.config
    }

    /// The device its weights are on (where it runs).
    pub fn device(&self) -> Device {
        self.device
    }

    /// Elements of its weights (all freed with it: nothing else holds them).
    pub fn parameters(&self) -> i64 {
        self.parameters
    }

    /// `ids` [B, L] (int64) → last hidden state [B, L, d_model], no attention mask (as
    /// diffusers' SD3 and Flux pipelines call T5). Ids outside the vocabulary are refused.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let size = ids.size();
        let &[rows, length] = &size[..] else {
            bail!("T5 input ids must be [batch, length], got {size:?}");
        };
        if rows == 0 || length == 0 {
            bail!("T5 input ids are empty ({size:?})");
        }
        let (lo, hi) = (i64::try_from(ids.min())?, i64::try_from(ids.max())?);
        if lo < 0 || hi >= self.config.vocab_size {
            bail!(
                "T5 token id {} is outside the encoder's vocabulary of {} (tokenizer and \
                 text encoder do not match)",
                if lo < 0 { lo } else { hi },
                self.config.vocab_size
            );
        }
        Ok(tch::no_grad(|| {
            let ids = ids.to_device(self.device).to_kind(Kind::Int64);
            let mut x = Tensor::embedding(&self.shared, &ids, -1, false, false);
            let bias = self.position_bias(length);
            for block in &self.blocks {
                x = block.forward(&x, &bias);
            }
            self.final_layer_norm.forward(&x)
        }))
    }

    /// Hidden states of tokenized prompts (one row each, equal lengths), with each prompt's
    /// emphasis applied as Forge applies it ([`apply_emphasis`]).
    pub fn encode(&self, prompts: &[T5Tokens]) -> Result<Tensor> {
        let length = prompts.first().map_or(0, |p| p.ids.len());
        if length == 0
            || prompts
                .iter()
                .any(|p| p.ids.len() != length || p.weights.len() != length)
        {
            bail!("T5 prompts must be tokenized to one non-zero length, one weight per id");
        }
        let ids: Vec<i64> = prompts.iter().flat_map(|p| p.ids.iter().copied()).collect();
        let weights: Vec<f32> = prompts
            .iter()
            .flat_map(|p| p.weights.iter().copied())
            .collect();
        let rows = prompts.len() as i64;
        let z = self.forward(&Tensor::from_slice(&ids).view([rows, length as i64]))?;
        let weights = Tensor::from_slice(&weights)
            .view([rows, length as i64])
            .to_device(self.device);
        Ok(apply_emphasis(&z, &weights))
    }

    /// `compute_bias` of block 0, shared by all blocks: [1, heads, L, L] in the model's dtype.
    fn position_bias(&self, length: i64) -> Tensor {
        let buckets = relative_position_buckets(
            length,
            length,
            self.config.relative_attention_num_buckets,
            self.config.relative_attention_max_distance,
            self.device,
        );
        Tensor::embedding(&self.relative_attention_bias, &buckets, -1, false, false)
            .permute([2, 0, 1])
            .unsqueeze(0)
    }
}
