//! Reading `.safetensors` files, memory-mapped (`memmap2`) and validated by the `safetensors`
//! crate before any tensor is touched: a truncated or corrupt download ends in one clear error.
//! Tensors are viewed in place in the mapping and copied once, into the model; the pages read
//! are handed back right after, so a checkpoint never sits in memory twice. A parameter that
//! needs no conversion is not copied at all: it views a second, libtorch-owned mapping
//! ([`SafetensorsFile::mapped_view`], [`super::mapped`]).
use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::{Mmap, UncheckedAdvice};
use safetensors::{SafeTensorError, SafeTensors};
use tch::{Device, Kind, Tensor};

/// Where one tensor lives inside the file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    /// The stored dtype as safetensors names it (`F16`, `F32`, ...).
    pub dtype: String,
    pub shape: Vec<i64>,
    /// Byte range inside the data section.
    start: usize,
    end: usize,
}

impl TensorEntry {
    pub fn bytes(&self) -> usize {
        self.end - self.start
    }

    /// The dtype a read hands over: the stored one, except fp8 ([`is_fp8`]), read as `F16`.
    pub fn read_dtype(&self) -> &str {
        match is_fp8(&self.dtype) {
            true => "F16",
            false => &self.dtype,
        }
    }

    /// The bytes of the tensor as read ([`Self::read_dtype`]).
    pub fn read_bytes(&self) -> usize {
        match is_fp8(&self.dtype) {
            true => self.bytes() * 2,
            false => self.bytes(),
        }
    }
}

/// An opened `.safetensors` file: its validated header over a read-only memory map.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    data_start: usize,
    entries: BTreeMap<String, TensorEntry>,
    /// The header's `__metadata__` strings.
    metadata: BTreeMap<String, String>,
    /// The file mapped by libtorch for zero-copy views, made on first use.
    whole: WholeFile,
}

/// [`super::mapped::map_whole_file`] of the file, once; `None` where mapping failed (then
/// tensors are copied).
#[derive(Default)]
struct WholeFile(OnceCell<Option<Tensor>>);

impl std::fmt::Debug for WholeFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match self.0.get() {
            None => "not mapped yet",
            Some(None) => "not mappable",
            Some(Some(_)) => "mapped",
        };
        f.write_str(state)
    }
}

impl SafetensorsFile {
    /// Maps `path` and validates its header; a file that is not safetensors but a pickle
    /// (`torch.save`) is refused by name.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        refuse_pickle_extension(path)?;
        let file = File::open(path).with_context(|| format!("{shown}: cannot open the file"))?;
        // SAFETY: a read-only private mapping; tensors are copied out before use. A file
        // rewritten underneath a running process is outside what any loader can defend against.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("{shown}: cannot map the file into memory"))?;
        let (data_start, entries) = parse_header(&map[..]).map_err(|e| anyhow!("{shown}: {e}"))?;
        let metadata = SafeTensors::read_metadata(&map[..])
            .ok()
            .and_then(|(_, m)| m.metadata().clone())
            .map(|m| m.into_iter().collect())
            .unwrap_or_default();
        Ok(Self {
            path: path.to_path_buf(),
            map,
            data_start,
            entries,
            metadata,
            whole: WholeFile::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.entries
    }

    /// The header's `__metadata__` strings (training notes, merge recipes, peft configs).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Size of the whole file in bytes.
    pub fn len(&self) -> u64 {
        self.map.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn entry(&self, name: &str) -> Result<(&TensorEntry, Kind)> {
        let shown = self.path.display();
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| anyhow!("{shown}: no tensor `{name}`"))?;
        let kind = kind_of(&entry.dtype)
            .ok_or_else(|| anyhow!("{shown}: tensor `{name}` has dtype {} which is not supported — convert the file to fp16/fp32", entry.dtype))?;
        Ok((entry, kind))
    }

    /// Runs `f` on tensor `name` viewed in place (CPU, stored dtype, no copy), then hands its
    /// pages back to the OS. `f` must copy what it keeps: the view dies with the call.
    ///
    /// fp8 tensors (`F8_E4M3`, `F8_E5M2`) are handed over upcast to fp16, one tensor at a
    /// time: every fp8 value is an fp16 value, so this is exact, and the model (or a merge)
    /// converts on to its own dtype as for any fp16 file. Nothing downstream sees fp8, which
    /// libtorch's CPU kernels mostly lack (`isfinite`, arithmetic).
    pub fn with_view<R>(&self, name: &str, f: impl FnOnce(&Tensor) -> Result<R>) -> Result<R> {
        let (entry, kind) = self.entry(name)?;
        let f = |stored: &Tensor| match is_fp8(&entry.dtype) {
            true => {
                let wide = stored.f_to_kind(Kind::Half).with_context(|| {
                    format!("{}: cannot upcast fp8 tensor `{name}`", self.path.display())
                })?;
                f(&wide)
            }
            false => f(stored),
        };
        let bytes = &self.map[self.data_start + entry.start..self.data_start + entry.end];
        let aligned = (bytes.as_ptr() as usize).is_multiple_of(kind.elt_size_in_bytes());
        let result = if aligned && !bytes.is_empty() {
            let strides = contiguous_strides(&entry.shape);
            // SAFETY: `bytes` covers exactly shape × element size (validated by the header
            // check), is aligned for `kind`, and outlives the view, which `f` cannot keep.
            let view = unsafe {
                Tensor::f_from_blob(bytes.as_ptr(), &entry.shape, &strides, kind, Device::Cpu)
            }
            .with_context(|| format!("{}: cannot view tensor `{name}`", self.path.display()))?;
            f(&view)
        } else {
            // Misaligned data (legal in the format, rare in practice) goes through one copy.
            let tensor =
                Tensor::f_from_data_size(bytes, &entry.shape, kind).with_context(|| {
                    format!("{}: cannot build tensor `{name}`", self.path.display())
                })?;
            f(&tensor)
        };
        self.release(self.data_start + entry.start, entry.bytes());
        result
    }

    /// Tensor `name` as a CPU tensor of `kind` that views the file's pages (zero copy), when it
    /// is stored as `kind` (not fp8) and aligned for it; `None` otherwise, the caller copies.
    /// The view keeps its mapping alive ([`super::mapped`]), whatever becomes of `self`.
    pub fn mapped_view(&self, name: &str, kind: Kind) -> Option<Tensor> {
        let (entry, stored) = self.entry(name).ok()?;
        if stored != kind || is_fp8(&entry.dtype) {
            return None;
        }
        let whole = self.whole.0.get_or_init(|| {
            let header = &self.map[..self.data_start];
            super::mapped::map_whole_file(&self.path, self.len(), header)
                .map_err(|e| log::warn!("{e:#}; copying its tensors"))
                .ok()
        });
        let offset = self.data_start + entry.start;
        super::mapped::typed_view(whole.as_ref()?, offset, entry.bytes(), kind, &entry.shape)
    }

    /// Reads one tensor onto the CPU in its stored dtype (an owned copy).
    pub fn read(&self, name: &str) -> Result<Tensor> {
        self.with_view(name, |view| Ok(view.copy()))
    }

    /// The path and the byte range `[start, end)` of the file spanning tensors `names` (those
    /// a load will copy: not an EMA copy stored after them), for
    /// [`super::read_ahead::read_ahead_while`]; `None` when no name is stored here.
    pub fn span_of<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Option<(PathBuf, u64, u64)> {
        let spans = names
            .into_iter()
            .filter_map(|name| self.entries.get(name))
            .map(|e| (e.start, e.end));
        let (start, end) = spans.fold(None, |acc: Option<(usize, usize)>, (s, e)| match acc {
            Some((a, b)) => Some((a.min(s), b.max(e))),
            None => Some((s, e)),
        })?;
        let base = self.data_start as u64;
        Some((self.path.clone(), base + start as u64, base + end as u64))
    }

    /// Whether most of the tensor data is in the OS page cache already (`mincore`), so
    /// reading ahead would only copy it once more. (Since Linux 5.2 `mincore` reports a file
    /// the process could not write as all cached: such files are not read ahead.)
    pub fn mostly_cached(&self) -> bool {
        page_cache_fraction(&self.map[self.data_start..]) > 0.9
    }

    /// Drops the mapped pages of `[offset, offset + len)` from this process's memory; they
    /// stay in the OS page cache and come back from the file if touched again.
    fn release(&self, offset: usize, len: usize) {
        const PAGE: usize = 4096;
        let start = offset.div_ceil(PAGE) * PAGE;
        let end = (offset + len) / PAGE * PAGE;
        if end > start {
            // SAFETY: a read-only file mapping: DONTNEED only drops our copy of the pages,
            // which are re-read from the file if accessed again; no view is alive here.
            let _ = unsafe {
                self.map
                    .unchecked_advise_range(UncheckedAdvice::DontNeed, start, end - start)
            };
        }
    }
}

/// The fraction of `bytes`' pages (a file mapping) resident in memory; 0 where unknown.
#[cfg(target_os = "linux")]
fn page_cache_fraction(bytes: &[u8]) -> f64 {
    // SAFETY: sysconf reads a constant of the system.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as usize,
        _ => return 0.0,
    };
    let start = bytes.as_ptr() as usize / page * page;
    let len = bytes.as_ptr() as usize + bytes.len() - start;
    let pages = len.div_ceil(page);
    if pages == 0 {
        return 0.0;
    }
    let mut resident = vec![0u8; pages];
    // SAFETY: `[start, start + len)` lies in one live mapping (page-aligned start) and
    // `resident` has one byte per page of it, as mincore(2) requires.
    let status = unsafe { libc::mincore(start as *mut libc::c_void, len, resident.as_mut_ptr()) };
    match status {
        0 => resident.iter().filter(|&&r| r & 1 == 1).count() as f64 / pages as f64,
        _ => 0.0,
    }
}

#[cfg(not(target_os = "linux"))]
fn page_cache_fraction(_bytes: &[u8]) -> f64 {
    0.0
}

/// Validates the header of the safetensors file whose bytes are `file` (the `safetensors`
/// crate's rules: JSON, dtypes, shapes matching byte ranges, ranges in order without overlaps
/// or holes, ending at the end of the file; and no tensor listed twice, which the crate lets
/// through) and returns the data section's offset and the tensors. The error is one line
/// without the file name.
pub fn parse_header(file: &[u8]) -> Result<(usize, BTreeMap<String, TensorEntry>)> {
    // Before the crate's validation, which sees a key listed twice only as a hole.
    let header = file
        .get(..8)
        .and_then(|n| usize::try_from(u64::from_le_bytes(n.try_into().ok()?)).ok())
        .and_then(|n| file.get(8..8usize.checked_add(n)?));
    if let Some(name) = header.and_then(duplicate_key) {
        bail!("not a valid safetensors file (tensor `{name}` is listed twice in the header) — re-download it");
    }
    let (header_len, metadata) = match SafeTensors::read_metadata(file) {
        Ok(parsed) => parsed,
        Err(e) => {
            if looks_like_pickle(file) {
                bail!("this is a pickle (torch.save) file, not safetensors; pickle checkpoints are refused; convert to .safetensors");
            }
            bail!(
                "not a valid safetensors file ({}) — re-download it",
                describe(&e, file.len())
            );
        }
    };
    let entries = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| {
            let entry = TensorEntry {
                dtype: format!("{:?}", info.dtype),
                shape: info.shape.iter().map(|d| *d as i64).collect(),
                start: info.data_offsets.0,
                end: info.data_offsets.1,
            };
            (name, entry)
        })
        .collect();
    Ok((8 + header_len, entries))
}

/// The first top-level key of the JSON object `header` that appears twice.
fn duplicate_key(header: &[u8]) -> Option<String> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    struct FirstDuplicate;
    impl<'de> Visitor<'de> for FirstDuplicate {
        type Value = Option<String>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen = std::collections::HashSet::new();
            while let Some(key) = map.next_key::<String>()? {
                map.next_value::<IgnoredAny>()?;
                if !seen.insert(key.clone()) {
                    return Ok(Some(key));
                }
            }
            Ok(None)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(header);
    de.deserialize_map(FirstDuplicate).ok().flatten()
}

/// Whether `dtype` holds floating-point values, as weights must.
pub fn is_float(dtype: &str) -> bool {
    matches!(dtype, "F64" | "F32" | "F16" | "BF16") || is_fp8(dtype)
}

/// Whether `dtype` is one of the fp8 formats read (upcast to fp16 as read).
pub fn is_fp8(dtype: &str) -> bool {
    matches!(dtype, "F8_E4M3" | "F8_E5M2")
}

fn contiguous_strides(shape: &[i64]) -> Vec<i64> {
    let mut strides = vec![1i64; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    strides
}

/// The one-line reason for a header the `safetensors` crate rejects.
fn describe(e: &SafeTensorError, file_len: usize) -> String {
    match e {
        SafeTensorError::HeaderTooSmall | SafeTensorError::InvalidHeaderLength => {
            format!("truncated header: the file has {file_len} bytes")
        }
        SafeTensorError::HeaderTooLarge => {
            "its first 8 bytes are not a safetensors header length (over 100 MB)".into()
        }
        SafeTensorError::InvalidHeader(_)
        | SafeTensorError::InvalidHeaderStart
        | SafeTensorError::InvalidHeaderDeserialization(_)
        | SafeTensorError::JsonError(_) => {
            "the header is not JSON describing tensors (dtype, shape, data_offsets)".into()
        }
        SafeTensorError::InvalidOffset(name) => format!(
            "tensor `{name}` has data offsets that overlap another tensor's or leave a hole"
        ),
        SafeTensorError::TensorInvalidInfo | SafeTensorError::MisalignedSlice => {
            "a tensor's byte range does not match its dtype and shape".into()
        }
        SafeTensorError::MetadataIncompleteBuffer => {
            "truncated data: the tensors do not end where the file ends".into()
        }
        SafeTensorError::ValidationOverflow => "a tensor shape is too large".into(),
        other => format!("{other:?}"),
    }
}

/// Pickle (`.ckpt`, `.pt`, `.bin`) can run code when read, so it is never opened.
fn refuse_pickle_extension(path: &Path) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    if matches!(
        ext.as_str(),
        "ckpt" | "pt" | "pth" | "bin" | "pkl" | "pickle"
    ) {
        bail!(
            "{}: pickle checkpoints are refused; convert to .safetensors",
            path.display()
        );
    }
    Ok(())
}

/// A torch.save zip archive, or a raw pickle stream (PROTO opcode 0x80 then version 2..=5).
/// Only asked of files that are not valid safetensors: the first 8 bytes of a safetensors file
/// are its header length, whose low byte may well be 0x80.
fn looks_like_pickle(bytes: &[u8]) -> bool {
    let damaged_safetensors = bytes.len() > 8 && bytes[2..8] == [0; 6] && bytes[8] == b'{';
    bytes.starts_with(b"PK\x03\x04") || (matches!(bytes, [0x80, 2..=5, ..]) && !damaged_safetensors)
}

pub fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F64" => Kind::Double,
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "F8_E4M3" => Kind::Float8e4m3fn,
        "F8_E5M2" => Kind::Float8e5m2,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pickle_magic_is_told_from_a_safetensors_header_length() {
        assert!(looks_like_pickle(b"\x80\x02}q\x00."));
        assert!(looks_like_pickle(b"PK\x03\x04rest"));
        // Header lengths 0x80 and 0x280 followed by the JSON header.
        assert!(!looks_like_pickle(b"\x80\0\0\0\0\0\0\0{\"a\""));
        assert!(!looks_like_pickle(b"\x80\x02\0\0\0\0\0\0{\"a\""));
    }

    #[test]
    fn a_key_listed_twice_is_found() {
        let header = br#"{"a":{"dtype":"F32"},"__metadata__":{},"b":1,"a":2}"#;
        assert_eq!(duplicate_key(header).as_deref(), Some("a"));
        assert_eq!(duplicate_key(br#"{"a":1,"b":{"a":2}}"#), None);
    }

    #[test]
    fn strides_are_row_major() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<i64>::new());
    }
}
