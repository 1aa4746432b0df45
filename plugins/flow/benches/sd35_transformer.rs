//! A real-size SD 3.5 medium transformer (stabilityai/stable-diffusion-3.5-medium's
//! `transformer/config.json`: 24 blocks, 24 heads × 64, dual attention in blocks 0–12, q/k
//! RMSNorm, 384-patch position grid; [`MmDitConfig::sd35_medium`]) with random weights, one call
//! at 1024 × 1024 (a 128 × 128 latent, 333 text tokens = 77 CLIP + 256 T5), fp32 on the CPU:
//! fill time, call time, peak RSS.
//!
//!     cargo bench -p hiresfix-flow --bench sd35_transformer [-- --layers N --side LATENT --out PATH]
//!
//! The weights are generated in diffusers' layout and loaded through the diffusers → original
//! renames: tensor `i` of the sorted diffusers names is `randn(shape)` after `manual_seed(i)`,
//! scaled as [`scale`] says. libtorch's CPU generator is the same in PyTorch, so
//! scripts/bench_sd35_transformer.py builds diffusers' `SD3Transformer2DModel` with exactly these
//! weights and inputs, runs it in its own process and compares time, memory and the outputs
//! (`--out` writes ours). `--layers` and `--side` shrink the run for a quick check.
use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use hiresfix_flow::mmdit::{load_from, Layout, MmDit, MmDitConfig, Recipe, TensorSource};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Text tokens of one SD3 prompt: 77 CLIP (L and G side by side) + 256 T5.
const TOKENS: i64 = 333;
/// Seeds of the inputs (latent, text tokens, pooled), after the weights' 0..n.
const INPUT_SEED: i64 = 1_000_000;

fn main() -> Result<()> {
    let args = Args::parse()?;
    let mut config = MmDitConfig::sd35_medium();
    config.num_layers = args.layers;
    config.dual_attention_layers.retain(|i| *i < args.layers);
    let baseline = proc_status_kib("VmRSS:")?;
    let start = Instant::now();
    let source = Generated::for_config(&config)?;
    let loaded = load_from(
        &source,
        Layout::Diffusers,
        &config,
        Device::Cpu,
        Kind::Float,
    )?;
    let fill = start.elapsed().as_secs_f64();
    let params: i64 = loaded
        .var_store
        .variables()
        .values()
        .map(Tensor::numel)
        .map(|n| n as i64)
        .sum();
    let (latent, timestep, context, pooled) = inputs(&config, args.side);
    let start = Instant::now();
    let out = tch::no_grad(|| loaded.model.forward(&latent, &timestep, &context, &pooled))?;
    let call = start.elapsed().as_secs_f64();
    if !bool::try_from(out.isfinite().all())? {
        bail!("non-finite output");
    }
    let peak = proc_status_kib("VmHWM:")?;
    println!(
        "sd35m-transformer ours: {} tensors, {params} parameters, latent {side}x{side}, \
         {TOKENS} tokens, {} threads; fill {fill:.2} s, call {call:.2} s, baseline RSS {:.2} GiB, \
         peak RSS {:.2} GiB",
        source.names.len(),
        tch::get_num_threads(),
        baseline as f64 / GIB,
        peak as f64 / GIB,
        side = args.side,
    );
    if let Some(path) = &args.out {
        Tensor::write_safetensors(&[("output", &out)], path).context("writing --out")?;
    }
    Ok(())
}

const GIB: f64 = 1024.0 * 1024.0;

struct Args {
    layers: usize,
    side: i64,
    out: Option<String>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            layers: 24,
            side: 128,
            out: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
            match a.as_str() {
                "--layers" => args.layers = value()?.parse()?,
                "--side" => args.side = value()?.parse()?,
                "--out" => args.out = Some(value()?),
                "--bench" => {}
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(args)
    }
}

/// The scale of generated tensor `name` of `shape`: weights `N(0, 1/fan_in)`, norm scales
/// `1 + N(0, 0.02²)`, biases `N(0, 0.02²)`, the position grid `N(0, 0.5²)` (same rule in
/// scripts/bench_sd35_transformer.py). Returns (factor, offset).
fn scale(name: &str, shape: &[i64]) -> (f64, f64) {
    let module = name.rsplit('.').nth(1).unwrap_or("");
    match shape.len() {
        1 if module.starts_with("norm_") => (0.02, 1.0),
        1 => (0.02, 0.0),
        _ if name == "pos_embed.pos_embed" => (0.5, 0.0),
        _ => {
            let fan_in: i64 = shape[1..].iter().product();
            (1.0 / (fan_in as f64).sqrt(), 0.0)
        }
    }
}

/// Weights in diffusers' layout, made on request (module docs).
struct Generated {
    /// Name → (seed, shape).
    names: BTreeMap<String, (i64, Vec<i64>)>,
}

impl Generated {
    /// Every diffusers tensor the transformer of `config` reads, with its shape.
    fn for_config(config: &MmDitConfig) -> Result<Generated> {
        let vs = VarStore::new(Device::Cpu);
        let _shapes_only = MmDit::new(&vs.root(), config);
        let mut shapes = BTreeMap::new();
        for (key, var) in vs.variables() {
            let size = var.size();
            match Layout::Diffusers.recipe(&key, config)? {
                Recipe::Concat(parts) => {
                    let mut part = size.clone();
                    part[0] /= parts.len() as i64;
                    for p in parts {
                        shapes.insert(p, part.clone());
                    }
                }
                Recipe::Key(k) | Recipe::SwapHalves(k) => {
                    shapes.insert(k, size);
                }
            }
        }
        let names = shapes
            .into_iter()
            .enumerate()
            .map(|(i, (name, shape))| (name, (i as i64, shape)))
            .collect();
        Ok(Generated { names })
    }
}

impl TensorSource for Generated {
    fn describe(&self) -> String {
        "generated weights".into()
    }

    fn names(&self) -> Vec<String> {
        self.names.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.names.get(name).map(|(_, s)| s.clone())
    }

    fn read(&self, name: &str) -> Result<Tensor> {
        let (seed, shape) = self
            .names
            .get(name)
            .ok_or_else(|| anyhow!("no tensor `{name}`"))?;
        tch::manual_seed(*seed);
        let (factor, offset) = scale(name, shape);
        let mut t = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
        let _ = t.f_mul_scalar_(factor)?.f_add_scalar_(offset)?;
        Ok(t)
    }
}

/// Latent `[1, 16, side, side]`, timestep 500, text tokens `[1, 333, 4096]`, pooled `[1, 2048]`.
fn inputs(config: &MmDitConfig, side: i64) -> (Tensor, Tensor, Tensor, Tensor) {
    let f = (Kind::Float, Device::Cpu);
    let seeded = |seed: i64, shape: &[i64]| {
        tch::manual_seed(INPUT_SEED + seed);
        Tensor::randn(shape, f)
    };
    (
        seeded(0, &[1, config.in_channels, side, side]),
        Tensor::from_slice(&[500.0f32]),
        seeded(1, &[1, TOKENS, config.joint_attention_dim]),
        seeded(2, &[1, config.pooled_projection_dim]),
    )
}

/// A `/proc/self/status` field in KiB (`VmRSS:`, `VmHWM:`).
fn proc_status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/self/status"))
}
