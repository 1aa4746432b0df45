//! What the server offers: the checkpoints directly in `--models` (each `.safetensors` file
//! a backend reads, and each diffusers folder), named by stem, and the LoRA files below
//! `--loras`. Clients name a checkpoint by A1111's title (`name.safetensors [hash]`), its
//! file name, stem or short hash.
use std::path::{Path, PathBuf};

use hiresfix_engine::models::detect_backend;
use hiresfix_engine::registry::Registry;

#[derive(Clone, Debug)]
pub struct Checkpoint {
    /// The stem (`sd_xl_base_1.0`), or a diffusers folder's name.
    pub name: String,
    /// The file or folder name as A1111 shows it (`sd_xl_base_1.0.safetensors`).
    pub filename: String,
    pub path: PathBuf,
    pub family: String,
}

/// One hashing at a time (the hash cache is rewritten whole after each).
static HASHING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Computes (and caches) the sha256 of every checkpoint file not hashed yet, so each is
/// listed with its `[hash]` as A1111 lists it (clients match titles; webuiapi's closest-title
/// match picks the wrong model without it). Slow once per file version (it reads the file).
pub fn hash_all(checkpoints: &[Checkpoint]) {
    for c in checkpoints {
        if c.path.is_file() && c.short_hash().is_none() {
            let _one = HASHING.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = hiresfix_engine::hash_cache::cached(
                "sha256",
                &c.path,
                hiresfix_engine::registry::sha256_hex,
            ) {
                log::warn!("{}: not hashed: {e}", c.path.display());
            }
        }
    }
}

impl Checkpoint {
    /// A1111's short hash (10 hex digits of the file's sha256), if already computed.
    pub fn short_hash(&self) -> Option<String> {
        hiresfix_engine::hash_cache::peek("sha256", &self.path)
            .map(|h| h[..10.min(h.len())].to_owned())
    }

    /// A1111's title: `file.safetensors [hash]` once the hash is known.
    pub fn title(&self) -> String {
        match self.short_hash() {
            Some(hash) => format!("{} [{hash}]", self.filename),
            None => self.filename.clone(),
        }
    }

    /// Whether a client's `sd_model_checkpoint` (or `hr_checkpoint_name`) names this one.
    pub fn answers_to(&self, wanted: &str) -> bool {
        let wanted = wanted.trim();
        // "name.safetensors [0123456789]": the part before the hash.
        let (base, hash) = match wanted.rsplit_once(" [") {
            Some((base, rest)) if rest.ends_with(']') => {
                (base.trim(), Some(&rest[..rest.len() - 1]))
            }
            _ => (wanted, None),
        };
        let by_name = [self.name.as_str(), self.filename.as_str()]
            .iter()
            .any(|n| n.eq_ignore_ascii_case(base));
        let by_hash = || {
            let h = hash.unwrap_or(wanted).to_lowercase();
            h.len() >= 8 && self.short_hash().is_some_and(|s| s.starts_with(&h))
        };
        by_name || by_hash()
    }
}

/// The checkpoints directly in `dir`, sorted by name, and a line for each file refused.
pub fn scan_models(dir: &Path, registry: &Registry) -> (Vec<Checkpoint>, Vec<String>) {
    let mut found = Vec::new();
    let mut refused = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (found, vec![format!("{} cannot be read", dir.display())]);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let filename = entry.file_name().to_string_lossy().into_owned();
        let candidate = match path.is_dir() {
            true => path.join("model_index.json").is_file(),
            false => path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors")),
        };
        if !candidate {
            continue;
        }
        match detect_backend(registry, &path) {
            Ok(backend) => found.push(Checkpoint {
                name: match path.is_dir() {
                    true => filename.clone(),
                    false => stem(&path),
                },
                filename,
                family: backend.decl.family.to_string(),
                path,
            }),
            Err(e) => refused.push(format!("{}: {e}", path.display())),
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    (found, refused)
}

/// The first checkpoint answering to `wanted`.
pub fn find<'a>(checkpoints: &'a [Checkpoint], wanted: &str) -> Option<&'a Checkpoint> {
    checkpoints.iter().find(|c| c.answers_to(wanted))
}

/// The names clients may send, for an error message.
pub fn names(checkpoints: &[Checkpoint]) -> String {
    match checkpoints.is_empty() {
        true => "none".into(),
        false => checkpoints
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// A LoRA file: its tag name (stem) and path.
#[derive(Clone, Debug)]
pub struct Lora {
    pub name: String,
    pub path: PathBuf,
}

/// The `.safetensors` files below `dir` (4 folders deep, as `<lora:>` tags are looked up).
pub fn scan_loras(dir: &Path) -> Vec<Lora> {
    let mut found = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((folder, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() && depth < 4 {
                stack.push((path, depth + 1));
            } else if path
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
            {
                found.push(Lora {
                    name: stem(&path),
                    path,
                });
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}
