//! One file per command of the command line (`main.rs` parses and dispatches); what several
//! commands need (reading a profile, finding plugins, running a job) is here.
pub mod check;
pub mod convert;
pub mod demo;
pub mod finish;
pub mod grid;
pub mod info;
pub mod merge;
pub mod plugins;
pub mod replay;
pub mod upscale;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::generate::{generate, RunOptions};
use crate::profile::Profile;

pub fn load_profile(path: &Path, sets: &[String]) -> Result<Profile> {
    Profile::load(path)?.with_overrides(sets)
}

pub fn base_dir(profile_path: &Path) -> PathBuf {
    profile_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub use crate::registry::{registry_for, warn_refused};

pub(crate) fn print_written(paths: &[PathBuf]) {
    for p in paths {
        println!("{}", p.display());
    }
}

/// `generate`: runs `profile` and prints the written paths; `preview` (`--preview FILE`)
/// receives its live previews every `preview_every` steps (every step when that is 0).
pub fn run_generate(profile: Profile, options: RunOptions, preview: Option<&Path>) -> Result<()> {
    let preview = preview
        .map(|p| crate::preview_file::PreviewFile::new(p, profile.preview_every))
        .transpose()?;
    let registry = registry_for(&profile, &options.base_dir);
    let terminal = crate::terminal::Terminal::new(options.quiet).with_preview(preview);
    let written = generate(profile, &registry, &options, &terminal)?;
    print_written(&written);
    warn_refused(&registry);
    Ok(())
}

pub use crate::errors::one_line;
