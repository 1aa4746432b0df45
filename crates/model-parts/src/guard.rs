//! libtorch raises its errors (out of memory the usual one) as Rust panics through tch; these
//! turn them into one-line errors at the model's boundaries.
use std::panic::{catch_unwind, AssertUnwindSafe};

use anyhow::{bail, Result};

/// Whether `e` is libtorch running out of memory (CUDA or the CPU allocator).
pub fn is_out_of_memory(e: &anyhow::Error) -> bool {
    let message = format!("{e:#}").to_lowercase();
    message.contains("out of memory") || message.contains("not enough memory")
}

/// Runs `f`, turning a libtorch failure into an error that says what was being done.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("unknown error");
            let line = host_api::error::first_line(message);
            if is_out_of_memory(&anyhow::anyhow!("{line}")) {
                bail!("out of memory while {what} ({line})");
            }
            bail!("libtorch failed while {what}: {line}")
        }
    }
}
