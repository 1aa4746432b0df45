//! `hiresfix demo [CHECKPOINT]`: the 2-pass demo job, on a tiny random model written with the
//! real save code when no checkpoint is given.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};

use super::{registry_for, run_generate};
use crate::generate::RunOptions;
use crate::profile::Profile;
use crate::registry::Registry;

const DEMO_PROFILE: &str = r#"
seed = 1234
prompt = "a lighthouse on a cliff at sunset, (dramatic sky:1.2), detailed"
negative = "blurry, lowres"
cfg = 7.0
device = "cpu"
output = "out/demo-{seed}-{n}.png"

[[pass]]
steps = 12
sampler = "euler_ancestral"
schedule = "normal"

[[pass]]
scale = 2.0
upscaler = "latent"
steps = 8
denoise = 0.5
sampler = "dpmpp_2m"
schedule = "karras"
"#;

pub fn run(checkpoint: Option<PathBuf>, quiet: bool, output: Option<String>) -> Result<()> {
    let mut profile = Profile::parse(DEMO_PROFILE, "demo profile")?;
    let registry = registry_for(&profile, Path::new(""));
    // The built-in tiny model's native size is what it composes at, not its family's.
    let native_size = checkpoint.is_none().then_some(48);
    let checkpoint = match checkpoint {
        Some(c) => {
            profile.device = Default::default();
            c
        }
        None => {
            let path = PathBuf::from("out/demo/tiny-sd1.safetensors");
            std::fs::create_dir_all("out/demo").context("cannot create out/demo")?;
            write_demo_checkpoint(&registry, &path)?;
            if !quiet {
                eprintln!(
                    "demo model written to {} (tiny, random weights)",
                    path.display()
                );
            }
            // The tiny model's VAE factor is 2: 48 px is a 24-cell latent, seconds on a CPU.
            profile.passes[0].width = native_size;
            profile.passes[0].height = native_size;
            path
        }
    };
    profile.model.checkpoint = Some(checkpoint.to_string_lossy().into_owned());
    let options = RunOptions {
        quiet,
        output,
        native_size,
        ..RunOptions::new(PathBuf::new())
    };
    run_generate(profile, options, None)
}

/// The first backend that has a demo model writes it.
fn write_demo_checkpoint(registry: &Registry, path: &Path) -> Result<()> {
    let mut last = anyhow!("no model backend plugin was found; see `hiresfix plugins`");
    for backend in &registry.backends {
        match backend.decl.run_write_demo_checkpoint(path) {
            Ok(()) => return Ok(()),
            Err(e) => last = anyhow!("writing the demo model: {e}"),
        }
    }
    Err(last)
}
