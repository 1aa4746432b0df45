//! Model upscalers (ESRGAN family) from the profile's `upscaler_dirs` and
//! `$HIRESFIX_UPSCALER_PATH`, selected by file stem (`upscaler = "4x-UltraSharp"`), by path,
//! or by A1111's name for the Real-ESRGAN files it downloads ("R-ESRGAN 4x+"); the pixel
//! plugin's `model` upscaler runs them.
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use host_api::{OptionEntry, OptionValue};

/// A1111's display names of its Real-ESRGAN models and their file stems.
const A1111_NAMES: &[(&str, &str)] = &[
    ("R-ESRGAN 4x+", "RealESRGAN_x4plus"),
    ("R-ESRGAN 4x+ Anime6B", "RealESRGAN_x4plus_anime_6B"),
    ("R-ESRGAN 2x+", "RealESRGAN_x2plus"),
    ("R-ESRGAN General 4xV3", "realesr-general-x4v3"),
    ("R-ESRGAN AnimeVideo", "realesr-animevideov3"),
];

/// A1111's display name of a Real-ESRGAN model file with `stem` ("RealESRGAN_x4plus" →
/// "R-ESRGAN 4x+"), and its scale.
pub fn a1111_name(stem: &str) -> Option<(&'static str, u32)> {
    A1111_NAMES
        .iter()
        .find(|(_, s)| s.eq_ignore_ascii_case(stem))
        .map(|(name, s)| (*name, if s.contains("x2") { 2 } else { 4 }))
}

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

    fn is_pickle(&self) -> bool {
        self.path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("pth") || e.eq_ignore_ascii_case("pt"))
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
/// matches; a pickle is an error pointing at `hiresfix convert`.
pub fn find(dirs: &[PathBuf], name: &str) -> Result<Option<ModelFile>> {
    let direct = Path::new(name);
    let found = if is_model(direct) && direct.is_file() {
        let stem = direct
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Some(ModelFile {
            label: stem.clone(),
            stem,
            path: direct.to_path_buf(),
        })
    } else {
        let alias = A1111_NAMES
            .iter()
            .find(|(a1111, _)| a1111.eq_ignore_ascii_case(name.trim()));
        let stem = alias.map_or(name.trim(), |(_, stem)| stem);
        scan(dirs)
            .into_iter()
            .find(|m| m.stem.eq_ignore_ascii_case(stem))
            .map(|m| ModelFile {
                label: alias.map_or(m.stem.clone(), |(a1111, _)| a1111.to_string()),
                ..m
            })
    };
    match found {
        Some(m) if m.is_pickle() => bail!(
            "upscaler `{name}` is {}, a PyTorch pickle, which hiresfix never runs: convert it once with `hiresfix convert {}`",
            m.path.display(),
            m.path.display()
        ),
        other => Ok(other),
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
