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
    run_generate(profile, options, None)
}

/// `--to-profile`: the imported profile as TOML on stdout (or in `output`), and what could
/// not be mapped on stderr. A profile `hiresfix check` would refuse is not written: the
/// infotext field at fault is named instead.
pub fn to_profile(image: &Path, output: Option<&Path>) -> Result<()> {
    let shown = image.display();
    let chunks = output::read_text_chunks(image)?;
    let text = chunk(&chunks, "parameters").ok_or_else(|| {
        anyhow!("{shown} has no `parameters` text (A1111 / Forge PNG Info); was it saved with its metadata?")
    })?;
    let registry = registry_for(&Profile::empty(), Path::new(""));
    let imported =
        crate::import::from_parameters(&text, &registry).with_context(|| format!("{shown}"))?;
    let toml = toml::to_string(&imported.profile).context("cannot encode the profile")?;
    if let Err(e) = checkable(&toml, &registry) {
        let e = crate::errors::one_line(&e);
        return Err(match culprit(&text, &registry) {
            Some((key, value)) => anyhow!(
                "{shown}: `{key}: {}` in its infotext imports as a profile `check` refuses ({}) — fix or remove it; nothing written",
                cut(&value, 40),
                cut(&e, 90)
            ),
            None => anyhow!(
                "{shown}: its infotext imports as a profile `check` refuses ({}); nothing written",
                cut(&e, 140)
            ),
        });
    }
    let toml = format!("# imported from {shown} by `hiresfix replay --to-profile`\n{toml}");
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

/// At most `n` characters of `text`, an ellipsis marking a cut.
fn cut(text: &str, n: usize) -> String {
    match text.char_indices().nth(n) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// What `hiresfix check` finds in the profile `toml` without its model: it parses, resolves,
/// plans (samplers, schedules, upscalers, patches, limits) and sizes its passes. The checkpoint
/// the import leaves to the user, and the model upscalers and LoRAs it names by file, are
/// taken as given (the import's notes say where to put them).
fn checkable(toml: &str, registry: &crate::registry::Registry) -> Result<()> {
    let mut profile = Profile::parse(toml, "the imported profile")?;
    if profile.model.checkpoint.is_none() && profile.model.merge.is_none() {
        profile.model.checkpoint = Some("model.safetensors".into());
    }
    // `<lora:>` tags: their files are the user's to add (lora_dirs), as the import notes.
    let untagged = |text: &mut String| {
        if let Ok((clean, _)) = host_api::prompt::extract_loras(text) {
            *text = clean;
        }
    };
    untagged(&mut profile.prompt);
    untagged(&mut profile.negative);
    for pass in &mut profile.passes {
        pass.prompt
            .iter_mut()
            .chain(pass.negative.iter_mut())
            .for_each(untagged);
        let known =
            |name: &str| crate::registry::find(&registry.upscalers, name, "upscaler").is_ok();
        if pass.upscaler.as_deref().is_some_and(|u| !known(u)) {
            pass.upscaler = None; // a model upscaler: its file is the user's to add
        }
    }
    profile.resolve(None)?;
    crate::plan::plan_passes(&profile, registry, Path::new(""))?;
    // Pass 1 at the smallest native size (SD 1.x) when the text gives none.
    profile.fill_native_size(512)?;
    crate::plan::pass_sizes(&profile.passes, 8)?;
    Ok(())
}

/// The `key: value` field of the infotext `text` without which the import is checkable, if one.
fn culprit(text: &str, registry: &crate::registry::Registry) -> Option<(String, String)> {
    let p = crate::infotext::parse(text);
    // The last such field: a later one refines an earlier (`Hires upscale` after `Size`,
    // a patch's option after its `enabled`).
    p.pairs.iter().rev().find_map(|(key, value)| {
        let rest: Vec<(String, String)> =
            p.pairs.iter().filter(|(k, _)| k != key).cloned().collect();
        let text = crate::infotext::format(&p.prompt, &p.negative, &rest);
        let imported = crate::import::from_parameters(&text, registry).ok()?;
        let toml = toml::to_string(&imported.profile).ok()?;
        checkable(&toml, registry)
            .is_ok()
            .then(|| (key.clone(), value.clone()))
    })
}
