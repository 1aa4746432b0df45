//! Each shard's manifest (JSON lines appended as jobs end: job id, output, seed, seconds,
//! status, error) and `--report`, which merges every manifest in an output folder.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Record {
    pub job: String,
    /// The image's file in the output folder (the first, for a batch of several).
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub seconds: f64,
    /// `done`, `skipped` (its output was there and verified) or `failed`.
    pub status: String,
    #[serde(default)]
    pub error: Option<String>,
    /// The overrides that make the job.
    #[serde(default)]
    pub sets: Vec<String>,
}

impl Record {
    pub fn succeeded(&self) -> bool {
        self.status == "done" || self.status == "skipped"
    }
}

/// A manifest being appended to: each record is one line, written and flushed at once.
pub struct Manifest {
    file: std::fs::File,
    pub path: PathBuf,
}

impl Manifest {
    pub fn open(dir: &Path, name: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create output folder {}", dir.display()))?;
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot write the manifest {}", path.display()))?;
        // A shard killed mid-line left a partial last line: end it, so the next record is a
        // line of its own (the partial one is skipped when read).
        let cut = std::fs::read(&path).is_ok_and(|b| b.last().is_some_and(|c| *c != b'\n'));
        if cut {
            file.write_all(b"\n")
                .with_context(|| format!("cannot write the manifest {}", path.display()))?;
        }
        Ok(Self { file, path })
    }

    pub fn append(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.sync_data())
            .with_context(|| format!("cannot write the manifest {}", self.path.display()))
    }
}

/// Every record of every `manifest-*.jsonl` in `dir`; a line cut short by a killed shard is
/// skipped.
pub fn read_all(dir: &Path) -> Result<Vec<Record>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            name.starts_with("manifest-") && name.ends_with(".jsonl")
        })
        .collect();
    files.sort();
    let mut records = Vec::new();
    for file in files {
        let bytes =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        // Lossy: a line cut inside a character must not hide the others.
        let text = String::from_utf8_lossy(&bytes);
        records.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Record>(l).ok()),
        );
    }
    Ok(records)
}

/// One record per job: its success if it ever succeeded (the run that made the image, else
/// the rerun that verified it), else its last failure.
pub fn merge(records: Vec<Record>) -> BTreeMap<String, Record> {
    let mut merged: BTreeMap<String, Record> = BTreeMap::new();
    for record in records {
        match merged.get(&record.job) {
            Some(kept) if kept.status == "done" => {}
            Some(kept) if kept.succeeded() && !record.succeeded() => {}
            _ => {
                merged.insert(record.job.clone(), record);
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(job: &str, status: &str) -> Record {
        Record {
            job: job.into(),
            output: None,
            outputs: Vec::new(),
            seed: None,
            seconds: 0.0,
            status: status.into(),
            error: None,
            sets: Vec::new(),
        }
    }

    #[test]
    fn a_success_outranks_failures_and_verified_reruns() {
        let merged = merge(vec![
            record("a", "failed"),
            record("a", "done"),
            record("a", "skipped"),
            record("b", "skipped"),
            record("b", "failed"),
            record("c", "failed"),
        ]);
        assert_eq!(merged["a"].status, "done");
        assert_eq!(merged["b"].status, "skipped");
        assert_eq!(merged["c"].status, "failed");
    }
}
