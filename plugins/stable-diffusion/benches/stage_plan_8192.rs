//! Issue 29's scale point: a 3-stage plan to 8192×8192 on the tiny SD 1.x model, run by the
//! real `hiresfix` binary. The tiny model here has a real model's 4-level VAE (latent factor
//! 8; `RandomModel::tiny_sd1_vae8`), so 8192 px is a 1024×1024 latent as for SD 1.5 — the
//! test models' 2-level VAE would make it 4096×4096 (hours a step on 2 cores).
//!
//! `target = "8192x8192"`, `stage_factor = 4`: 512 → 2048 → 8192. Pass 1's `tiled` table
//! (64 cells, overlap 8, 4 a call) carries to every stage: pass 1's 64×64 latent is one tile
//! (the same as untiled), 2048 px is 25 tiles, 8192 px 361. `"auto"` would run the 8192 stage
//! whole — the tiny model's call fits in memory (7 GiB), but its 1 M-token attention takes
//! hours on a CPU. Prints the plan (`hiresfix check`), then the wall time and the peak RSS of
//! `hiresfix generate`.
//!
//! `cargo build --workspace --bins --lib && cargo bench -p hiresfix-sd --bench stage_plan_8192
//! [-- PATH_TO_HIRESFIX]` (default: the workspace's target/debug/hiresfix; the checkpoint is
//! written once to target/bench-data/).
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use hiresfix_sd::random::{write_random_checkpoint, RandomModel};

const PROFILE: &str = r#"seed = 1
prompt = "a lighthouse on a cliff, (stormy sea:1.2), dramatic sky"
negative = "blurry"
cfg = 5.0
device = "cpu"
output = "OUT/stage8192-{seed}-{n}.png"
target = "8192x8192"
stage_factor = 4.0

[model]
checkpoint = "CHECKPOINT"

[[pass]]
steps = 2
sampler = "euler"
tiled = { tile = 64, overlap = 8, batch = 4 }
"#;

fn main() -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let hiresfix = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target/debug/hiresfix"));
    if !hiresfix.is_file() {
        bail!(
            "{} not found — run `cargo build --workspace --bins --lib` first",
            hiresfix.display()
        );
    }
    let dir = workspace.join("target/bench-data");
    let out = dir.join("stage8192");
    std::fs::create_dir_all(&out).context("creating target/bench-data/stage8192")?;
    let checkpoint = dir.join("sd1-tiny-vae8.safetensors");
    if !checkpoint.is_file() {
        write_random_checkpoint(&checkpoint, &RandomModel::tiny_sd1_vae8(), 0)?;
    }
    let profile = dir.join("stage8192.toml");
    let text = PROFILE
        .replace("OUT", &out.to_string_lossy())
        .replace("CHECKPOINT", &checkpoint.to_string_lossy());
    std::fs::write(&profile, text).context("writing the profile")?;

    let run = |command: &str| -> Result<f64> {
        let start = Instant::now();
        // Progress bars on stderr show which phase a long run is in; the phase times go to
        // target/bench-data/stage8192/timings.json.
        let status = Command::new(&hiresfix)
            .arg(command)
            .arg(&profile)
            .env("HIRESFIX_TIMINGS", out.join("timings.json"))
            .status()
            .with_context(|| format!("running {}", hiresfix.display()))?;
        if !status.success() {
            bail!("hiresfix {command} failed ({status})");
        }
        Ok(start.elapsed().as_secs_f64())
    };
    run("check")?;
    let seconds = run("generate")?;
    println!(
        "3-stage plan to 8192x8192, tiny SD 1.x (8x VAE): generate {seconds:.1} s wall, peak RSS {:.0} MiB",
        peak_child_rss_kib() as f64 / 1024.0
    );
    Ok(())
}

/// The largest resident set of any child this process waited for, in KiB.
fn peak_child_rss_kib() -> i64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer it is given.
    unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, usage.as_mut_ptr());
        usage.assume_init().ru_maxrss
    }
}
