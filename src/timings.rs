//! Phase timings for the benchmark (`scripts/bench`): with `HIRESFIX_TIMINGS=FILE` set, the
//! seconds spent in each phase (load, text encode, each pass's sampling, upscale, VAE decode,
//! PNG: what the engine reports to the command line's observer) and the process's peak
//! resident memory are written to FILE as JSON when the command ends.
use std::sync::Mutex;

static PHASES: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());

/// Adds `seconds` to phase `name`.
pub fn add(name: &str, seconds: f64) {
    let mut phases = PHASES.lock().unwrap_or_else(|p| p.into_inner());
    match phases.iter_mut().find(|(n, _)| n == name) {
        Some((_, total)) => *total += seconds,
        None => phases.push((name.to_owned(), seconds)),
    }
}

/// Writes the phases, `total` and the peak RSS to `$HIRESFIX_TIMINGS` when it is set.
pub fn write_if_asked(total: f64) {
    let Some(file) = std::env::var_os("HIRESFIX_TIMINGS") else {
        return;
    };
    let mut map = serde_json::Map::new();
    for (name, seconds) in PHASES.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        map.insert(name.clone(), (*seconds).into());
    }
    map.insert("total".into(), total.into());
    if let Some(kib) = peak_rss_kib() {
        map.insert("peak_rss_mib".into(), (kib as f64 / 1024.0).into());
    }
    if let Err(e) = std::fs::write(&file, serde_json::Value::Object(map).to_string()) {
        eprintln!(
            "warning: timings not written to {}: {e}",
            file.to_string_lossy()
        );
    }
}

/// `VmHWM` of this process (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
