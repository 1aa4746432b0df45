//! Memory figures for a server's `/sdapi/v1/memory` (A1111's shape): the system's RAM and
//! this process's resident set from `/proc`, a CUDA device's free and total memory from the
//! CUDA runtime libtorch loaded (`cudaMemGetInfo`; tch exposes no memory query).

/// A `/proc/meminfo` or `/proc/self/status` field in bytes (`kB` in the file).
pub fn proc_field(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// RAM as A1111 reports it (psutil): `(free, used, total)` where `used` is this process's
/// resident set and `free` the rest of the machine's total.
pub fn ram() -> Option<(u64, u64, u64)> {
    let total = proc_field("/proc/meminfo", "MemTotal")?;
    let used = proc_field("/proc/self/status", "VmRSS")?;
    Some((total.saturating_sub(used), used, total))
}

/// Sonames of the CUDA runtimes PyTorch wheels ship, newest first.
const RUNTIMES: [&str; 4] = [
    "libcudart.so.13",
    "libcudart.so.12",
    "libcudart.so.11.0",
    "libcudart.so",
];

/// `(free, total)` bytes of CUDA device `index`, `None` without a CUDA runtime or device.
pub fn cuda(index: usize) -> Option<(u64, u64)> {
    use std::os::raw::c_int;
    type SetDevice = unsafe extern "C" fn(c_int) -> c_int;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;
    let index = c_int::try_from(index).ok()?;
    // SAFETY: loading the CUDA runtime runs no user code beyond its initialisers, and both
    // symbols have these C signatures in every CUDA runtime since 2.0. The device is set on
    // the calling thread only.
    unsafe {
        let lib = RUNTIMES
            .iter()
            .find_map(|name| libloading::Library::new(name).ok())?;
        let set_device = lib.get::<SetDevice>(b"cudaSetDevice\0").ok()?;
        let mem_get_info = lib.get::<MemGetInfo>(b"cudaMemGetInfo\0").ok()?;
        if set_device(index) != 0 {
            return None;
        }
        let (mut free, mut total) = (0usize, 0usize);
        (mem_get_info(&mut free, &mut total) == 0).then_some((free as u64, total as u64))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ram_is_read_from_proc() {
        let (free, used, total) = super::ram().expect("Linux /proc");
        assert!(used > 0 && total > used && free == total - used);
    }
}
