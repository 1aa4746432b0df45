//! PyTorch `.pth` files through `hiresfix convert`'s restricted reader (torch's zip and legacy
//! formats, the pickle VM, tensor rebuilding). Errors are expected; panics, hangs and
//! unbounded allocations are bugs.
#![no_main]
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

/// One file per fuzzing process, in memory.
fn scratch() -> &'static PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| PathBuf::from(format!("/dev/shm/hiresfix-fuzz-{}.pth", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    if std::fs::write(path, data).is_ok() {
        let _ = torch_pickle::read_state_dict(path);
        let _ = std::fs::remove_file(path);
    }
});
