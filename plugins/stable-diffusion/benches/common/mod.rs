//! What the benchmarks share: each workload runs in its own child process (the benchmark
//! binary re-run with `--child NAME ARGS...`), which prints numbers the parent reads.
#![allow(dead_code)]
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const MIB: f64 = (1 << 20) as f64;

/// A field of /proc/self/status in KiB (`VmRSS:` now, `VmHWM:` the peak so far).
pub fn proc_status_kib(field: &str) -> Result<u64> {
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

/// `Some((name, args))` when this process is a child.
pub fn child_args() -> Option<(String, Vec<String>)> {
    let args: Vec<String> = std::env::args().collect();
    let i = args.iter().position(|a| a == "--child")?;
    let name = args.get(i + 1).cloned().unwrap_or_default();
    Some((name, args[i + 2..].to_vec()))
}

/// Runs the child workload `name` and returns the numbers it printed on its last line.
pub fn run_child(name: &str, args: &[&str]) -> Result<Vec<f64>> {
    let exe = std::env::current_exe().context("locating the benchmark binary")?;
    let out = Command::new(exe)
        .arg("--child")
        .arg(name)
        .args(args)
        .output()
        .with_context(|| format!("running the {name} child"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "{name} child failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let last = text.lines().last().unwrap_or_default();
    last.split_whitespace()
        .map(|f| {
            f.parse::<f64>()
                .with_context(|| format!("{name} child printed `{last}`"))
        })
        .collect()
}
