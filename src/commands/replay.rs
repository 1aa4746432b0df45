//! `hiresfix replay IMAGE`: re-runs the profile embedded in a PNG hiresfix wrote — its
//! generation settings only: plugin folders, pins and the output path come from this user.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};

use super::run_generate;
use crate::output;
use crate::profile::Profile;

pub fn run(image: &Path, quiet: bool, output: Option<String>) -> Result<()> {
    let chunks = output::read_text_chunks(image)?;
    let text = chunks
        .iter()
        .find(|(k, _)| k == output::PROFILE_CHUNK)
        .map(|(_, v)| v.clone())
        .ok_or_else(|| {
            anyhow!(
                "{} has no embedded hiresfix profile (was it written by hiresfix?)",
                image.display()
            )
        })?;
    let profile = Profile::parse(&text, &format!("{} (embedded profile)", image.display()))?;
    // The PNG may come from anyone: its plugin folders, pins and output path are not used.
    let profile = profile.untrusted();
    run_generate(profile, PathBuf::new(), quiet, output)
}
