//! VAE decode at 1024 px, full vs tiled: peak memory (each in its own child process) and wall
//! time on a real-size SD 1.x VAE (random fp32 weights, CPU).
//!
//! `cargo bench -p hiresfix-sd --bench vae_tiling` — the parent re-runs itself with
//! `--child full|tiled`; each child reports its VmRSS before decoding and its VmHWM after.
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hiresfix_sd::vae::{AutoencoderKL, VaeConfig, VaePass};
use hiresfix_sd::vae_memory::{self, AttentionMemory};
use hiresfix_sd::vae_tiling::{self, VaeTilingMode, VaeTilingOptions};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

/// Latent side: 128 cells = 1024 px at factor 8.
const LATENT: i64 = 128;
const MIB: f64 = (1 << 20) as f64;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--child") {
        Some(i) => child(args.get(i + 1).map(String::as_str).unwrap_or("")),
        None => parent(),
    }
}

/// Builds the VAE, decodes once in `mode`, prints `baseline_kib peak_kib seconds`.
fn child(mode: &str) -> Result<()> {
    let vs = VarStore::new(Device::Cpu);
    let vae = AutoencoderKL::new(vs.root() / "first_stage_model", &VaeConfig::default())?;
    randomize(&vs);
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

/// PyTorch-like init: uniform ±1/sqrt(fan_in) for weights and biases, norm weights 1.
fn randomize(vs: &VarStore) {
    tch::manual_seed(1234);
    let vars = vs.variables();
    tch::no_grad(|| {
        for (key, mut var) in vars.iter().map(|(k, v)| (k.clone(), v.shallow_clone())) {
            let size = var.size();
            if key.contains("norm") && key.ends_with(".weight") {
                let _ = var.fill_(1.0);
                continue;
            }
            let weight = key.replace(".bias", ".weight");
            let fan_in: i64 = vars
                .get(&weight)
                .map(|w| w.size()[1..].iter().product())
                .unwrap_or_else(|| size[1..].iter().product());
            let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
            let _ = var.uniform_(-bound, bound);
        }
    });
}

fn proc_status_kib(field: &str) -> Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/self/status"))
}

struct Run {
    baseline_kib: u64,
    peak_kib: u64,
    seconds: f64,
}

fn run_child(mode: &str) -> Result<Run> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let out = Command::new(exe)
        .args(["--child", mode])
        .output()
        .with_context(|| format!("running the {mode} child"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{mode} child failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let fields: Vec<&str> = text.split_whitespace().collect();
    match fields.as_slice() {
        [b, p, s] => Ok(Run {
            baseline_kib: b.parse()?,
            peak_kib: p.parse()?,
            seconds: s.parse()?,
        }),
        _ => bail!("{mode} child printed `{text}`"),
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
    let full = run_child("full")?;
    let tiled = run_child("tiled")?;
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
