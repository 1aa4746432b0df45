//! A child's peak resident memory. Linux carries a process's high-water mark across `exec`
//! (`ru_maxrss` starts at the memory of the process that spawned it), so a child spawned from
//! this test process — hundreds of MB with libtorch and the parallel tests — would report at
//! least that. A small Python parent spawns the command instead and reports its children's
//! peak: the command's own, or Python's ~10 MB if that were larger.
use std::process::{Command, Stdio};

const MEASURE: &str = "import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)";

/// Runs `cmd` (its program, arguments, folder and environment) to its end: (exit code,
/// stderr, peak RSS in MiB).
pub fn run_with_peak_rss(cmd: &mut Command) -> (Option<i32>, String, f64) {
    let mut measured = Command::new("python3");
    measured
        .arg("-c")
        .arg(MEASURE)
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        measured.current_dir(dir);
    }
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => measured.env(key, v),
            None => measured.env_remove(key),
        };
    }
    let out = measured
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("python3 runs (the build needs it for libtorch)");
    let report = String::from_utf8_lossy(&out.stdout);
    let mut fields = report.split_whitespace();
    let kib: f64 = fields.next().and_then(|v| v.parse().ok()).expect("a peak");
    let code: i32 = fields.next().and_then(|v| v.parse().ok()).expect("a code");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    // A negative code is a signal (Python's convention).
    ((code >= 0).then_some(code), err, kib / 1024.0)
}
