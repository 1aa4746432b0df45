//! Textual-inversion embedding files, as A1111 finds them: every `.safetensors` (and `.pt` /
//! `.bin`, which the backend refuses with the conversion to run) below the profile's
//! `embedding_dirs`, then `$HIRESFIX_EMBEDDING_PATH`, named by file stem (the first found
//! wins). The backend reads them (their layout is its family's); the host lists them, warns
//! about a prompt naming a skipped one, and writes A1111's `TI hashes`.
use std::path::{Path, PathBuf};

use anyhow::Result;
use host_api::{EmbeddingSpec, EmbeddingState};

use crate::profile::Profile;

/// How deep below an embedding folder files are looked for.
const SEARCH_DEPTH: usize = 4;
/// File extensions of embeddings (A1111 also reads `.pt` / `.bin` pickles and images).
const EXTENSIONS: [&str; 3] = ["safetensors", "pt", "bin"];

/// The folders embeddings are found in: the profile's `embedding_dirs` (relative to the
/// profile), then `$HIRESFIX_EMBEDDING_PATH`.
pub fn dirs(profile: &Profile, base_dir: &Path) -> Vec<PathBuf> {
    crate::registry::profile_dirs(&profile.embedding_dirs, base_dir, "HIRESFIX_EMBEDDING_PATH")
}

/// The embedding files of a profile's folders; a folder the profile names that is not there is
/// an error (its embeddings' names would silently be read as text).
pub fn profile_files(profile: &Profile, base_dir: &Path) -> Result<Vec<EmbeddingSpec>> {
    let dirs = dirs(profile, base_dir);
    for dir in dirs.iter().take(profile.embedding_dirs.len()) {
        if !dir.is_dir() {
            anyhow::bail!(
                "embedding_dirs: folder {} not found — check embedding_dirs in the profile",
                dir.display()
            );
        }
    }
    Ok(files(&dirs))
}

/// Every embedding file below `dirs`, by name (stem), the first of a name only.
pub fn files(dirs: &[PathBuf]) -> Vec<EmbeddingSpec> {
    let mut found: Vec<EmbeddingSpec> = Vec::new();
    for dir in dirs {
        walk(dir, SEARCH_DEPTH, &mut found);
    }
    found
}

fn walk(dir: &Path, depth: usize, found: &mut Vec<EmbeddingSpec>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    // By name, a `.safetensors` before a pickle of the same name (`hiresfix convert`'s output
    // beside its input).
    paths.sort_by_key(|p| {
        let pickle = !p
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
        (p.file_stem().map(|s| s.to_os_string()), pickle, p.clone())
    });
    for path in &paths {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let is_embedding = ext.is_some_and(|e| EXTENSIONS.contains(&e.as_str()));
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if path.is_file() && is_embedding && !found.iter().any(|f| f.name.as_str() == name) {
            found.push(EmbeddingSpec {
                name: name.as_str().into(),
                path: path.to_string_lossy().as_ref().into(),
            });
        }
    }
    if depth > 0 {
        for path in paths.iter().filter(|p| p.is_dir()) {
            walk(path, depth - 1, found);
        }
    }
}

/// A1111's embedding hash (`hashes.sha256(filename, "textual_inversion/" + name)`, shown as
/// `shorthash`): the sha256 of the whole file, first 12 hex digits.
pub fn short_hash(path: &Path) -> Result<String> {
    let hex = crate::hash_cache::cached("sha256", path, crate::registry::sha256_hex)?;
    Ok(hex.get(..12).unwrap_or(&hex).to_owned())
}

/// A1111's `TI hashes` value: `name: hash` of every embedding `used` names (A1111 drops `:`
/// and `,` from a name), each once.
pub fn ti_hashes(used: &[EmbeddingSpec]) -> Option<String> {
    let parts: Vec<String> = used
        .iter()
        .map(|e| {
            let hash = short_hash(Path::new(e.path.as_str())).unwrap_or_else(|_| "unknown".into());
            let name = e.name.as_str().replace([':', ','], "");
            format!("{name}: {hash}")
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The warning for a prompt naming the skipped embedding `state` (one line, naming the file).
pub fn skipped_warning(state: &EmbeddingState) -> String {
    format!(
        "embedding `{}` in the prompt is not used (its words are read as text): {}",
        state.name, state.note
    )
}

/// `TI hashes: "a: h1, b: h2"` → `[("a", "h1"), ("b", "h2")]`.
pub fn parse_ti_hashes(value: &str) -> Vec<(String, String)> {
    value
        .split(',')
        .filter_map(|part| {
            let (name, hash) = part.rsplit_once(':')?;
            let (name, hash) = (name.trim(), hash.trim());
            (!name.is_empty() && !hash.is_empty()).then(|| (name.to_owned(), hash.to_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_found_below_each_folder_by_stem_the_first_winning() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        std::fs::create_dir(a.path().join("neg")).unwrap();
        for p in [
            a.path().join("neg/EasyNegative.safetensors"),
            a.path().join("style.pt"),
            a.path().join("style.safetensors"),
            a.path().join("notes.txt"),
            b.path().join("EasyNegative.safetensors"),
            b.path().join("other.safetensors"),
        ] {
            std::fs::write(p, b"x").unwrap();
        }
        let found = files(&[a.path().to_path_buf(), b.path().to_path_buf()]);
        let names: Vec<(&str, bool)> = found
            .iter()
            .map(|f| {
                (
                    f.name.as_str(),
                    f.path.starts_with(a.path().to_str().unwrap()),
                )
            })
            .collect();
        assert_eq!(
            names,
            [("style", true), ("EasyNegative", true), ("other", false)]
        );
        assert!(found[0].path.ends_with("style.safetensors"));
    }

    #[test]
    fn ti_hashes_parse_as_a1111_writes_them() {
        assert_eq!(
            parse_ti_hashes("EasyNegative: c74b4e810b03, bad_prompt_v2: 6e5d4bb52e5c"),
            [
                ("EasyNegative".to_owned(), "c74b4e810b03".to_owned()),
                ("bad_prompt_v2".to_owned(), "6e5d4bb52e5c".to_owned())
            ]
        );
    }
}
