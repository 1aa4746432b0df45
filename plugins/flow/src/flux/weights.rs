//! Named tensors to load the transformer from: one `.safetensors` file or a diffusers
//! `*.safetensors.index.json` and its shards, memory-mapped, tensors copied out on request.
//!
//! Interim reader until the shared `model-parts` crate (memory-mapped, fp8) lands: nothing else
//! in `flux/` reads files, so replacing [`open_weights`] and [`Weights`] swaps it.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};
use tch::{Kind, Tensor};

#[derive(Debug)]
struct Entry {
    file: usize,
    kind: Kind,
    shape: Vec<i64>,
    start: usize,
    end: usize,
}

/// The tensors of one file or of a sharded set, by name.
#[derive(Debug)]
pub struct Weights {
    path: PathBuf,
    maps: Vec<(Mmap, usize)>,
    entries: BTreeMap<String, Entry>,
}

/// Opens `path`: a `.safetensors` file or a `.safetensors.index.json` (its `weight_map`'s files).
pub fn open_weights(path: &Path) -> Result<Weights> {
    let shown = path.display();
    let files = if path.to_string_lossy().ends_with(".json") {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("{shown}: cannot read"))?;
        let json: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("{shown}: not JSON"))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| anyhow!("{shown}: no `weight_map`"))?;
        let mut names: Vec<&str> = map.values().filter_map(|v| v.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        let dir = path.parent().unwrap_or(Path::new("."));
        names.iter().map(|n| dir.join(n)).collect()
    } else {
        vec![path.to_path_buf()]
    };
    let mut weights = Weights {
        path: path.to_path_buf(),
        maps: Vec::new(),
        entries: BTreeMap::new(),
    };
    for file in files {
        weights.add(&file)?;
    }
    Ok(weights)
}

impl Weights {
    fn add(&mut self, path: &Path) -> Result<()> {
        let shown = path.display();
        let f = std::fs::File::open(path).with_context(|| format!("{shown}: cannot read"))?;
        // SAFETY: read-only map of a weight file nobody writes while we load.
        let map = unsafe { Mmap::map(&f) }.with_context(|| format!("{shown}: cannot map"))?;
        let (header, metadata) = SafeTensors::read_metadata(&map)
            .map_err(|e| anyhow!("{shown}: not a valid .safetensors file ({e})"))?;
        SafeTensors::deserialize(&map)
            .map_err(|e| anyhow!("{shown}: damaged .safetensors file ({e})"))?;
        let file = self.maps.len();
        for (name, info) in metadata.tensors() {
            let kind = match info.dtype {
                Dtype::F32 => Kind::Float,
                Dtype::F16 => Kind::Half,
                Dtype::BF16 => Kind::BFloat16,
                other => bail!(
                    "{shown}: tensor `{name}` is {other:?}; Flux loads F32, F16 and BF16 files \
                     (fp8 not yet)"
                ),
            };
            let entry = Entry {
                file,
                kind,
                shape: info.shape.iter().map(|d| *d as i64).collect(),
                start: info.data_offsets.0,
                end: info.data_offsets.1,
            };
            self.entries.insert(name, entry);
        }
        self.maps.push((map, 8 + header));
        Ok(())
    }

    /// What errors name (the path opened).
    pub fn describe(&self) -> String {
        self.path.display().to_string()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(|s| s.as_str())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<Vec<i64>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    /// The tensor `name` (CPU, stored dtype); a missing one is an error naming it.
    pub fn read(&self, name: &str) -> Result<Tensor> {
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| anyhow!("{}: missing tensor `{name}`", self.describe()))?;
        let (map, start) = &self.maps[e.file];
        let data = &map[start + e.start..start + e.end];
        Tensor::f_from_data_size(data, &e.shape, e.kind)
            .with_context(|| format!("{}: cannot read tensor `{name}`", self.describe()))
    }
}
