//! A model file's scale from its header, or why hiresfix refuses it: the pixel plugin's
//! `models::probe` (shapes only; a pickle through the restricted reader, nothing executed),
//! cached by path, size and modification time so listings and requests stay cheap.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

type Stamp = (u64, Option<SystemTime>);

fn cache() -> &'static Mutex<HashMap<PathBuf, (Stamp, Result<i64, String>)>> {
    static CACHE: OnceLock<Mutex<HashMap<PathBuf, (Stamp, Result<i64, String>)>>> = OnceLock::new();
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
    let result = hiresfix_upscalers_pixel::models::probe::arch_of(path)
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
