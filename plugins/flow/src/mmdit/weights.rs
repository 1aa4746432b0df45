//! Named tensors to load the transformer from: a `.safetensors` file, a diffusers folder's
//! (possibly sharded) weights, or anything else implementing [`TensorSource`] (the benchmark's
//! generated weights).
//!
//! Interim reader: the whole file is read into memory and tensors are copied out of it on
//! request. The shared `model-parts` crate (memory-mapped, zero-copy, fp8) replaces
//! [`open_safetensors`] when it lands; nothing else here reads files.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

/// Named tensors, read one at a time (CPU, stored dtype).
pub trait TensorSource {
    /// What to name in errors (a path).
    fn describe(&self) -> String;
    fn names(&self) -> Vec<String>;
    fn shape(&self, name: &str) -> Option<Vec<i64>>;
    fn read(&self, name: &str) -> Result<Tensor>;
}

/// Where a tensor lies in the data section, and how it is stored.
#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

/// One `.safetensors` file, held in memory.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    bytes: Vec<u8>,
    data_start: usize,
    entries: BTreeMap<String, Entry>,
}

/// Opens `path` (the one function that reads a weight file; see the module docs).
pub fn open_safetensors(path: &Path) -> Result<SafetensorsFile> {
    let shown = path.display();
    let bytes = std::fs::read(path).with_context(|| format!("{shown}: cannot read"))?;
    let (header, metadata) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{shown}: not a valid .safetensors file ({e})"))?;
    // Validates that every tensor's bytes lie inside the file.
    SafeTensors::deserialize(&bytes)
        .map_err(|e| anyhow!("{shown}: damaged .safetensors file ({e})"))?;
    let mut entries = BTreeMap::new();
    for (name, info) in metadata.tensors() {
        let kind = match info.dtype {
            Dtype::F32 => Kind::Float,
            Dtype::F16 => Kind::Half,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F64 => Kind::Double,
            other => {
                bail!("{shown}: tensor `{name}` is {other:?}; only F32, F16, BF16 and F64 load")
            }
        };
        let entry = Entry {
            kind,
            shape: info.shape.iter().map(|d| *d as i64).collect(),
            start: info.data_offsets.0,
            end: info.data_offsets.1,
        };
        entries.insert(name, entry);
    }
    Ok(SafetensorsFile {
        path: path.to_path_buf(),
        bytes,
        data_start: 8 + header,
        entries,
    })
}

impl TensorSource for SafetensorsFile {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn read(&self, name: &str) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor `{name}`", self.describe()))?;
        let data = &self.bytes[self.data_start + e.start..self.data_start + e.end];
        Tensor::f_from_data_size(data, &e.shape, e.kind)
            .with_context(|| format!("{}: cannot read tensor `{name}`", self.describe()))
    }
}

/// Several files read as one (a sharded diffusers model: `*.safetensors.index.json`).
#[derive(Debug)]
pub struct Shards {
    index: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Tensor name → file.
    owner: BTreeMap<String, usize>,
}

impl Shards {
    /// Opens every file `index` (a diffusers / transformers `weight_map`) names.
    pub fn open(index: &Path) -> Result<Shards> {
        let shown = index.display();
        let text =
            std::fs::read_to_string(index).with_context(|| format!("{shown}: cannot read"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{shown}: not JSON"))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{shown}: no `weight_map`"))?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let mut file_names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        file_names.sort_unstable();
        file_names.dedup();
        let files = file_names
            .iter()
            .map(|f| open_safetensors(&dir.join(f)))
            .collect::<Result<Vec<_>>>()?;
        let mut owner = BTreeMap::new();
        for (i, file) in files.iter().enumerate() {
            for name in file.entries.keys() {
                owner.insert(name.clone(), i);
            }
        }
        Ok(Shards {
            index: index.to_path_buf(),
            files,
            owner,
        })
    }
}

impl TensorSource for Shards {
    fn describe(&self) -> String {
        self.index.display().to_string()
    }

    fn names(&self) -> Vec<String> {
        self.owner.keys().cloned().collect()
    }

    fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.files[*self.owner.get(name)?].shape(name)
    }

    fn read(&self, name: &str) -> Result<Tensor> {
        match self.owner.get(name) {
            Some(i) => self.files[*i].read(name),
            None => bail!("{}: missing tensor `{name}`", self.describe()),
        }
    }
}
