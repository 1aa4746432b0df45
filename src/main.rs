//! `hiresfix`: the thin host. It parses the command line and the profile, loads the plugins,
//! and runs the passes; samplers, schedules, upscalers and model backends are all plugins.
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};

use hiresfix::generate::{self, generate, RunOptions};
use hiresfix::profile::Profile;
use hiresfix::registry::{self, Registry};
use hiresfix::{output, plan};

#[derive(Parser)]
#[command(
    name = "hiresfix",
    version,
    about = "Two-or-more-pass (\"Hires. fix\") Stable Diffusion generation"
)]
struct Cli {
    /// Silence progress bars and notes.
    #[arg(short, long, global = true)]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a profile.
    Generate {
        profile: PathBuf,
        #[arg(long)]
        seed: Option<i64>,
        #[arg(long)]
        batch: Option<u32>,
        /// Dotted profile key, passes numbered from 1: --set pass.2.denoise=0.35
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output path (replaces the profile's `output`; `{seed}` and `{n}` expand).
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Validate a profile and resolve every plugin name, without running anything heavy.
    Check {
        profile: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// List every plugin found, what it registers, and why any was refused.
    Plugins,
    /// Re-run the profile embedded in an image written by hiresfix.
    Replay {
        image: PathBuf,
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Write a tiny random model with the real save code and run a 2-pass job on it; with a
    /// checkpoint, run the same 2-pass job on that model instead.
    Demo {
        checkpoint: Option<PathBuf>,
        #[arg(short, long)]
        output: Option<String>,
    },
}

fn load_profile(path: &Path, sets: &[String]) -> Result<Profile> {
    Profile::load(path)?.with_overrides(sets)
}

fn base_dir(profile_path: &Path) -> PathBuf {
    profile_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn registry_for(profile: &Profile, base: &Path) -> Registry {
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
    let registry = Registry::load(&dirs, &profile.plugin_sha256);
    for refusal in &registry.refused {
        log::warn!(
            "plugin {} refused: {}",
            refusal.file.display(),
            refusal.reason
        );
    }
    registry
}

fn print_written(paths: &[PathBuf]) {
    for p in paths {
        println!("{}", p.display());
    }
}

fn run_generate(
    profile: Profile,
    base: PathBuf,
    quiet: bool,
    output: Option<String>,
) -> Result<()> {
    let registry = registry_for(&profile, &base);
    let written = generate(
        profile,
        &registry,
        &RunOptions {
            quiet,
            output,
            base_dir: base,
        },
    )?;
    print_written(&written);
    Ok(())
}

fn check(profile_path: &Path, sets: &[String]) -> Result<()> {
    let mut profile = load_profile(profile_path, sets)?;
    let base = base_dir(profile_path);
    let registry = registry_for(&profile, &base);
    profile.resolve_defaults(512)?;
    let plans = plan::plan_passes(&profile, &registry, &base)?;
    for plan in &plans {
        let backend = generate::detect_backend(&registry, &plan.checkpoint)?;
        if let Some(vae) = &plan.vae {
            if !vae.exists() {
                bail!("pass {}: VAE {} not found", plan.number, vae.display());
            }
        }
        println!(
            "pass {}: {} steps, denoise {}, sampler {}, schedule {}{}, model {} ({})",
            plan.number,
            plan.steps,
            generate::num(plan.denoise),
            plan.sampler.decl.name,
            plan.schedule.decl.name,
            plan.upscaler
                .map(|u| format!(", upscaler {}", u.decl.name))
                .unwrap_or_default(),
            plan.checkpoint.display(),
            backend.decl.family
        );
    }
    println!("ok: {} passes", plans.len());
    Ok(())
}

fn plugins() -> Result<()> {
    let registry = Registry::load(&[], &Default::default());
    for plugin in &registry.plugins {
        println!(
            "{}  (host-api {}, libtorch {})",
            plugin.file.display(),
            plugin.handshake.host_api_version,
            plugin.handshake.torch_version
        );
        for (kind, name) in &plugin.names {
            println!("    {kind:<9} {name}");
        }
    }
    for refusal in &registry.refused {
        println!("{}  REFUSED: {}", refusal.file.display(), refusal.reason);
    }
    if registry.plugins.is_empty() && registry.refused.is_empty() {
        println!(
            "no plugins found; searched: {}",
            registry::search_dirs(&[])
                .iter()
                .map(|(d, _)| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

fn replay(image: &Path, quiet: bool, output: Option<String>) -> Result<()> {
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
    run_generate(profile, PathBuf::new(), quiet, output)
}

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

fn demo(checkpoint: Option<PathBuf>, quiet: bool, output: Option<String>) -> Result<()> {
    let mut profile = Profile::parse(DEMO_PROFILE, "demo profile")?;
    let registry = registry_for(&profile, Path::new(""));
    let checkpoint = match checkpoint {
        Some(c) => {
            profile.device = Default::default();
            c
        }
        None => {
            let backend = registry.backends.first().ok_or_else(|| {
                anyhow!("no model backend plugin was found; see `hiresfix plugins`")
            })?;
            let path = PathBuf::from("out/demo/tiny-sd1.safetensors");
            std::fs::create_dir_all("out/demo").context("cannot create out/demo")?;
            backend
                .decl
                .run_write_demo_checkpoint(&path)
                .map_err(|e| anyhow!("writing the demo model: {e}"))?;
            if !quiet {
                eprintln!(
                    "demo model written to {} (tiny, random weights)",
                    path.display()
                );
            }
            // The tiny model's VAE factor is 2: 48 px is a 24-cell latent, seconds on a CPU.
            profile.passes[0].width = Some(48);
            profile.passes[0].height = Some(48);
            path
        }
    };
    profile.model.checkpoint = Some(checkpoint.to_string_lossy().into_owned());
    run_generate(profile, PathBuf::new(), quiet, output)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate {
            profile: path,
            seed,
            batch,
            sets,
            output,
        } => {
            let mut profile = load_profile(&path, &sets)?;
            if let Some(seed) = seed {
                profile.seed = seed;
            }
            if let Some(batch) = batch {
                if batch == 0 {
                    bail!("--batch must be at least 1");
                }
                profile.batch = batch;
            }
            run_generate(profile, base_dir(&path), cli.quiet, output)
        }
        Command::Check { profile, sets } => check(&profile, &sets),
        Command::Plugins => plugins(),
        Command::Replay { image, output } => replay(&image, cli.quiet, output),
        Command::Demo { checkpoint, output } => demo(checkpoint, cli.quiet, output),
    }
}

/// The error chain on one line: `outer: inner: cause`.
fn one_line(e: &anyhow::Error) -> String {
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    // Ctrl-C stops sampling at the next step; a second Ctrl-C exits at once.
    let _ = ctrlc::set_handler(|| {
        if generate::CANCELLED.swap(true, std::sync::atomic::Ordering::Relaxed) {
            std::process::exit(130);
        }
    });
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}
