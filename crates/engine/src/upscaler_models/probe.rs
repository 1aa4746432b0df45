//! A model file's scale from its header, or why hiresfix refuses it: `upscaler_files::probe` (shapes only; a pickle through the restricted reader, nothing executed),
//! cached by path, size and modification time so listings and requests stay cheap.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

/// A file's size and modification time.
type Stamp = (u64, Option<SystemTime>);
/// Probes by path, with the stamp each was made at.
type Cache = Mutex<HashMap<PathBuf, (Stamp, Result<i64, String>)>>;

fn cache() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The scale of the model file at `path` from its header, or why hiresfix refuses it (one
/// line naming the file); cached while the file's size and mtime stay the same.
pub fn probe(path: &Path) -> Result<i64, String> {
    let stamp = std::fs::metadata(path)
        .map(|m| (m.len(), m.modified().ok()))
        .map_err(|e| format!("{}: cannot be read ({e})", shown(path)))?;
    if let Some((seen, result)) = cache().lock().ok().and_then(|c| c.get(path).cloned()) {
        if seen == stamp {
            return result;
        }
    }
    let result = upscaler_files::probe::arch_of(path)
        .map(|arch| arch.scale())
        .map_err(|e| format!("{}: {e}", shown(path)));
    if let Ok(mut c) = cache().lock() {
        c.insert(path.to_path_buf(), (stamp, result.clone()));
    }
    result
}

/// `` `file name` ``, cut short.
pub fn shown(path: &Path) -> String {
    let name = path
        .file_name()
        .map_or_else(|| path.to_string_lossy(), |n| n.to_string_lossy());
    format!("`{}`", crate::errors::cut(&name, 80))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_file_is_probed_again() {
        let models =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/upscalers/models");
        let dir = std::env::temp_dir().join(format!("upscaler-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("up.safetensors");
        std::fs::copy(models.join("realesrgan-x2.safetensors"), &path).unwrap();
        assert_eq!(probe(&path), Ok(2));
        assert_eq!(probe(&path), Ok(2));
        std::fs::copy(models.join("compact-x4.safetensors"), &path).unwrap();
        assert_eq!(probe(&path), Ok(4));
        std::fs::write(&path, b"cut").unwrap();
        let err = probe(&path).unwrap_err();
        assert!(
            err.starts_with("`up.safetensors`: not a readable safetensors file"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
