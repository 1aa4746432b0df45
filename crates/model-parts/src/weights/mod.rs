//! A model's weights seen through its own keys, whatever files hold them: each model key
//! points at a tensor stored in one of the `.safetensors` files read, with a transform
//! (OpenCLIP's fused q/k/v, a transposed projection). A backend fills this map from its
//! layouts (single file, diffusers folder, split files) and then reads tensors by model key or
//! fills a whole `VarStore` ([`Weights::copy_into`], zero copy where it can).
pub mod folder;
pub mod mapped;
mod read_ahead;
pub mod safetensors;
mod tensors;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use crate::health;
use safetensors::SafetensorsFile;

/// How a stored tensor becomes the model's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    AsIs,
    /// Part `index` of `of` equal slices along dim 0 (OpenCLIP's fused q/k/v).
    Chunk {
        index: i64,
        of: i64,
    },
    /// Rows and columns swapped (OpenCLIP's `text_projection` is `x @ P`, a Linear is `x Pᵀ`).
    Transpose,
}

impl Transform {
    /// The shape after the transform.
    pub fn shape(self, stored: &[i64]) -> Vec<i64> {
        let mut shape = stored.to_vec();
        match self {
            Transform::AsIs => {}
            Transform::Chunk { of, .. } => {
                if let Some(first) = shape.first_mut() {
                    *first /= of;
                }
            }
            Transform::Transpose => shape.reverse(),
        }
        shape
    }

    pub fn apply(self, t: &tch::Tensor) -> tch::Tensor {
        match self {
            Transform::AsIs => t.shallow_clone(),
            Transform::Chunk { index, of } => {
                let part = t.size()[0] / of;
                t.narrow(0, index * part, part)
            }
            Transform::Transpose => t.tr(),
        }
    }
}

/// The distinct integers `i` of keys `prefix{i}.…`, sorted.
pub fn indices_under<'a>(keys: impl IntoIterator<Item = &'a str>, prefix: &str) -> BTreeSet<usize> {
    keys.into_iter()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect()
}

/// Where a model tensor comes from: a stored tensor (`name` in file `file`), transformed.
#[derive(Debug, Clone)]
pub struct Source {
    pub file: usize,
    pub name: String,
    pub transform: Transform,
}

/// The files read and, per model key, where its tensor is stored.
pub struct Weights {
    /// What the user named (a file or a folder), for messages.
    path: PathBuf,
    files: Vec<SafetensorsFile>,
    /// Model key → where it is stored.
    tensors: BTreeMap<String, Source>,
}

impl Weights {
    /// No files yet; `path` is what messages name.
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.into(),
            files: Vec::new(),
            tensors: BTreeMap::new(),
        }
    }

    /// Adds every tensor of `file` that `rename` gives a model key; returns the file's index.
    pub fn add_file(
        &mut self,
        file: SafetensorsFile,
        rename: impl Fn(&str) -> Option<String>,
    ) -> usize {
        let index = self.files.len();
        for key in file.entries().keys() {
            if let Some(model_key) = rename(key) {
                let source = Source {
                    file: index,
                    name: key.clone(),
                    transform: Transform::AsIs,
                };
                self.tensors.insert(model_key, source);
            }
        }
        self.files.push(file);
        index
    }

    /// Puts the stored tensor `source` under model key `key` (replacing what was there).
    pub fn insert(&mut self, key: String, source: Source) {
        self.tensors.insert(key, source);
    }

    /// Takes model key `key` out.
    pub fn remove(&mut self, key: &str) -> Option<Source> {
        self.tensors.remove(key)
    }

    /// Keeps the model keys for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.tensors.retain(|k, _| keep(k));
    }

    /// Model keys and where each is stored, in key order.
    pub fn sources(&self) -> impl Iterator<Item = (&str, &Source)> {
        self.tensors.iter().map(|(k, s)| (k.as_str(), s))
    }

    /// The files read, in the order added (a [`Source::file`] indexes them).
    pub fn files(&self) -> &[SafetensorsFile] {
        &self.files
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Model keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> + Clone {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    pub fn has_prefix(&self, prefix: &str) -> bool {
        self.tensors
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix))
    }

    /// The shape of a model tensor (after its transform).
    pub fn shape(&self, key: &str) -> Option<Vec<i64>> {
        let source = self.tensors.get(key)?;
        let stored = &self.files[source.file].entries()[&source.name].shape;
        Some(source.transform.shape(stored))
    }

    /// The shape of a tensor the model cannot do without.
    pub fn require_shape(&self, key: &str) -> Result<Vec<i64>> {
        self.shape(key).ok_or_else(|| {
            anyhow!(
                "{}: missing tensor `{key}` — the checkpoint is incomplete or not of this family",
                self.path.display()
            )
        })
    }

    /// The distinct `i` of model keys `prefix{i}.…`, counted.
    pub fn count_indexed(&self, prefix: &str) -> usize {
        indices_under(self.keys(), prefix).len()
    }

    /// Parameters under `prefix`, counted from shapes.
    pub fn parameters_under(&self, prefix: &str) -> u64 {
        self.tensors
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, _)| self.shape(k))
            .map(|s| s.iter().product::<i64>().max(0) as u64)
            .sum()
    }

    /// The stored dtypes of the model keys `counted` accepts, with the parameters each
    /// holds, most first.
    pub fn dtype_parameters(&self, counted: impl Fn(&str) -> bool) -> Vec<(&str, u64)> {
        let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
        for (_, source) in self.tensors.iter().filter(|(k, _)| counted(k)) {
            let entry = &self.files[source.file].entries()[&source.name];
            let numel = entry.shape.iter().product::<i64>().max(0) as u64;
            *counts.entry(entry.dtype.as_str()).or_default() += numel;
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        counts
    }

    /// The dtype most of the parameters `counted` accepts are stored in (`F16`, `F8_E4M3`,
    /// ...), followed by the share of the parameters it holds when floating tensors of
    /// another dtype sit beside it: `F8_E4M3 (96% of the parameters; the rest F32)` (fp8
    /// files often keep norms and biases wide).
    pub fn dtype_summary(&self, counted: impl Fn(&str) -> bool) -> String {
        let all = self.dtype_parameters(counted);
        let floats: Vec<_> = all
            .iter()
            .filter(|(d, _)| safetensors::is_float(d))
            .collect();
        let total: u64 = floats.iter().map(|(_, n)| n).sum();
        match floats.as_slice() {
            [(main, n), rest @ ..] if !rest.is_empty() && total > 0 => {
                let others: Vec<&str> = rest.iter().map(|(d, _)| *d).collect();
                let share = match 100.0 * *n as f64 / total as f64 {
                    s if s > 99.5 => ">99".to_string(),
                    s => format!("{s:.0}"),
                };
                format!(
                    "{main} ({share}% of the parameters; the rest {})",
                    others.join(", ")
                )
            }
            _ => all.first().map(|(d, _)| d.to_string()).unwrap_or_default(),
        }
    }

    /// Bytes on disk of every file read.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(SafetensorsFile::len).sum()
    }
}

/// A merge for messages: `a.safetensors:0.5 + b.safetensors:0.5` (each name cut to 60
/// characters).
pub fn describe_merge(sources: &[(&Path, f64)]) -> String {
    sources
        .iter()
        .map(|(path, weight)| {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let name = match name.char_indices().nth(60) {
                Some((end, _)) => format!("{}…", &name[..end]),
                None => name,
            };
            format!("{name}:{}", health::number(*weight))
        })
        .collect::<Vec<_>>()
        .join(" + ")
}
