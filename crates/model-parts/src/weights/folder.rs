//! Reading a diffusers folder's components: each component's weight files (one file, its
//! fp16 variant, or shards) and its JSON configs.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

/// The weight files of one diffusers component: `{stem}.safetensors`, its `.fp16` variant,
/// or the shards its `.safetensors.index.json` lists. Pickle-only folders are refused by name.
pub fn weights_files(folder: &Path, stem: &str) -> Result<Vec<PathBuf>> {
    for name in [
        format!("{stem}.safetensors"),
        format!("{stem}.fp16.safetensors"),
    ] {
        if folder.join(&name).is_file() {
            return Ok(vec![folder.join(name)]);
        }
    }
    let index = folder.join(format!("{stem}.safetensors.index.json"));
    if let Some(json) = read_json(&index)? {
        let shards: BTreeSet<String> = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if shards.is_empty() {
            bail!(
                "{}: no weight_map — the diffusers folder is incomplete",
                index.display()
            );
        }
        return Ok(shards.into_iter().map(|s| folder.join(s)).collect());
    }
    let pickle = folder.join(format!("{stem}.bin"));
    if pickle.is_file() {
        bail!(
            "{}: pickle checkpoints are refused; convert to .safetensors",
            pickle.display()
        );
    }
    bail!(
        "{}: no {stem}.safetensors — the diffusers folder is incomplete",
        folder.display()
    )
}

/// A JSON file, or `None` where there is none.
pub fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("{}: cannot read", path.display()))?;
    let value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{}: not valid JSON ({e}) — re-download it", path.display()))?;
    Ok(Some(value))
}
