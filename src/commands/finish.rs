//! `hiresfix finish IMAGE`: the remaining passes of an image. A preview written by
//! `generate --passes K` continues from the latent it stores (the result equals the one-shot
//! run); any other image is VAE-encoded as pass 1's result (A1111's "hires fix this image").
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};

use super::replay::{chunk, embedded_profile};
use super::{base_dir, load_profile, print_written, registry_for, warn_refused};
use crate::generate::{finish, RunOptions, Start};
use crate::profile::Profile;
use crate::registry::Registry;
use crate::{infotext, output, stored_latent};

pub struct Args {
    pub image: PathBuf,
    pub profile: Option<PathBuf>,
    pub sets: Vec<String>,
    pub output: Option<String>,
    pub ignore_latent: bool,
}

pub fn run(args: &Args, quiet: bool) -> Result<()> {
    let image = &args.image;
    let shown = image.display().to_string();
    let chunks = output::read_text_chunks(image)?;
    let (mut profile, base, embedded) = profile_for(args, &chunks)?;
    profile.batch = 1;
    let stored = match chunk(&chunks, stored_latent::CHUNK) {
        Some(text) if !args.ignore_latent => Some(stored_latent::decode(&text, &shown)?),
        _ => None,
    };
    let start = match stored {
        Some(stored) => Start::Latent(stored),
        None => {
            let (width, height, rgb) = output::read_rgb8(image)?;
            if width % 8 != 0 || height % 8 != 0 {
                bail!("{shown} is {width}x{height}: both sides must be multiples of 8 to be VAE-encoded; crop or resize it first");
            }
            let first = profile
                .passes
                .first_mut()
                .ok_or_else(|| anyhow!("the profile has no pass"))?;
            // Images hiresfix wrote before their last pass carry a latent: without one, an
            // image of another size than its profile's pass 1 is that profile's finished result.
            if embedded && (first.width, first.height) != (Some(width), Some(height)) {
                bail!("{shown} is the finished result of the profile it carries (only previews from `generate --passes K` can be continued); to hires-fix it as a new pass 1, give --profile PROFILE.toml");
            }
            (first.width, first.height) = (Some(width), Some(height));
            Start::Image { width, height, rgb }
        }
    };
    let output = Some(args.output.clone().unwrap_or_else(|| default_output(image)));
    let options = RunOptions {
        quiet,
        output,
        ..RunOptions::new(base)
    };
    let registry = registry_for(&profile, &options.base_dir);
    if let Start::Latent(stored) = &start {
        if let Some(channels) = latent_channels(&profile, &registry, &options.base_dir, stored.pass)
        {
            stored.check_channels(channels, &shown)?;
        }
    }
    let terminal = crate::terminal::Terminal::new(options.quiet);
    let written = finish(profile, &registry, &options, start, &terminal)?;
    print_written(&written);
    warn_refused(&registry);
    Ok(())
}

/// `--profile`, else the profile the image carries, else its A1111 `parameters` imported;
/// with the folder relative paths are taken from and whether it is the image's own.
fn profile_for(args: &Args, chunks: &[(String, String)]) -> Result<(Profile, PathBuf, bool)> {
    let shown = args.image.display();
    if let Some(path) = &args.profile {
        let mut profile = load_profile(path, &[])?;
        // The image's own seed: its later passes' noise depends on it.
        let seed = chunk(chunks, "parameters").and_then(|text| {
            infotext::parse(&text)
                .get("Seed")
                .and_then(|s| s.parse().ok())
        });
        if let Some(seed) = seed {
            profile.seed = seed;
        }
        return Ok((profile.with_overrides(&args.sets)?, base_dir(path), false));
    }
    if let Some(profile) = embedded_profile(&args.image, chunks)? {
        return Ok((profile.with_overrides(&args.sets)?, PathBuf::new(), true));
    }
    let text = chunk(chunks, "parameters").ok_or_else(|| {
        anyhow!("{shown} carries no profile and no A1111 parameters: give one with --profile PROFILE.toml")
    })?;
    let registry = registry_for(&Profile::empty(), Path::new(""));
    let imported = crate::import::from_parameters(&text, &registry)?;
    for field in &imported.unmapped {
        eprintln!("note: not imported from {shown}: {field}");
    }
    Ok((
        imported.profile.with_overrides(&args.sets)?,
        PathBuf::new(),
        false,
    ))
}

/// The latent channels of pass `pass`'s model, read from its checkpoint's headers (the
/// backend's inspect tool; no weights loaded). `None` when that cannot be told cheaply: the
/// run then reports what is wrong with the profile or model itself.
fn latent_channels(
    profile: &Profile,
    registry: &Registry,
    base: &Path,
    pass: usize,
) -> Option<u32> {
    let mut resolved = profile.clone();
    resolved.resolve(None).ok()?;
    let plans = crate::plan::plan_passes(&resolved, registry, base).ok()?;
    let checkpoint = &plans.get(pass.checked_sub(1)?)?.checkpoint;
    let backend = crate::models::detect_backend(registry, checkpoint).ok()?;
    if !backend.decl.has_tools() {
        return None;
    }
    let info = backend.decl.run_inspect(checkpoint, false).ok()?;
    Some(info.latent_channels)
}

/// `photo.png` → `photo-finished.png` beside it.
fn default_output(image: &Path) -> String {
    let stem = image
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "image".into());
    image
        .with_file_name(format!("{stem}-finished.png"))
        .display()
        .to_string()
}
