//! A real-size SDXL UNet step over a 4096×4096 image (a 512×512 latent) with tiled diffusion,
//! fp32 on the CPU: the SDXL base UNet built by the backend (`families/sdxl.rs`, 2.57 G
//! parameters) with random weights (memory and time do not depend on their values), one
//! denoiser evaluation through the engine's [`Tiler`] (the tiles, batches and merge of a
//! tiled pass), and the process's peak resident memory (VmHWM) against `check`'s estimate of
//! that pass: the CPU runtime, the UNet's weights, one call of `batch` tiles at the tile's
//! size (the backend's `working_bytes`) and the whole-latent merge buffers
//! (`memory::merge_buffers`). The text encoders and the VAE are not built: this is the UNet
//! pass (their weights add 3.4 GiB to a whole checkpoint's resident set).
//!
//! `cargo bench -p hiresfix-engine --bench tiled_sdxl -- [TILE OVERLAP BATCH ROWS]`
//! (defaults 128 32 1 1: 25 tiles of 1024 px, one row each — `ROWS = 2` is a CFG call).
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hiresfix_engine::device_memory::proc_field;
use hiresfix_engine::memory::merge_buffers;
use hiresfix_engine::tiled::{Method, Tiled, Tiler};
use hiresfix_sd::estimate::CPU_RUNTIME;
use hiresfix_sd::families::sdxl;
use hiresfix_sd::random::randomize;
use hiresfix_sd::unet::memory::working_bytes;
use hiresfix_sd::unet::UNetModel;
use hiresfix_sd::vae::memory::AttentionMemory;
use host_api::tch::{self, nn::VarStore};
use host_api::tch::{Device, Kind, Tensor};

const MIB: f64 = (1u64 << 20) as f64;
/// 4096 px on SDXL's 8× VAE.
const LATENT: i64 = 512;

fn main() -> Result<()> {
    let args: Vec<u32> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let arg = |i: usize, default: u32| args.get(i).copied().unwrap_or(default);
    let settings = Tiled {
        method: Method::MultiDiffusion,
        tile: arg(0, 128),
        overlap: arg(1, 32),
        batch: arg(2, 1),
    }
    .checked()
    .map_err(anyhow::Error::msg)?;
    let rows = i64::from(arg(3, 1).clamp(1, 2));
    let tiler = Tiler::new(&settings, LATENT, LATENT);
    let grid = &tiler.grid;
    println!(
        "CPU, {} threads, fp32, random weights; {LATENT}x{LATENT} latent ({} px), {} row(s) a tile",
        tch::get_num_threads(),
        LATENT * 8,
        rows
    );
    println!("tiled {}", grid.describe(&settings));

    let start = Instant::now();
    let mut vs = VarStore::new(Device::Cpu);
    let config = sdxl::unet();
    let unet = UNetModel::new(vs.root() / "model" / "diffusion_model", &config)?;
    vs.freeze();
    randomize(&vs, 0);
    let parameters: i64 = vs
        .variables()
        .values()
        .map(Tensor::numel)
        .map(|n| n as i64)
        .sum();
    println!(
        "build + random fill: {:.1} s, {parameters} parameters",
        start.elapsed().as_secs_f64()
    );

    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let x = Tensor::randn([rows, 4, LATENT, LATENT], opts);
    let (context, vector) = (
        Tensor::randn([rows, 77, 2048], opts),
        Tensor::randn([rows, 2816], opts),
    );
    let t = Tensor::from_slice(&[500.0f32]);
    let mut calls = 0;
    let start = Instant::now();
    let out = tch::no_grad(|| {
        tiler.denoise_with(&x, |tiles| -> Result<Vec<Tensor>> {
            let n = tiles.size()[0] / rows;
            calls += 1;
            let eps = unet.forward(
                tiles,
                &t,
                &context.repeat([n, 1, 1]),
                Some(&vector.repeat([n, 1])),
            )?;
            eprintln!(
                "call {calls}/{}: {:.0} s",
                grid.batches.len(),
                start.elapsed().as_secs_f64()
            );
            Ok(vec![eps])
        })
    })?;
    let seconds = start.elapsed().as_secs_f64();
    if !bool::try_from(out[0].isfinite().all())? {
        bail!("non-finite output");
    }
    let peak =
        proc_field("/proc/self/status", "VmHWM").context("no VmHWM in /proc/self/status")? as f64;

    let tile = (grid.tile_h, grid.tile_w);
    let per_call = grid.per_call() as u64 * rows as u64;
    let call = working_bytes(&config, tile, per_call, 4, AttentionMemory::on(Device::Cpu));
    let weights = parameters as u64 * 4;
    let buffers = merge_buffers((LATENT, LATENT), 4, rows as u64, 1);
    let estimate = CPU_RUNTIME + weights + call + buffers;
    println!(
        "estimate: runtime {:.0} + weights {:.0} + call of {per_call} at {}x{} {:.0} + merge buffers {:.0} = {:.0} MiB",
        CPU_RUNTIME as f64 / MIB,
        weights as f64 / MIB,
        tile.1,
        tile.0,
        call as f64 / MIB,
        buffers as f64 / MIB,
        estimate as f64 / MIB
    );
    println!(
        "step: {seconds:.1} s in {calls} calls; peak RSS {:.0} MiB ({:.2} GiB); estimate / measured {:.3}",
        peak / MIB,
        peak / MIB / 1024.0,
        estimate as f64 / peak
    );
    Ok(())
}
