//! File hashes kept between runs, as A1111's `cache.json` keeps them: hashing a 2–7 GB
//! checkpoint takes seconds to minutes, so each hash is stored with the file's size and
//! modification time and reused while both are unchanged. The cache lives in
//! `$HIRESFIX_CACHE_DIR`, else the user's cache folder (`~/.cache/hiresfix` on Linux), as
//! `hashes.json`; a cache that cannot be read or written only costs the hashing again.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One hashed file, as stored.
#[derive(Serialize, Deserialize, Clone, PartialEq, Debug)]
struct Entry {
    size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    mtime_ns: u128,
    sha256: String,
}

/// `kind` → canonical path → entry (kinds: `sha256` of the whole file, `lora` of a
/// safetensors file's data after its header).
type Table = BTreeMap<String, BTreeMap<String, Entry>>;

pub fn cache_file() -> Option<PathBuf> {
    let dir = match std::env::var_os("HIRESFIX_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => dirs::cache_dir()?.join("hiresfix"),
    };
    Some(dir.join("hashes.json"))
}

/// What identifies a file's version: size, modification time (ns) and canonical path.
fn stamp(path: &Path) -> Result<(u64, u128, String)> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    let key = std::fs::canonicalize(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .to_string_lossy()
        .into_owned();
    Ok((meta.len(), mtime_ns, key))
}

/// The stored hash of `path`'s current version, if one is stored (nothing is computed).
pub fn peek(kind: &str, path: &Path) -> Option<String> {
    let (size, mtime_ns, key) = stamp(path).ok()?;
    let table = read(&cache_file()?)?;
    let entry = table.get(kind)?.get(&key)?;
    (entry.size == size && entry.mtime_ns == mtime_ns && mtime_ns != 0)
        .then(|| entry.sha256.clone())
}

/// `compute(path)`'s result for `path`, from the cache when the file's size and modification
/// time are those stored with it.
pub fn cached(
    kind: &str,
    path: &Path,
    compute: impl FnOnce(&Path) -> Result<String>,
) -> Result<String> {
    let (size, mtime_ns, key) = stamp(path)?;
    let file = cache_file();
    let mut table: Table = file.as_deref().and_then(read).unwrap_or_default();
    if let Some(entry) = table.get(kind).and_then(|t| t.get(&key)) {
        if entry.size == size && entry.mtime_ns == mtime_ns && mtime_ns != 0 {
            return Ok(entry.sha256.clone());
        }
    }
    let sha256 = compute(path)?;
    let entry = Entry {
        size,
        mtime_ns,
        sha256: sha256.clone(),
    };
    table.entry(kind.to_owned()).or_default().insert(key, entry);
    if let Some(file) = file {
        if let Err(e) = write(&file, &table) {
            log::warn!("hash cache {} not written: {e}", file.display());
        }
    }
    Ok(sha256)
}

fn read(file: &Path) -> Option<Table> {
    serde_json::from_slice(&std::fs::read(file).ok()?).ok()
}

/// Written to a temporary file and renamed over the old one: a reader never sees half a file.
fn write(file: &Path, table: &Table) -> Result<()> {
    let dir = file.parent().context("cache file without a folder")?;
    std::fs::create_dir_all(dir)?;
    // Unique per write: two threads of one process (a server hashing its models while a job
    // hashes its checkpoint) never share a temporary file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp = dir.join(format!(".hashes.{}.{n}.tmp", std::process::id()));
    std::fs::write(&temp, serde_json::to_vec_pretty(table)?)?;
    std::fs::rename(&temp, file)?;
    Ok(())
}
