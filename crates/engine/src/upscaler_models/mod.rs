//! Model upscalers (ESRGAN family: `.safetensors`, or `.pth`/`.pt` read in place by the
//! restricted pickle reader) from the profile's `upscaler_dirs` and
//! `$HIRESFIX_UPSCALER_PATH`, selected by file stem (`upscaler = "4x-UltraSharp"`), by path,
//! or by A1111's name for the file it downloads ("R-ESRGAN 4x+", [`a1111`]); the pixel
//! plugin's `model` upscaler runs them. [`listing`] is what `/sdapi/v1/upscalers` lists.
pub mod a1111;
pub mod listing;
pub mod probe;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use host_api::{OptionEntry, OptionValue};

/// A model file found in an upscaler folder.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelFile {
    pub stem: String,
    pub path: PathBuf,
    /// The name the infotext records: A1111's when the profile used it, else the stem.
    pub label: String,
}

impl ModelFile {
    /// The options the `model` upscaler runs it with.
    pub fn options(&self) -> Vec<OptionEntry> {
        vec![OptionEntry {
            key: "model".into(),
            value: OptionValue::Text(self.path.to_string_lossy().as_ref().into()),
        }]
    }
}

/// The folders searched: the profile's, then `$HIRESFIX_UPSCALER_PATH`.
pub fn dirs(profile_dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = profile_dirs.to_vec();
    dirs.extend(crate::registry::env_dirs("HIRESFIX_UPSCALER_PATH"));
    dirs
}

fn is_model(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_lowercase)
            .as_deref(),
        Some("safetensors" | "pth" | "pt")
    )
}

/// Every model file in `dirs` (a `.safetensors` hides a `.pth` of the same stem), by stem.
pub fn scan(dirs: &[PathBuf]) -> Vec<ModelFile> {
    let mut found: Vec<ModelFile> = Vec::new();
    for dir in dirs {
        let Ok(read) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut files: Vec<PathBuf> = read
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && is_model(p))
            .collect();
        // .safetensors sorts after .pth: reverse so it is seen first.
        files.sort();
        files.reverse();
        for path in files {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            if !found.iter().any(|m| m.stem.eq_ignore_ascii_case(&stem)) {
                let label = stem.clone();
                found.push(ModelFile { stem, path, label });
            }
        }
    }
    found.sort_by_key(|m| m.stem.to_lowercase());
    found
}

/// The model file `name` selects (a path, a stem, or an A1111 name), `None` when no file
/// matches. An A1111 name without its file says which file to put where; SwinIR, LDSR and
/// ScuNET are refused by architecture; a pickle is probed first (its pickle read, nothing
/// executed) and refused naming what it would have run.
pub fn find(dirs: &[PathBuf], name: &str) -> Result<Option<ModelFile>> {
    let direct = Path::new(name);
    let found = if is_model(direct) && direct.is_file() {
        let stem = direct
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(why) = a1111::by_stem(&stem).and_then(|k| k.refusal()) {
            bail!("{why}");
        }
        Some(ModelFile {
            label: stem.clone(),
            stem,
            path: direct.to_path_buf(),
        })
    } else {
        let known = a1111::by_name(name);
        let files = scan(dirs);
        let file = |stem: &str| {
            files
                .iter()
                .find(|m| m.stem.eq_ignore_ascii_case(stem))
                .cloned()
        };
        let by_stem = file(name.trim());
        if let Some(why) = known
            .or_else(|| by_stem.as_ref().and_then(|m| a1111::by_stem(&m.stem)))
            .and_then(|k| k.refusal())
        {
            bail!("{why}");
        }
        match known {
            // A1111's file, else a file named as the A1111 name itself.
            Some(known) => match file(known.stem()).or(by_stem) {
                Some(m) if m.stem.eq_ignore_ascii_case(known.stem()) => Some(ModelFile {
                    label: known.name.to_owned(),
                    ..m
                }),
                Some(m) => Some(m),
                None => bail!(
                    "{} needs {} in {} (download {})",
                    known.name,
                    known.file,
                    where_to_put(dirs),
                    known.url
                ),
            },
            None => by_stem,
        }
    };
    if let Some(m) = &found {
        if upscaler_files::probe::is_pickle(&m.path) {
            probe::probe(&m.path).map_err(anyhow::Error::msg)?;
        }
    }
    Ok(found)
}

/// The folder a missing file goes in: the first upscaler folder.
fn where_to_put(dirs: &[PathBuf]) -> String {
    match dirs.first() {
        Some(dir) => crate::errors::cut(&dir.to_string_lossy(), 120),
        None => "an upscaler folder (upscaler_dirs, --upscalers or $HIRESFIX_UPSCALER_PATH)".into(),
    }
}

/// The stems found, for "available:" lists.
pub fn available(dirs: &[PathBuf]) -> String {
    let stems: Vec<String> = scan(dirs).into_iter().map(|m| m.stem).collect();
    match stems.is_empty() {
        true => "none in upscaler_dirs".into(),
        false => stems.join(", "),
    }
}
