//! T5 v1.1 encoder layers (transformers models/t5/modeling_t5.py): RMS layer norm, self-attention
//! with the relative position bias block 0 computes and every block shares, gated-GELU
//! feed-forward. Module paths follow the weight keys.
use super::config::T5Config;
use super::weights::T5Weights;
use anyhow::Result;
use tch::{Kind, Tensor};

/// `T5LayerNorm`: RMS only (no mean, no bias), the variance in fp32; a half-precision weight
/// gets its input back in its own dtype, as transformers does.
pub struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    pub fn new(weights: &T5Weights, prefix: &str, config: &T5Config) -> Result<Self> {
        let weight = weights.get_shaped(&format!("{prefix}.weight"), &[config.d_model])?;
        Ok(Self {
            weight: weight.shallow_clone(),
            eps: config.layer_norm_epsilon,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let variance =
            x.to_kind(Kind::Float)
                .pow_tensor_scalar(2)
                .mean_dim(&[-1i64][..], true, Kind::Float);
        let normed = x * (variance + self.eps).rsqrt();
        let normed = match self.weight.kind() {
            Kind::Half | Kind::BFloat16 => normed.to_kind(self.weight.kind()),
            _ => normed,
        };
        &self.weight * normed
    }
}

fn linear(weights: &T5Weights, name: &str, out: i64, inp: i64) -> Result<Tensor> {
    Ok(weights
        .get_shaped(&format!("{name}.weight"), &[out, inp])?
        .shallow_clone())
}

/// `T5Attention` of an encoder block: no 1/√d scaling (T5 folds it into the initialisation).
pub struct SelfAttention {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    o: Tensor,
    heads: i64,
    d_kv: i64,
}

impl SelfAttention {
    pub fn new(weights: &T5Weights, prefix: &str, config: &T5Config) -> Result<Self> {
        let (d, inner) = (config.d_model, config.inner_dim());
        Ok(Self {
            q: linear(weights, &format!("{prefix}.q"), inner, d)?,
            k: linear(weights, &format!("{prefix}.k"), inner, d)?,
            v: linear(weights, &format!("{prefix}.v"), inner, d)?,
            o: linear(weights, &format!("{prefix}.o"), d, inner)?,
            heads: config.num_heads,
            d_kv: config.d_kv,
        })
    }

    /// `x` [B, L, d_model], `position_bias` [1, heads, L, L] (added to the scores).
    pub fn forward(&self, x: &Tensor, position_bias: &Tensor) -> Tensor {
        let (b, l) = (x.size()[0], x.size()[1]);
        let split = |w: &Tensor| {
            x.linear::<Tensor>(w, None)
                .view([b, l, self.heads, self.d_kv])
                .transpose(1, 2)
        };
        let (q, k, v) = (split(&self.q), split(&self.k), split(&self.v));
        // transformers 5 runs T5 through SDPA with the bias as the additive mask, scale 1.
        let attended = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            Some(position_bias),
            0.0,
            false,
            1.0,
            false,
        );
        attended
            .transpose(1, 2)
            .contiguous()
            .view([b, l, self.heads * self.d_kv])
            .linear::<Tensor>(&self.o, None)
    }
}

/// `T5Attention._relative_position_bucket` for the encoder (bidirectional): buckets [q, k].
pub fn relative_position_buckets(
    query_length: i64,
    key_length: i64,
    num_buckets: i64,
    max_distance: i64,
    device: tch::Device,
) -> Tensor {
    let context = Tensor::arange(query_length, (Kind::Int64, device)).unsqueeze(1);
    let memory = Tensor::arange(key_length, (Kind::Int64, device)).unsqueeze(0);
    let relative = memory - context;
    let half = num_buckets / 2;
    let direction = relative.gt(0).to_kind(Kind::Int64) * half;
    let distance = relative.abs();
    let max_exact = half / 2;
    let is_small = distance.lt(max_exact);
    // Logarithmic buckets past max_exact, in fp32 as transformers computes them.
    let large = ((distance.to_kind(Kind::Float) / max_exact as f64).log()
        / (max_distance as f64 / max_exact as f64).ln()
        * (half - max_exact) as f64)
        .to_kind(Kind::Int64)
        + max_exact;
    let large = large.clamp_max(half - 1);
    direction + distance.where_self(&is_small, &large)
}

/// `T5DenseGatedActDense`: wo(gelu_new(wi_0 x) · wi_1 x).
pub struct GatedFeedForward {
    wi_0: Tensor,
    wi_1: Tensor,
    wo: Tensor,
}

impl GatedFeedForward {
    pub fn new(weights: &T5Weights, prefix: &str, config: &T5Config) -> Result<Self> {
        let (d, ff) = (config.d_model, config.d_ff);
        Ok(Self {
            wi_0: linear(weights, &format!("{prefix}.wi_0"), ff, d)?,
            wi_1: linear(weights, &format!("{prefix}.wi_1"), ff, d)?,
            wo: linear(weights, &format!("{prefix}.wo"), d, ff)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let gate = gelu_new(&x.linear::<Tensor>(&self.wi_0, None));
        (gate * x.linear::<Tensor>(&self.wi_1, None)).linear::<Tensor>(&self.wo, None)
    }
}

/// transformers' `NewGELUActivation` (the tanh approximation) written out op by op as there:
/// the fused `gelu(approximate="tanh")` rounds differently in fp16 / bf16.
fn gelu_new(x: &Tensor) -> Tensor {
    let inner = (x + x.pow_tensor_scalar(3.0) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    (x * 0.5) * (inner.tanh() + 1.0)
}

/// `T5Block` of the encoder: `layer.0` self-attention, `layer.1` feed-forward, each pre-norm
/// with a residual.
pub struct T5Block {
    attention_norm: T5LayerNorm,
    attention: SelfAttention,
    ff_norm: T5LayerNorm,
    ff: GatedFeedForward,
}

impl T5Block {
    pub fn new(weights: &T5Weights, prefix: &str, config: &T5Config) -> Result<Self> {
        Ok(Self {
            attention_norm: T5LayerNorm::new(
                weights,
                &format!("{prefix}.layer.0.layer_norm"),
                config,
            )?,
            attention: SelfAttention::new(
                weights,
                &format!("{prefix}.layer.0.SelfAttention"),
                config,
            )?,
            ff_norm: T5LayerNorm::new(weights, &format!("{prefix}.layer.1.layer_norm"), config)?,
            ff: GatedFeedForward::new(
                weights,
                &format!("{prefix}.layer.1.DenseReluDense"),
                config,
            )?,
        })
    }

    pub fn forward(&self, x: &Tensor, position_bias: &Tensor) -> Tensor {
        let x = x + self
            .attention
            .forward(&self.attention_norm.forward(x), position_bias);
        let x = clamp_fp16(x);
        let x = &x + self.ff.forward(&self.ff_norm.forward(&x));
        clamp_fp16(x)
    }
}

/// transformers' fp16 guard in `T5Block`: keep activations inside fp16's range (T5 overflows
/// fp16 without it); other dtypes pass through.
fn clamp_fp16(x: Tensor) -> Tensor {
    if x.kind() != Kind::Half {
        return x;
    }
    const FP16_MAX: f64 = 65504.0;
    let any_inf = bool::try_from(x.isinf().any()).unwrap_or(false);
    let limit = if any_inf { FP16_MAX - 1000.0 } else { FP16_MAX };
    x.clamp(-limit, limit)
}
