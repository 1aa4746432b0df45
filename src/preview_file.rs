//! `generate --preview FILE`: the run's live previews (engine `live_preview`) written to one
//! PNG, replaced in place atomically — each is written to a temporary file beside it and
//! renamed over it, so a viewer that reloads the file never reads half a PNG.
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};
use hiresfix_engine::png_pixels::Rgb8;

pub struct PreviewFile {
    path: PathBuf,
    temp: PathBuf,
    /// A preview at steps 0, every, 2·every, … of each pass.
    every: usize,
    /// A write failed (warned once; the run goes on).
    failed: AtomicBool,
}

impl PreviewFile {
    /// `--preview PATH`, previews every `every` steps (the profile's `preview_every`; 1 when
    /// it is 0). Its folder must exist.
    pub fn new(path: &Path, every: u32) -> Result<Self> {
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let Some(name) = path.file_name() else {
            bail!(
                "--preview {}: not a file name — give a path such as preview.png",
                path.display()
            );
        };
        if !folder.is_dir() {
            bail!(
                "--preview {}: folder {} does not exist — create it or give another path",
                path.display(),
                folder.display()
            );
        }
        let mut temp = std::ffi::OsString::from(".");
        temp.push(name);
        temp.push(format!(".{}.tmp", std::process::id()));
        Ok(Self {
            path: path.to_path_buf(),
            temp: folder.join(temp),
            every: every.max(1) as usize,
            failed: AtomicBool::new(false),
        })
    }

    pub fn wanted(&self, step: usize) -> bool {
        step.is_multiple_of(self.every)
    }

    /// Writes `image` as the file's new content.
    pub fn write(&self, image: &Rgb8) {
        let written = hiresfix_engine::live_preview::png(image)
            .and_then(|png| Ok(std::fs::write(&self.temp, png)?))
            .and_then(|()| Ok(std::fs::rename(&self.temp, &self.path)?));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&self.temp);
            if !self.failed.swap(true, Ordering::Relaxed) {
                log::warn!(
                    "--preview {}: cannot write it ({e}); the run goes on without previews",
                    self.path.display()
                );
            }
        }
    }
}
