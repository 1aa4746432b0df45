//! Tiny random SD 1.x-family checkpoints, written with the same module code that loads real
//! ones: what `hiresfix demo` and the tests run on.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use crate::clip::{Activation, ClipConfig};
use crate::family::SD1;
use crate::model::{guarded, Sd1Config, Sd1Modules};
use crate::schedule::BetaConfig;
use crate::unet::UNetConfig;
use crate::vae::VaeConfig;

/// A small SD 1.x-family architecture. Single files carry no head count or scaling factor,
/// so those follow the family rules (CLIP: one head per 64 channels; UNet: 8 heads; 0.18215).
#[derive(Debug, Clone, PartialEq)]
pub struct TinySd1Config {
    pub clip: ClipConfig,
    pub unet: UNetConfig,
    pub vae: VaeConfig,
    /// Source of the stored `alphas_cumprod`.
    pub betas: BetaConfig,
}

impl Default for TinySd1Config {
    /// Mirrors the `sd1-tiny` test model: CLIP 32 wide, UNet (32, 64, 64), 2-level VAE (factor 2).
    fn default() -> Self {
        Self {
            clip: ClipConfig {
                vocab_size: 49408,
                hidden_size: 32,
                intermediate_size: 64,
                num_layers: 2,
                num_heads: 1,
                max_positions: 77,
                activation: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            },
            unet: UNetConfig {
                in_channels: 4,
                out_channels: 4,
                model_channels: 32,
                channel_mult: vec![1, 2, 2],
                num_res_blocks: vec![2, 2, 2],
                transformer_depth: vec![1, 1, 0],
                mid_transformer_depth: 1,
                context_dim: 32,
                head_rule: SD1.head_rule,
                linear_projection: false,
                time_embed_dim: 128,
            },
            vae: VaeConfig {
                ch: 32,
                ch_mult: vec![1, 2],
                num_res_blocks: 1,
                ..VaeConfig::default()
            },
            betas: BetaConfig::default(),
        }
    }
}

impl TinySd1Config {
    fn model_config(&self) -> Result<Sd1Config> {
        if self.clip.num_heads != ClipConfig::heads_for(self.clip.hidden_size) {
            bail!("TinySd1Config: clip.num_heads must be {} (one per 64 channels, at least 1) to load back", ClipConfig::heads_for(self.clip.hidden_size));
        }
        if self.unet.head_rule != SD1.head_rule || self.vae.scaling_factor != SD1.scaling_factor {
            bail!(
                "TinySd1Config: head_rule and scaling_factor must be SD 1.x's ({:?}, {})",
                SD1.head_rule,
                SD1.scaling_factor
            );
        }
        let cfg = Sd1Config {
            clip: self.clip.clone(),
            unet: self.unet.clone(),
            vae: self.vae.clone(),
        };
        cfg.validate().context("TinySd1Config")?;
        Ok(cfg)
    }
}

/// Builds a random model from `cfg` under LDM key paths and writes it, with
/// `alphas_cumprod`, as one fp32 `.safetensors` file. The same `seed` gives the same bytes,
/// whatever else the process does with libtorch's global generator.
pub fn write_random_checkpoint(path: &Path, cfg: &TinySd1Config, seed: i64) -> Result<()> {
    let model_config = cfg.model_config()?;
    let mut vs = VarStore::new(Device::Cpu);
    guarded("building the random model", || {
        Sd1Modules::new(vs.root(), &model_config)
    })?;
    vs.freeze();
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let shapes: HashMap<String, Vec<i64>> =
        tensors.iter().map(|(k, t)| (k.clone(), t.size())).collect();
    for (key, tensor) in tensors.iter_mut() {
        *tensor = random_parameter(key, &shapes, seed);
    }
    let alphas: Vec<f32> = cfg
        .betas
        .alphas_cumprod()
        .iter()
        .map(|a| *a as f32)
        .collect();
    tensors.push(("alphas_cumprod".into(), Tensor::from_slice(&alphas)));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp"));
    Tensor::write_safetensors(&tensors, &tmp)
        .with_context(|| format!("{}: cannot write the checkpoint", path.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("{}: cannot write the checkpoint", path.display()))
}

/// PyTorch's default init bounds: weights and biases uniform in ±1/sqrt(fan_in) of their
/// layer's weight; norm layers (1-D weights) start at weight 1, bias 0.
fn random_parameter(key: &str, shapes: &HashMap<String, Vec<i64>>, seed: i64) -> Tensor {
    let shape = &shapes[key];
    let weight_shape = match key.strip_suffix(".bias") {
        Some(layer) => shapes
            .get(&format!("{layer}.weight"))
            .cloned()
            .unwrap_or_else(|| shape.clone()),
        None => shape.clone(),
    };
    let numel: i64 = shape.iter().product();
    if weight_shape.len() == 1 {
        // A real CLIP's output has a clearly non-zero mean, which A1111's emphasis (mean
        // restoration) divides by; a zero final bias would make `(word:1.2)` blow up.
        let value = match key {
            k if k.ends_with("final_layer_norm.bias") => 0.5,
            k if k.ends_with(".bias") => 0.0,
            _ => 1.0,
        };
        return Tensor::full(shape.as_slice(), value, (Kind::Float, Device::Cpu));
    }
    let fan_in: i64 = weight_shape[1..].iter().product();
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    let mut rng = SplitMix64::new(seed as u64 ^ fnv1a(key));
    let values: Vec<f32> = (0..numel)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * bound) as f32)
        .collect();
    Tensor::from_slice(&values).reshape(shape.as_slice())
}

/// SplitMix64 (Steele et al., "Fast splittable pseudorandom number generators", 2014).
struct SplitMix64(u64);

impl SplitMix64 {
    fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Uniform in [0, 1) from the top 53 bits.
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// FNV-1a, to give every parameter its own stream.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
