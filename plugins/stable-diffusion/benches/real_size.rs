//! Real-size architectures with random weights (speed and memory do not depend on weight
//! values), each workload in its own child process reporting VmRSS before and VmHWM after:
//!
//! - `sd15-load`: load a real-size SD 1.5 single file (fp32, written once by the real save
//!   code) onto the CPU in fp32, then read every parameter once (a sum each: the pages a
//!   zero-copy load left in the file come in here); peak RSS against the file size (target:
//!   below 1.3×). `HIRESFIX_COPY_WEIGHTS=1` in the environment measures the copying load.
//! - `sd15-merge`: merge two such files (weighted sum, streamed); peak RSS against one file
//!   (target: below 1.5×).
//! - `sdxl-step`: build the SDXL base UNet, fill it, run one step at a 128×128 latent
//!   (1024 px) in fp32 on the CPU; time and peak RSS.
//!
//! `cargo bench -p hiresfix-sd --bench real_size` (the SD 1.5 file is kept in
//! `target/bench-data/` and reused).
mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use common::{child_args, proc_status_kib, run_child, MIB};
use hiresfix_sd::families::{sd1, sdxl};
use hiresfix_sd::merge::{merge, Recipe};
use hiresfix_sd::random::{randomize, write_random_checkpoint, RandomModel};
use hiresfix_sd::unet::UNetModel;
use hiresfix_sd::SdModel;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn main() -> Result<()> {
    match child_args() {
        Some((name, args)) => match name.as_str() {
            "sd15-load" => sd15_load(Path::new(args.first().map(String::as_str).unwrap_or(""))),
            "sdxl-step" => sdxl_step(),
            "sd15-merge" => sd15_merge(&args),
            other => bail!("unknown child `{other}`"),
        },
        None => parent(),
    }
}

/// Prints `baseline_kib peak_kib seconds load_peak_kib load_seconds`: the peak and time
/// after reading every parameter, then after the load alone.
fn sd15_load(path: &Path) -> Result<()> {
    let baseline = proc_status_kib("VmRSS:")?;
    let start = Instant::now();
    let model = SdModel::load(path, None, Device::Cpu, Kind::Float)?;
    let load = start.elapsed().as_secs_f64();
    let load_peak = proc_status_kib("VmHWM:")?;
    if model.info().family.id != "sd1" {
        bail!("loaded as {}", model.info().family.id);
    }
    let mut total = 0.0;
    for (_, var) in model.var_store().variables() {
        total += f64::try_from(var.sum(Kind::Double))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    if !total.is_finite() {
        bail!("non-finite weights");
    }
    println!(
        "{baseline} {} {seconds:.2} {load_peak} {load:.2}",
        proc_status_kib("VmHWM:")?
    );
    Ok(())
}

/// Prints `baseline_kib peak_kib seconds`.
fn sd15_merge(args: &[String]) -> Result<()> {
    let [a, b, out] = args else {
        bail!("sd15-merge A B OUT");
    };
    let baseline = proc_status_kib("VmRSS:")?;
    let start = Instant::now();
    let recipe = Recipe::WeightedSum(vec![(a.into(), 0.5), (b.into(), 0.5)]);
    merge(&recipe, Path::new(out))?;
    let seconds = start.elapsed().as_secs_f64();
    println!("{baseline} {} {seconds:.2}", proc_status_kib("VmHWM:")?);
    Ok(())
}

/// Prints `baseline_kib peak_kib build_seconds step_seconds`.
fn sdxl_step() -> Result<()> {
    let baseline = proc_status_kib("VmRSS:")?;
    let start = Instant::now();
    let mut vs = VarStore::new(Device::Cpu);
    let unet = UNetModel::new(vs.root() / "model" / "diffusion_model", &sdxl::unet())?;
    vs.freeze();
    randomize(&vs, 0);
    let build = start.elapsed().as_secs_f64();
    tch::manual_seed(0);
    let opts = (Kind::Float, Device::Cpu);
    let (x, context, y) = (
        Tensor::randn([1, 4, 128, 128], opts),
        Tensor::randn([1, 77, 2048], opts),
        Tensor::randn([1, 2816], opts),
    );
    let t = Tensor::from_slice(&[500.0f32]);
    let start = Instant::now();
    let out = tch::no_grad(|| unet.forward(&x, &t, &context, Some(&y)))?;
    let step = start.elapsed().as_secs_f64();
    if !bool::try_from(out.isfinite().all())? {
        bail!("non-finite output");
    }
    println!(
        "{baseline} {} {build:.2} {step:.2}",
        proc_status_kib("VmHWM:")?
    );
    Ok(())
}

fn bench_dir() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data");
    std::fs::create_dir_all(&dir).context("creating target/bench-data")?;
    Ok(dir)
}

/// A real-size SD 1.5 file with random weights from `seed`, written once.
fn sd15_file(seed: i64) -> Result<PathBuf> {
    let path = bench_dir()?.join(format!("sd15-random-fp32-{seed}.safetensors"));
    if !path.is_file() {
        eprintln!("writing {} (about 4.3 GB, once)...", path.display());
        write_random_checkpoint(&path, &RandomModel::real_size(&sd1::SD1), seed)?;
    }
    Ok(path)
}

fn parent() -> Result<()> {
    println!(
        "CPU, {} threads, fp32, random weights",
        tch::get_num_threads()
    );
    let file = sd15_file(0)?;
    let size = std::fs::metadata(&file)?.len() as f64;
    // A cold page cache when allowed (root), as after a download or a reboot.
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    println!(
        "sd15-load: page cache {}",
        if cold {
            "dropped (cold read)"
        } else {
            "kept (warm read: not allowed to drop it)"
        }
    );
    let load = run_child("sd15-load", &[file.to_str().unwrap_or_default()])?;
    let [baseline, peak, seconds, load_peak, load_seconds] = load[..] else {
        bail!("sd15-load printed {load:?}");
    };
    let (baseline, peak) = (baseline * 1024.0, peak * 1024.0);
    println!(
        "sd15-load: file {:.0} MiB; RSS before {:.0} MiB; load {load_seconds:.2} s (peak {:.0} MiB); load and read every parameter {seconds:.2} s (peak {:.0} MiB)",
        size / MIB,
        baseline / MIB,
        load_peak / 1024.0,
        peak / MIB
    );
    println!(
        "sd15-load: peak RSS / file size {:.3} (target < 1.3); (peak - before) / file size {:.3}",
        peak / size,
        (peak - baseline) / size
    );
    let other = sd15_file(1)?;
    let merged = bench_dir()?.join("sd15-merged.safetensors");
    let _ = std::fs::remove_file(&merged);
    let cold = std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok();
    let paths = [
        file.to_str().unwrap_or_default(),
        other.to_str().unwrap_or_default(),
        merged.to_str().unwrap_or_default(),
    ];
    let result = run_child("sd15-merge", &paths)?;
    let _ = std::fs::remove_file(&merged);
    let [baseline, peak, seconds] = result[..] else {
        bail!("sd15-merge printed {result:?}");
    };
    let (baseline, peak) = (baseline * 1024.0, peak * 1024.0);
    println!("sd15-merge: two {:.0} MiB files ({}); RSS before {:.0} MiB, peak {:.0} MiB; {seconds:.1} s", size / MIB, if cold { "cold" } else { "warm" }, baseline / MIB, peak / MIB);
    println!(
        "sd15-merge: peak RSS / one file {:.3} (target < 1.5)",
        peak / size
    );
    let step = run_child("sdxl-step", &[])?;
    let [baseline, peak, build, seconds] = step[..] else {
        bail!("sdxl-step printed {step:?}");
    };
    let (baseline, peak) = (baseline * 1024.0, peak * 1024.0);
    let weights = 2_567_463_684.0 * 4.0;
    println!("sdxl-step: UNet 2,567,463,684 parameters ({:.0} MiB fp32); RSS before {:.0} MiB, peak {:.0} MiB; build+fill {build:.1} s, one step at 128x128 {seconds:.1} s", weights / MIB, baseline / MIB, peak / MIB);
    println!("sdxl-step: peak RSS / weights {:.3}", peak / weights);
    Ok(())
}
