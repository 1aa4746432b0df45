//! `hiresfix replay IMAGE`: re-runs the profile embedded in a PNG hiresfix wrote — its
//! generation settings only: plugin folders, pins and the output path come from this user.
//! `replay --to-profile IMAGE` instead imports the A1111 / Forge `parameters` text of any PNG
//! into a profile.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use super::{registry_for, run_generate};
use crate::generate::RunOptions;
use crate::output;
use crate::profile::Profile;
use crate::stored_latent;

/// The text chunk `key` of `image`, if it has one.
pub fn chunk(chunks: &[(String, String)], key: &str) -> Option<String> {
    chunks
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
}

/// The profile a hiresfix PNG carries, made safe to run (see [`Profile::untrusted`]).
pub fn embedded_profile(image: &Path, chunks: &[(String, String)]) -> Result<Option<Profile>> {
    let Some(text) = chunk(chunks, output::PROFILE_CHUNK) else {
        return Ok(None);
    };
    let profile = Profile::parse(&text, &format!("{} (embedded profile)", image.display()))?;
    // The PNG may come from anyone: its plugin folders, pins and output path are not used.
    Ok(Some(profile.untrusted()))
}

pub fn run(image: &Path, quiet: bool, output: Option<String>) -> Result<()> {
    let chunks = output::read_text_chunks(image)?;
    let profile = embedded_profile(image, &chunks)?.ok_or_else(|| {
        anyhow!(
            "{} has no embedded hiresfix profile (was it written by hiresfix?); for an A1111 image use `hiresfix replay --to-profile`",
            image.display()
        )
    })?;
    // A preview (`generate --passes K`) stored the pass it stopped after: replay stops there too.
    let passes = match chunk(&chunks, stored_latent::CHUNK) {
        Some(text) => {
            let stored = stored_latent::decode(&text, &image.display().to_string())?;
            (stored.pass < profile.passes.len()).then_some(stored.pass)
        }
        None => None,
    };
    let options = RunOptions {
        quiet,
        output,
        passes,
        ..RunOptions::new(PathBuf::new())
    };
    run_generate(profile, options)
}

/// `--to-profile`: the imported profile as TOML on stdout (or in `output`), and what could
/// not be mapped on stderr.
pub fn to_profile(image: &Path, output: Option<&Path>) -> Result<()> {
    let chunks = output::read_text_chunks(image)?;
    let text = chunk(&chunks, "parameters").ok_or_else(|| {
        anyhow!(
            "{} has no `parameters` text (A1111 / Forge PNG Info); was it saved with its metadata?",
            image.display()
        )
    })?;
    let registry = registry_for(&Profile::empty(), Path::new(""));
    let imported = crate::import::from_parameters(&text, &registry)
        .with_context(|| format!("{}", image.display()))?;
    let toml = toml::to_string(&imported.profile).context("cannot encode the profile")?;
    let toml = format!(
        "# imported from {} by `hiresfix replay --to-profile`\n{toml}",
        image.display()
    );
    match output {
        Some(path) => {
            let written = output::write_new_file(path, toml.as_bytes())?;
            println!("{}", written.display());
        }
        None => print!("{toml}"),
    }
    for field in &imported.unmapped {
        eprintln!("note: not imported: {field}");
    }
    Ok(())
}
