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

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::generate::{generate, RunOptions};
use crate::profile::Profile;
use crate::registry::Registry;

pub fn load_profile(path: &Path, sets: &[String]) -> Result<Profile> {
    Profile::load(path)?.with_overrides(sets)
}

pub fn base_dir(profile_path: &Path) -> PathBuf {
    profile_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

pub fn registry_for(profile: &Profile, base: &Path) -> Registry {
    let dirs: Vec<PathBuf> = profile
        .plugin_dirs
        .iter()
        .map(|d| {
            if d.is_absolute() {
                d.clone()
            } else {
                base.join(d)
            }
        })
        .collect();
    Registry::load(&dirs, &profile.plugin_sha256)
}

/// After a command succeeded: the plugins that were refused (a failure names the one it
/// needed in its own single line instead).
pub(crate) fn warn_refused(registry: &Registry) {
    for refusal in &registry.refused {
        eprintln!(
            "warning: plugin {} refused: {}",
            refusal.file.display(),
            refusal.reason
        );
    }
}

pub(crate) fn print_written(paths: &[PathBuf]) {
    for p in paths {
        println!("{}", p.display());
    }
}

/// `generate`: runs `profile` and prints the written paths.
pub fn run_generate(profile: Profile, options: RunOptions) -> Result<()> {
    let registry = registry_for(&profile, &options.base_dir);
    let written = generate(profile, &registry, &options)?;
    print_written(&written);
    warn_refused(&registry);
    Ok(())
}

/// The error chain on one line: `outer: inner: cause`.
pub fn one_line(e: &anyhow::Error) -> String {
    let parts: Vec<String> = e
        .chain()
        .map(|c| c.to_string())
        .filter(|s| !s.is_empty())
        .collect();
    parts
        .join(": ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}
