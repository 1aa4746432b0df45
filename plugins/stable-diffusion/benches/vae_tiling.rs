//! VAE decode at 1024 px, full vs tiled: peak memory (each in its own child process) and wall
//! time on a real-size SD 1.x VAE (random fp32 weights, CPU).
//!
//! `cargo bench -p hiresfix-sd --bench vae_tiling` — the parent re-runs itself with
//! `--child full|tiled`; each child reports its VmRSS before decoding and its VmHWM after.
mod common;

use std::time::Instant;

use anyhow::{bail, Result};
use common::{child_args, proc_status_kib, run_child, MIB};
use hiresfix_sd::vae::memory::{self as vae_memory, AttentionMemory};
use hiresfix_sd::vae::tiling::{self as vae_tiling, VaeTilingMode, VaeTilingOptions};
use hiresfix_sd::vae::{AutoencoderKL, VaeConfig, VaePass};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Latent side: 128 cells = 1024 px at factor 8.
const LATENT: i64 = 128;

fn main() -> Result<()> {
    match child_args() {
        Some((mode, _)) => child(&mode),
        None => parent(),
    }
}

/// Builds the VAE, decodes once in `mode`, prints `baseline_kib peak_kib seconds`.
fn child(mode: &str) -> Result<()> {
    let vs = VarStore::new(Device::Cpu);
    let vae = AutoencoderKL::new(vs.root() / "first_stage_model", &VaeConfig::default())?;
    hiresfix_sd::random::randomize(&vs, 1234);
    tch::manual_seed(0);
    let latent = Tensor::randn([1, 4, LATENT, LATENT], (Kind::Float, Device::Cpu));
    let baseline = proc_status_kib("VmRSS:")?;
    let start = Instant::now();
    let image = tch::no_grad(|| match mode {
        "full" => vae.decode(&latent),
        "tiled" => {
            vae_tiling::run_tiled(&vae, VaePass::Decode, &latent, &VaeTilingOptions::default())
        }
        other => bail!("unknown child mode `{other}` (full or tiled)"),
    })?;
    let seconds = start.elapsed().as_secs_f64();
    if image.size() != [1, 3, LATENT * 8, LATENT * 8] {
        bail!("decoded to {:?}", image.size());
    }
    println!("{baseline} {} {seconds:.2}", proc_status_kib("VmHWM:")?);
    Ok(())
}

struct Run {
    baseline_kib: u64,
    peak_kib: u64,
    seconds: f64,
}

fn run(mode: &str) -> Result<Run> {
    match run_child(mode, &[])?.as_slice() {
        [b, p, s] => Ok(Run {
            baseline_kib: *b as u64,
            peak_kib: *p as u64,
            seconds: *s,
        }),
        other => bail!("{mode} child printed {other:?}"),
    }
}

fn parent() -> Result<()> {
    let cfg = VaeConfig::default();
    let options = VaeTilingOptions::default();
    let attention = AttentionMemory::on(Device::Cpu);
    let estimate =
        vae_memory::peak_bytes(&cfg, VaePass::Decode, &[1, 4, LATENT, LATENT], 4, attention);
    let (tile, overlap) = options.latent_geometry(cfg.spatial_factor())?;
    let tile_estimate =
        vae_memory::peak_bytes(&cfg, VaePass::Decode, &[1, 4, tile, tile], 4, attention);
    let tiles = vae_tiling::tile_count(LATENT, LATENT, tile, overlap);
    let free = vae_memory::free_bytes(Device::Cpu);
    println!("SD 1.x VAE decoder (ch 128, ch_mult [1,2,4,4], 2 res blocks, z 4), random fp32 weights, CPU, {} threads", tch::get_num_threads());
    println!(
        "latent 1x4x{LATENT}x{LATENT} -> image 1x3x{0}x{0}",
        LATENT * 8
    );
    println!(
        "auto estimate, full decode:     {estimate} bytes ({:.0} MiB)",
        estimate as f64 / MIB
    );
    println!("auto estimate, one {}px tile:  {tile_estimate} bytes ({:.0} MiB); {tiles} tiles, {} px overlap", options.tile_px, tile_estimate as f64 / MIB, options.overlap_px);
    let full = run("full")?;
    let tiled = run("tiled")?;
    for (name, r) in [("full ", &full), ("tiled", &tiled)] {
        println!(
            "{name}: peak RSS {:.0} MiB (before decode {:.0} MiB, decode added {:.0} MiB), wall {:.1} s",
            r.peak_kib as f64 / 1024.0,
            r.baseline_kib as f64 / 1024.0,
            r.peak_kib.saturating_sub(r.baseline_kib) as f64 / 1024.0,
            r.seconds
        );
    }
    let added = |r: &Run| r.peak_kib.saturating_sub(r.baseline_kib) as f64;
    println!(
        "ratio tiled/full: peak RSS {:.3}, decode-added {:.3}, wall {:.2}",
        tiled.peak_kib as f64 / full.peak_kib as f64,
        added(&tiled) / added(&full),
        tiled.seconds / full.seconds
    );
    println!(
        "estimate / measured decode-added (full): {:.2}",
        estimate as f64 / (added(&full) * 1024.0)
    );
    let choice = match vae_tiling::should_tile(VaeTilingMode::Auto, estimate, free) {
        true => "tiled",
        false => "full",
    };
    match free {
        Some(free) => println!(
            "MemAvailable now {:.0} MiB -> auto would decode {choice}",
            free as f64 / MIB
        ),
        None => println!("MemAvailable unreadable -> auto would decode {choice}"),
    }
    Ok(())
}
