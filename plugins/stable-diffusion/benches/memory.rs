//! `hiresfix check`'s memory estimate against the peak a pass really reaches: real-size SD 1.5
//! and SDXL (random fp32 weights written once by the real save code), on the CPU. A pass's
//! peak is the larger of its UNet phase and its decode, which run one after the other, so
//! each is measured in its own child process (load the checkpoint, then either one CFG UNet
//! call — prompt and negative in one batch — or one decode, full or tiled) reporting VmHWM.
//!
//! `cargo bench -p hiresfix-sd --bench memory [-- SIZES] [--families=sd1,sdxl]
//! [--phases=unet,full,tiled] [--estimates]` (default sizes `512,1024`; the files are kept in
//! `target/bench-data/`); `--estimates` prints the estimates alone, measuring nothing. A
//! pass's peak is the largest of its UNet phase and its decode (full or tiled).
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use common::{child_args, proc_status_kib, run_child, MIB};
use hiresfix_sd::estimate::estimate;
use hiresfix_sd::families::{sd1, sdxl, Family};
use hiresfix_sd::random::{write_random_checkpoint, RandomModel};
use hiresfix_sd::{PromptInput, SdModel, VaeTilingMode, VaeTilingOptions};
use host_api::{MemoryEstimate, MemoryRequest};
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    match child_args() {
        Some((phase, args)) => child(&phase, &args),
        None => parent(),
    }
}

/// `phase` (`unet`, `full`, `tiled`) of a pass of `size` px on `file`; prints
/// `baseline_kib peak_kib seconds`.
fn child(phase: &str, args: &[String]) -> Result<()> {
    let [file, size] = args else {
        bail!("child PHASE FILE SIZE");
    };
    let size: i64 = size.parse()?;
    let baseline = proc_status_kib("VmRSS:")?;
    let mut model = SdModel::load(Path::new(file), None, Device::Cpu, Kind::Float)?;
    let cells = size / 8;
    tch::manual_seed(0);
    let start = Instant::now();
    tch::no_grad(|| -> Result<()> {
        match phase {
            "unet" => {
                let input = |text, negative| PromptInput {
                    text,
                    negative,
                    clip_skip: 1,
                    width: size,
                    height: size,
                };
                let cond = model.encode(&input("a photo of a cat", false))?;
                let uncond = model.encode(&input("blurry", true))?;
                let x = Tensor::randn([1, 4, cells, cells], (Kind::Float, Device::Cpu));
                let out = model.denoise(&x, 1.0, &[&cond, &uncond])?;
                if out.len() != 2 {
                    bail!("denoise returned {} latents", out.len());
                }
            }
            "full" | "tiled" => {
                let mode = match phase {
                    "full" => VaeTilingMode::Off,
                    _ => VaeTilingMode::On,
                };
                model.set_vae_tiling(VaeTilingOptions {
                    mode,
                    ..VaeTilingOptions::default()
                })?;
                let latent = Tensor::randn([1, 4, cells, cells], (Kind::Float, Device::Cpu));
                let image = model.decode(&latent)?;
                if image.size() != [1, 3, size, size] {
                    bail!("decoded {:?}", image.size());
                }
            }
            other => bail!("unknown phase `{other}`"),
        }
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    println!("{baseline} {} {seconds:.1}", proc_status_kib("VmHWM:")?);
    Ok(())
}

fn bench_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data");
    std::fs::create_dir_all(&dir).context("creating target/bench-data")?;
    Ok(dir)
}

/// A real-size checkpoint of `family` with random weights (seed 0), written once.
fn random_file(family: &'static Family) -> Result<PathBuf> {
    let name = match family.id {
        "sd1" => "sd15-random-fp32-0.safetensors".to_owned(),
        id => format!("{id}-random-fp32-0.safetensors"),
    };
    let path = bench_dir()?.join(name);
    if !path.is_file() {
        eprintln!("writing {} (once)...", path.display());
        write_random_checkpoint(&path, &RandomModel::real_size(family), 0)?;
    }
    Ok(path)
}

fn estimate_for(file: &Path, size: u32) -> Result<MemoryEstimate> {
    let request = MemoryRequest {
        checkpoint: file.to_string_lossy().into_owned().into(),
        width: size,
        height: size,
        unet_batch: 2,
        dtype: "fp32".into(),
        device: "cpu".into(),
        vae_tile_size: 512,
        vae_tile_overlap: 64,
        options: Default::default(),
    };
    estimate(&request)
}

/// The estimate of each part, in MiB, for every model and size.
fn print_estimates(sizes: &[u32]) -> Result<()> {
    println!("| model | size | runtime | weights | UNet | decode full | decode tiled | peak full | peak tiled |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for family in [&sd1::SD1, &sdxl::SDXL] {
        let file = random_file(family)?;
        for &size in sizes {
            let e = estimate_for(&file, size)?;
            let m = |b: u64| format!("{:.0}", b as f64 / MIB);
            println!(
                "| {} | {size} | {} | {} | {} | {} | {} | {} | {} |",
                family.id,
                m(e.runtime),
                m(e.weights),
                m(e.unet),
                m(e.decode_full),
                m(e.decode_tiled),
                m(e.peak(false)),
                m(e.peak(true))
            );
        }
    }
    Ok(())
}

/// The value of `--NAME=a,b` on the command line, else `default`.
fn list_arg(name: &str, default: &str) -> Vec<String> {
    let prefix = format!("--{name}=");
    std::env::args()
        .find_map(|a| a.strip_prefix(&prefix).map(str::to_owned))
        .unwrap_or_else(|| default.to_owned())
        .split(',')
        .map(str::to_owned)
        .collect()
}

fn parent() -> Result<()> {
    let sizes: Vec<u32> = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "512,1024".into())
        .split(',')
        .map(|s| s.parse().context("sizes: 512,1024,..."))
        .collect::<Result<_>>()?;
    if std::env::args().any(|a| a == "--estimates") {
        return print_estimates(&sizes);
    }
    let families = list_arg("families", "sd1,sdxl");
    let phases = list_arg("phases", "unet,full,tiled");
    println!(
        "CPU, {} threads, fp32, random weights, CFG batch 2",
        tch::get_num_threads()
    );
    println!("| model | size | phase | estimate MiB | measured peak MiB | estimate / measured | seconds |");
    println!("|---|---|---|---|---|---|---|");
    for family in [&sd1::SD1, &sdxl::SDXL] {
        if !families.iter().any(|f| f == family.id) {
            continue;
        }
        let file = random_file(family)?;
        let file_arg = file.to_string_lossy().into_owned();
        for &size in &sizes {
            let e = estimate_for(&file, size)?;
            for phase in &phases {
                let part = match phase.as_str() {
                    "unet" => e.unet,
                    "full" => e.decode_full,
                    "tiled" => e.decode_tiled,
                    other => bail!("unknown phase `{other}` (unet, full, tiled)"),
                };
                let estimated = (e.runtime + e.weights + part) as f64;
                let got = run_child(phase, &[&file_arg, &size.to_string()])?;
                let [_, peak, seconds] = got[..] else {
                    bail!("{phase} printed {got:?}");
                };
                let measured = peak * 1024.0;
                println!(
                    "| {} | {size} | {phase} | {:.0} | {:.0} | {:.3} | {seconds:.1} |",
                    family.id,
                    estimated / MIB,
                    measured / MIB,
                    estimated / measured
                );
            }
        }
    }
    Ok(())
}
