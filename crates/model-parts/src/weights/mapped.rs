//! Zero-copy CPU loading: a parameter whose stored dtype is the run's, on the CPU, views the
//! checkpoint file's pages instead of holding a copy of them.
//!
//! The file is mapped a second time by libtorch itself (`at::from_file`, not shared: a
//! `MAP_PRIVATE` mapping, copy on write), as one byte tensor; each parameter is a typed view
//! of its byte range in it. The mapping is a libtorch storage, so its lifetime is libtorch's
//! reference count: every view holds it, and it is unmapped when the last parameter viewing it
//! goes (the model dropped, or its parts released) — no view can outlive it, whoever keeps a
//! parameter. Being private, the mapping can never write the file: a write to a view would
//! land in a private copy of the page. None is made: what changes a parameter (LoRA, a VAE
//! swap, a merge) gives it a new tensor of its own first (the SD backend's LoRA,
//! [`super::Weights::copy_into`]), so the mapped pages stay the file's and can be handed
//! back to the OS at any time ([`drop_mapped_pages`]).
//!
//! A copy is made instead when the dtypes differ (an fp16 file run in fp32, fp8), the device is
//! not the CPU, a tensor is stored misaligned for its dtype (legal in safetensors: its byte
//! offset not a multiple of the element size), is transformed into a non-contiguous layout
//! (OpenCLIP's transposed `text_projection`), is empty, is merged from several checkpoints, or
//! `HIRESFIX_COPY_WEIGHTS=1` is set (the copying load: the benchmark's "before"; a file that
//! may be overwritten in place while a model runs from it, which would change its weights or,
//! truncated, end the process with SIGBUS; a machine short of memory without swap, where the
//! kernel may drop the mapped pages and read them again, as it cannot drop a copy's).
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use tch::{Device, Kind, Tensor};

/// Whether `HIRESFIX_COPY_WEIGHTS` asks for the copying load.
pub fn copy_requested() -> bool {
    std::env::var_os("HIRESFIX_COPY_WEIGHTS").is_some_and(|v| !v.is_empty() && v != "0")
}

/// The whole file at `path` (`len` bytes) as one CPU byte tensor over a private mapping made
/// by libtorch; `header` (the bytes before the data section, as the caller's own mapping read
/// them) must match, so a file replaced between the two mappings is refused.
pub fn map_whole_file(path: &Path, len: u64, header: &[u8]) -> Result<Tensor> {
    let shown = path.display();
    let name = path
        .to_str()
        .ok_or_else(|| anyhow!("{shown}: the path is not UTF-8"))?;
    let len = i64::try_from(len)?;
    let whole = Tensor::f_from_file(name, false, len, (Kind::Uint8, Device::Cpu))?;
    let seen = Vec::<u8>::try_from(whole.f_narrow(0, 0, header.len() as i64)?)?;
    if seen != header {
        bail!("{shown}: the file changed while it was opened");
    }
    Ok(whole)
}

/// The `bytes` bytes from `offset` of `whole` (a [`map_whole_file`] tensor) as a contiguous
/// tensor of `kind` and `shape`, sharing the mapping; `None` when the range is empty or
/// misaligned for `kind` (the caller copies).
pub fn typed_view(
    whole: &Tensor,
    offset: usize,
    bytes: usize,
    kind: Kind,
    shape: &[i64],
) -> Option<Tensor> {
    let size = kind.elt_size_in_bytes();
    if bytes == 0 || !offset.is_multiple_of(size) || !bytes.is_multiple_of(size) {
        return None;
    }
    let raw = whole.f_narrow(0, offset as i64, bytes as i64).ok()?;
    // The mapping starts on a page, so an offset that is a multiple of the element size is an
    // aligned address; `view(dtype)` refuses any other.
    let typed = raw.f_view_dtype(kind).ok()?;
    typed.f_view(shape).ok()
}

/// The address ranges of this process's private file mappings (not executable): where
/// [`map_whole_file`] tensors live, never the heap or a library's code. Read from
/// `/proc/self/maps`; empty elsewhere than Linux.
pub struct FileMappings(Vec<(usize, usize)>);

impl FileMappings {
    pub fn now() -> Self {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        Self(maps.lines().filter_map(private_file_mapping).collect())
    }

    /// Whether the whole data of `t` lies in one such mapping.
    pub fn holds(&self, t: &Tensor) -> bool {
        let Some((start, end)) = data_range(t) else {
            return false;
        };
        self.0.iter().any(|&(a, b)| a <= start && end <= b)
    }
}

/// `[start, end)` of `line` of `/proc/self/maps` when it is a private, non-executable mapping
/// of a file: `7f..-7f.. rw-p 00000000 fe:00 10010751   /path/model.safetensors`.
fn private_file_mapping(line: &str) -> Option<(usize, usize)> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let perms = fields.next()?;
    let path = fields.nth(3)?;
    if !path.starts_with('/') || !perms.ends_with('p') || perms.contains('x') {
        return None;
    }
    let (a, b) = range.split_once('-')?;
    Some((
        usize::from_str_radix(a, 16).ok()?,
        usize::from_str_radix(b, 16).ok()?,
    ))
}

/// The bytes `[start, end)` a CPU tensor's elements span (assumed contiguous).
fn data_range(t: &Tensor) -> Option<(usize, usize)> {
    if !t.defined() || t.device() != Device::Cpu || t.numel() == 0 {
        return None;
    }
    let start = t.data_ptr() as usize;
    Some((start, start + t.numel() * t.kind().elt_size_in_bytes()))
}

/// Hands the pages of every tensor of `tensors` that views a file mapping back to the OS
/// (`MADV_DONTNEED`), before the caller drops or replaces it: they leave this process's
/// resident memory at once, even while other parameters keep the mapping. Safe for any reader
/// left: no mapped page is ever written, so one touched again is read back from the file.
pub fn drop_mapped_pages<'a>(tensors: impl IntoIterator<Item = &'a Tensor>) {
    let mappings = FileMappings::now();
    for t in tensors {
        if mappings.holds(t) {
            if let Some((start, end)) = data_range(t) {
                advise_dontneed(start, end);
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn advise_dontneed(start: usize, end: usize) {
    // SAFETY: sysconf reads a constant of the system.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return,
    };
    // Only whole pages inside the tensor: a page shared with a neighbour stays.
    let (first, last) = (start.div_ceil(page) * page, end / page * page);
    if last > first {
        // SAFETY: `[first, last)` lies inside a private file mapping whose pages were never
        // written (module docs): dropping them loses nothing, a later read faults them back
        // in from the file.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                last - first,
                libc::MADV_DONTNEED,
            )
        };
    }
}

#[cfg(not(target_os = "linux"))]
fn advise_dontneed(_start: usize, _end: usize) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_file_mappings_are_read_from_proc_maps_lines() {
        let line = "7ffb2eafa000-7ffb2eafe000 rw-p 00000000 fe:00 10010751   /tmp/a.safetensors";
        assert_eq!(
            private_file_mapping(line),
            Some((0x7ffb2eafa000, 0x7ffb2eafe000))
        );
        let code = "7f0000000000-7f0000001000 r-xp 00000000 fe:00 1 /usr/lib/libtorch_cpu.so";
        assert_eq!(private_file_mapping(code), None);
        let shared = "7f0000000000-7f0000001000 rw-s 00000000 fe:00 1 /dev/shm/x";
        assert_eq!(private_file_mapping(shared), None);
        assert_eq!(
            private_file_mapping("55d0-55e0 rw-p 00000000 00:00 0   [heap]"),
            None
        );
        assert_eq!(
            private_file_mapping("55d0-55e0 rw-p 00000000 00:00 0"),
            None
        );
    }

    #[test]
    fn a_view_shares_the_mapping_and_a_write_to_it_never_reaches_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let values: Vec<f32> = (0..64).map(|i| i as f32).collect();
        let mut bytes = b"HEADER__".to_vec();
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        std::fs::write(&path, &bytes).unwrap();
        let whole = map_whole_file(&path, bytes.len() as u64, b"HEADER__").unwrap();
        let view = typed_view(&whole, 8, 256, Kind::Float, &[8, 8]).unwrap();
        assert_eq!(Vec::<f32>::try_from(view.flatten(0, -1)).unwrap(), values);
        assert!(FileMappings::now().holds(&view));
        assert!(!FileMappings::now().holds(&view.copy()));
        // Misaligned for f32: no view (the caller copies).
        assert!(typed_view(&whole, 10, 8, Kind::Float, &[2]).is_none());
        // Private: even a stray write stays in this process.
        let _ = view.shallow_clone().fill_(5.0);
        drop_mapped_pages([&view]);
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
        assert!(map_whole_file(&path, bytes.len() as u64, b"OTHER___").is_err());
    }
}
