//! Random-weight models of any family, built with the same module code that loads real ones:
//! the tiny SD 1.x model `hiresfix demo` runs, and real-size architectures for benchmarks
//! (speed and memory do not depend on weight values). Single files are written in the LDM
//! layout published checkpoints use.
use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result};
use tch::nn::VarStore;
use tch::{Device, Tensor};

use crate::convert::open_clip;
use crate::families::{sd1, sd2, sdxl, sdxl_refiner, Family, TextLayout};
use crate::guard::guarded;
use crate::model::{ModelConfig, Modules};
use crate::schedule::BetaConfig;
use crate::text::clip::{Activation, ClipConfig};
use crate::unet::UNetConfig;
use crate::vae::VaeConfig;

/// A family and an architecture of it.
#[derive(Debug, Clone)]
pub struct RandomModel {
    pub family: &'static Family,
    pub config: ModelConfig,
    /// Source of the stored `alphas_cumprod`.
    pub betas: BetaConfig,
}

impl RandomModel {
    /// The tiny SD 1.x model of `hiresfix demo`, shaped like the `sd1-tiny` test model:
    /// CLIP 32 wide, UNet (32, 64, 64), 2-level VAE (latent factor 2).
    pub fn tiny_sd1() -> Self {
        let mut unet = UNetConfig {
            model_channels: 32,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: vec![2, 2, 2],
            transformer_depth: vec![1, 1, 0],
            context_dim: 32,
            time_embed_dim: 128,
            ..sd1::unet()
        };
        unet.heads_by_rule(sd1::SD1.head_rule);
        let clip = ClipConfig {
            hidden_size: 32,
            intermediate_size: 64,
            num_layers: 2,
            num_heads: 1,
            activation: Activation::QuickGelu,
            ..ClipConfig::default()
        };
        let vae = VaeConfig {
            ch: 32,
            ch_mult: vec![1, 2],
            num_res_blocks: 1,
            ..VaeConfig::default()
        };
        Self::of(&sd1::SD1, vec![clip], unet, vae)
    }

    /// [`tiny_sd1`](Self::tiny_sd1) with a 4-level VAE (latent factor 8, as real SD models
    /// have): the size benchmarks' tiny model, whose latent at 8192 px is 1024×1024 cells.
    pub fn tiny_sd1_vae8() -> Self {
        let mut model = Self::tiny_sd1();
        model.config.vae.ch_mult = vec![1, 2, 2, 2];
        model
    }

    /// The published architecture of `family` (SD 1.5, SD 2.1, SDXL base).
    pub fn real_size(family: &'static Family) -> Self {
        let vae = VaeConfig {
            scaling_factor: family.scaling_factor,
            ..VaeConfig::default()
        };
        match family.id {
            "sd2" => Self::of(family, vec![sd2::openclip_h()], sd2::unet(), vae),
            "sdxl" => {
                let encoders = vec![sd1::clip_l(), sdxl::openclip_bigg()];
                Self::of(family, encoders, sdxl::unet(), vae)
            }
            "sdxl-refiner" => {
                let encoders = vec![sdxl::openclip_bigg()];
                Self::of(family, encoders, sdxl_refiner::unet(), vae)
            }
            _ => Self::of(&sd1::SD1, vec![sd1::clip_l()], sd1::unet(), vae),
        }
    }

    fn of(
        family: &'static Family,
        encoders: Vec<ClipConfig>,
        unet: UNetConfig,
        vae: VaeConfig,
    ) -> Self {
        Self {
            family,
            config: ModelConfig {
                encoders,
                unet,
                vae,
            },
            betas: BetaConfig::default(),
        }
    }

    /// Builds the modules in `vs` and fills every parameter with seeded random values.
    pub(crate) fn build(&self, vs: &mut VarStore, seed: i64) -> Result<()> {
        self.config.validate().context("random model config")?;
        guarded("building the random model", || {
            Modules::new(vs.root(), self.family, &self.config)
        })?;
        vs.freeze();
        randomize(vs, seed);
        Ok(())
    }
}

/// Fills every variable of `vs` in place with PyTorch's default init bounds: weights and
/// biases uniform in ±1/sqrt(fan_in) of their layer's weight; norm layers (1-D weights) at
/// weight 1, bias 0. Each variable draws from libtorch's generator seeded with `seed` and its
/// own name, so the same `seed` gives the same values whatever ran before (the global
/// generator is left reseeded).
pub fn randomize(vs: &VarStore, seed: i64) {
    let variables = vs.variables();
    let shapes: HashMap<String, Vec<i64>> = variables
        .iter()
        .map(|(k, t)| (k.clone(), t.size()))
        .collect();
    let mut keys: Vec<&String> = variables.keys().collect();
    keys.sort();
    tch::no_grad(|| {
        for key in keys {
            let mut var = variables[key].shallow_clone();
            let weight_shape = match key.strip_suffix(".bias") {
                Some(layer) => shapes
                    .get(&format!("{layer}.weight"))
                    .unwrap_or(&shapes[key]),
                None => &shapes[key],
            };
            if weight_shape.len() == 1 {
                // A real CLIP's output has a clearly non-zero mean, which A1111's emphasis
                // restores; a zero final bias would make `(word:1.2)` degenerate.
                let value = match key.as_str() {
                    k if k.ends_with("final_layer_norm.bias") => 0.5,
                    k if k.ends_with(".bias") => 0.0,
                    _ => 1.0,
                };
                let _ = var.fill_(value);
                continue;
            }
            let fan_in: i64 = weight_shape[1..].iter().product();
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            tch::manual_seed(seed ^ fnv1a(key) as i64);
            let _ = var.uniform_(-bound, bound);
        }
    });
}

/// Builds a random model and writes it, with `alphas_cumprod`, as one fp32 `.safetensors`
/// file in the LDM layout (OpenCLIP encoders fused; SD 2.x's unused last text layer
/// included). The same `seed` gives the same bytes.
pub fn write_random_checkpoint(path: &Path, model: &RandomModel, seed: i64) -> Result<()> {
    let mut vs = VarStore::new(Device::Cpu);
    model.build(&mut vs, seed)?;
    let mut tensors: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    for spec in model.family.encoders {
        if spec.ldm_layout != TextLayout::OpenClip {
            continue;
        }
        let prefix = spec.ldm_prefix;
        let (ours, rest): (Vec<_>, Vec<_>) = tensors
            .into_iter()
            .partition(|(k, _)| k.starts_with(prefix));
        let relative: Vec<(String, Tensor)> = ours
            .into_iter()
            .map(|(k, t)| (k[prefix.len()..].to_string(), t))
            .collect();
        let mut written = open_clip::from_model(&relative);
        written.extend(unused_layers(&written, spec.unused_ldm_layers));
        tensors = rest;
        tensors.extend(
            written
                .into_iter()
                .map(|(k, t)| (format!("{prefix}{k}"), t)),
        );
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let alphas: Vec<f32> = model
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

/// Copies of the last OpenCLIP resblock as the `count` extra layers SD 2.x files carry.
fn unused_layers(written: &[(String, Tensor)], count: usize) -> Vec<(String, Tensor)> {
    let layers = crate::convert::indices_under(
        written.iter().map(|(k, _)| k.as_str()),
        "transformer.resblocks.",
    );
    let Some(last) = layers.last().copied() else {
        return Vec::new();
    };
    let prefix = format!("transformer.resblocks.{last}.");
    let mut extra_layers = Vec::new();
    for extra in 1..=count {
        for (k, t) in written.iter().filter(|(k, _)| k.starts_with(&prefix)) {
            let key = format!(
                "transformer.resblocks.{}.{}",
                last + extra,
                &k[prefix.len()..]
            );
            extra_layers.push((key, t.copy()));
        }
    }
    extra_layers
}

/// FNV-1a, to give every parameter its own stream.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
