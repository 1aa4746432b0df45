//! Each pass's LoRA set: the profile's `loras` (the pass's own list, else `[model] loras`) and
//! the `<lora:name:w>` tags of the pass's prompt, resolved to files by stem in `lora_dirs` and
//! `$HIRESFIX_LORA_PATH` (searched below each folder, as A1111's `models/Lora`).
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use host_api::prompt::extract_tags;

use crate::defaults;
use crate::errors::{echo, num};
use crate::limits::MAX_LORAS;
use crate::profile::{resolve_path, Pass, Profile};

/// How deep below a LoRA folder files are looked for.
const SEARCH_DEPTH: usize = 4;

/// One LoRA of a pass, resolved to its file.
#[derive(Debug, Clone, PartialEq)]
pub struct ResolvedLora {
    /// The tag's name or the file's stem.
    pub name: String,
    pub path: PathBuf,
    pub te: f64,
    pub unet: f64,
    /// Written as a `<lora:…>` tag in the prompt (else listed in the profile).
    pub from_tag: bool,
}

impl ResolvedLora {
    pub fn spec(&self) -> host_api::LoraSpec {
        host_api::LoraSpec {
            path: self.path.to_string_lossy().as_ref().into(),
            name: self.name.as_str().into(),
            te: self.te,
            unet: self.unet,
        }
    }

    /// The A1111 tag that stands for this LoRA.
    pub fn tag(&self) -> String {
        let w = crate::infotext::num;
        match self.te == self.unet {
            true => format!("<lora:{}:{}>", self.name, w(self.te)),
            false => format!("<lora:{}:{}:{}>", self.name, w(self.te), w(self.unet)),
        }
    }
}

/// The folders tags are looked up in: the profile's `lora_dirs` (relative to the profile),
/// then `$HIRESFIX_LORA_PATH`.
pub fn lora_dirs(profile: &Profile, base_dir: &Path) -> Vec<PathBuf> {
    crate::registry::profile_dirs(&profile.lora_dirs, base_dir, "HIRESFIX_LORA_PATH")
}

/// Pass `number`'s LoRA set: its profile list, then its prompt's tags.
pub fn pass_loras(
    profile: &Profile,
    pass: &Pass,
    number: usize,
    prompt: &str,
    base_dir: &Path,
) -> Result<Vec<ResolvedLora>> {
    let mut set = Vec::new();
    for entry in pass.loras.as_ref().unwrap_or(&profile.model.loras) {
        let path = resolve_path(base_dir, &entry.path);
        if !path.is_file() {
            bail!(
                "pass {number}: LoRA {} not found — check `loras` in the profile",
                path.display()
            );
        }
        set.push(ResolvedLora {
            name: stem(&path),
            path,
            te: entry.weight,
            unet: entry.weight,
            from_tag: false,
        });
    }
    let tags = extract_tags(prompt).map_err(|e| anyhow!("pass {number}: {e}"))?;
    if let Some(other) = tags.others.first() {
        bail!(
            "pass {number}: prompt tag {} is not supported (only <lora:…>) — remove it",
            echo(other)
        );
    }
    let count = set.len() + tags.loras.len();
    if count > MAX_LORAS {
        bail!(
            "pass {number}: {count} LoRAs (at most {MAX_LORAS}) — merge some into the checkpoint"
        );
    }
    for tag in &tags.loras {
        for w in [tag.te, tag.unet] {
            defaults::weight(w).map_err(|what| {
                anyhow!(
                    "pass {number}: {}: weight {}: {what}",
                    echo(&tag.text),
                    num(w)
                )
            })?;
        }
    }
    let dirs = lora_dirs(profile, base_dir);
    for tag in tags.loras {
        let path = find_by_stem(&dirs, &tag.name).ok_or_else(|| {
            let searched = match dirs.is_empty() {
                true => "no lora_dirs set — add lora_dirs = [\"folder\"] to the profile".to_owned(),
                false => format!(
                    "searched {}",
                    dirs.iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            anyhow!(
                "pass {number}: {}: no LoRA file {}.safetensors ({searched})",
                echo(&tag.text),
                echo(&tag.name)
            )
        })?;
        set.push(ResolvedLora {
            name: tag.name,
            path,
            te: tag.te,
            unet: tag.unet,
            from_tag: true,
        });
    }
    Ok(set)
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The first `.safetensors` file whose stem is `name` below any of `dirs` (or `name` itself as
/// a path below one of them, for `<lora:sub/name>`).
fn find_by_stem(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().find_map(|dir| {
        let direct = dir.join(format!("{name}.safetensors"));
        if direct.is_file() {
            return Some(direct);
        }
        search(dir, name, SEARCH_DEPTH)
    })
}

fn search(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    let is_match = |p: &Path| {
        p.is_file()
            && p.extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
            && p.file_stem().is_some_and(|s| s.to_string_lossy() == name)
    };
    if let Some(found) = entries.iter().find(|p| is_match(p)) {
        return Some(found.clone());
    }
    if depth == 0 {
        return None;
    }
    entries
        .iter()
        .filter(|p| p.is_dir())
        .find_map(|p| search(p, name, depth - 1))
}

/// A1111's LoRA hash ("addnet" hash of safetensors files): the sha256 of the file after its
/// header, first 12 hex digits — what `Lora hashes:` in infotext and Civitai carry.
pub fn short_hash(path: &Path) -> Result<String> {
    let hex = crate::hash_cache::cached("lora", path, data_sha256)?;
    Ok(hex.get(..12).unwrap_or(&hex).to_owned())
}

/// The sha256 of a safetensors file's data (what follows its header).
fn data_sha256(path: &Path) -> Result<String> {
    use sha2::Digest;
    use std::io::{Read, Seek, SeekFrom};
    let mut file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    file.seek(SeekFrom::Start(8 + u64::from_le_bytes(len)))
        .with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    let hex: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(hex)
}
