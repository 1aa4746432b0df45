//! Reading `.safetensors` files. The header is validated before any tensor is touched, so a
//! truncated or corrupt download ends in one clear error, and tensors are read one at a
//! time so a checkpoint never sits in memory twice.
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tch::{Kind, Tensor};

/// A JSON header larger than this is not a checkpoint header (the format's own limit).
const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Where one tensor lives inside the file.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub dtype: String,
    pub shape: Vec<i64>,
    start: u64,
    end: u64,
}

/// An opened `.safetensors` file: its validated header, tensors read on demand.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    data_start: u64,
    entries: BTreeMap<String, TensorEntry>,
}

impl SafetensorsFile {
    /// Opens `path` and validates its header; pickle checkpoints are refused.
    pub fn open(path: &Path) -> Result<Self> {
        let shown = path.display();
        refuse_pickle(path)?;
        let mut file =
            File::open(path).with_context(|| format!("{shown}: cannot open the file"))?;
        let file_len = file
            .metadata()
            .with_context(|| format!("{shown}: cannot read the file size"))?
            .len();
        let truncated =
            || anyhow!("{shown}: not a valid safetensors file (truncated header) — re-download it");
        if file_len < 8 {
            return Err(truncated());
        }
        let mut len_bytes = [0u8; 8];
        file.read_exact(&mut len_bytes).map_err(|_| truncated())?;
        let header_len = u64::from_le_bytes(len_bytes);
        if header_len > MAX_HEADER_BYTES || header_len > file_len - 8 {
            return Err(truncated());
        }
        let mut header = vec![0u8; header_len as usize];
        file.read_exact(&mut header).map_err(|_| truncated())?;
        let json: serde_json::Value = serde_json::from_slice(&header).map_err(|_| {
            anyhow!(
                "{shown}: not a valid safetensors file (the header is not JSON) — re-download it"
            )
        })?;
        let data_start = 8 + header_len;
        let entries = parse_entries(&json, file_len - data_start)
            .with_context(|| format!("{shown}: not a valid safetensors file"))
            .map_err(|e| anyhow!("{e:#} — re-download it"))?;
        Ok(Self {
            path: path.to_path_buf(),
            data_start,
            entries,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn entries(&self) -> &BTreeMap<String, TensorEntry> {
        &self.entries
    }

    /// Reads one tensor onto the CPU in its stored dtype.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let shown = self.path.display();
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| anyhow!("{shown}: no tensor `{name}`"))?;
        let kind = kind_of(&entry.dtype)
            .ok_or_else(|| anyhow!("{shown}: tensor `{name}` has dtype {} which is not supported — convert the file to fp16/fp32", entry.dtype))?;
        let mut bytes = vec![0u8; (entry.end - entry.start) as usize];
        let mut file =
            File::open(&self.path).with_context(|| format!("{shown}: cannot open the file"))?;
        file.seek(SeekFrom::Start(self.data_start + entry.start))
            .and_then(|_| file.read_exact(&mut bytes))
            .with_context(|| {
                format!("{shown}: cannot read tensor `{name}` (file truncated?) — re-download it")
            })?;
        Tensor::f_from_data_size(&bytes, &entry.shape, kind)
            .with_context(|| format!("{shown}: cannot build tensor `{name}`"))
    }
}

/// Pickle (`.ckpt`, `.pt`, `.bin`) can run code when read, so it is never opened.
fn refuse_pickle(path: &Path) -> Result<()> {
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
    let mut magic = [0u8; 4];
    let is_pickle = File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .map(|_| magic == *b"PK\x03\x04" || magic[0] == 0x80)
        .unwrap_or(false);
    if is_pickle {
        bail!("{}: this is a pickle (torch.save) file; pickle checkpoints are refused; convert to .safetensors", path.display());
    }
    Ok(())
}

fn parse_entries(json: &serde_json::Value, data_len: u64) -> Result<BTreeMap<String, TensorEntry>> {
    let map = json
        .as_object()
        .ok_or_else(|| anyhow!("the header is not a JSON object"))?;
    let mut entries = BTreeMap::new();
    for (name, value) in map
        .iter()
        .filter(|(name, _)| name.as_str() != "__metadata__")
    {
        entries.insert(name.clone(), parse_entry(name, value, data_len)?);
    }
    Ok(entries)
}

fn parse_entry(name: &str, value: &serde_json::Value, data_len: u64) -> Result<TensorEntry> {
    let bad = || anyhow!("tensor `{name}` has a malformed header entry");
    let dtype = value
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(bad)?
        .to_string();
    let shape = value
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(bad)?
        .iter()
        .map(|d| d.as_i64().filter(|d| *d >= 0).ok_or_else(bad))
        .collect::<Result<Vec<i64>>>()?;
    let offsets = value
        .get("data_offsets")
        .and_then(|o| o.as_array())
        .ok_or_else(bad)?;
    let (start, end) = match offsets.as_slice() {
        [s, e] => (s.as_u64().ok_or_else(bad)?, e.as_u64().ok_or_else(bad)?),
        _ => return Err(bad()),
    };
    if end < start || end > data_len {
        bail!("truncated data (tensor `{name}` ends past the end of the file)");
    }
    if let Some(elt) = dtype_size(&dtype) {
        let numel: u64 = shape.iter().map(|d| *d as u64).product();
        if numel * elt != end - start {
            bail!(
                "tensor `{name}` has {} bytes but its shape {shape:?} needs {}",
                end - start,
                numel * elt
            );
        }
    }
    Ok(TensorEntry {
        dtype,
        shape,
        start,
        end,
    })
}

fn kind_of(dtype: &str) -> Option<Kind> {
    Some(match dtype {
        "F64" => Kind::Double,
        "F32" => Kind::Float,
        "F16" => Kind::Half,
        "BF16" => Kind::BFloat16,
        "I64" => Kind::Int64,
        "I32" => Kind::Int,
        "I16" => Kind::Int16,
        "I8" => Kind::Int8,
        "U8" => Kind::Uint8,
        "BOOL" => Kind::Bool,
        _ => return None,
    })
}

fn dtype_size(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}
