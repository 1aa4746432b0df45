//! `hiresfix`: the thin host. It parses the command line and the profile, loads the plugins,
//! and runs the passes; samplers, schedules, upscalers and model backends are all plugins.
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use hiresfix::commands::{self, base_dir, load_profile, run_generate};
use hiresfix::generate;
use hiresfix::stages::Target;

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
        /// Stop after pass K (a preview): each image keeps its latent for `hiresfix finish`.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        passes: Option<u32>,
        /// Dotted profile key, passes numbered from 1: --set pass.2.denoise=0.35
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Plan the passes to this size from pass 1 (the profile's `target`, README "Stage plan").
        #[arg(long, value_name = "WxH", value_parser = parse_target)]
        target: Option<Target>,
        /// Output path (replaces the profile's `output`; `{seed}` and `{n}` expand).
        #[arg(short, long)]
        output: Option<String>,
        /// Live previews of the running image written to this PNG, replaced in place
        /// (atomically) every `preview_every` steps of the profile (every step when unset).
        #[arg(long, value_name = "FILE")]
        preview: Option<PathBuf>,
    },
    /// Run the remaining passes of an image: a preview from `generate --passes K` continues
    /// from its stored latent; any other image is VAE-encoded as pass 1's result.
    Finish {
        image: PathBuf,
        /// The profile to use (default: the one the image carries, else its A1111 parameters).
        #[arg(long)]
        profile: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Output path (default: IMAGE-finished.png beside the image).
        #[arg(short, long)]
        output: Option<String>,
        /// VAE-encode the pixels instead of continuing from the stored latent.
        #[arg(long)]
        ignore_latent: bool,
    },
    /// One image per combination of values, same seed: a labelled contact sheet plus each cell.
    Grid {
        profile: PathBuf,
        /// Column axis: a dotted profile key and its values, --x pass.2.denoise=0.3,0.45,0.6
        #[arg(long, value_name = "KEY=V1,V2,...")]
        x: String,
        /// Row axis, as --x.
        #[arg(long, value_name = "KEY=V1,V2,...")]
        y: Option<String>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// The sheet's path (default grid.png); cells are written beside it.
        #[arg(short, long)]
        output: Option<String>,
    },
    /// Validate a profile and resolve every plugin name, without running anything heavy.
    Check {
        profile: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Plan the passes to this size from pass 1 (the profile's `target`).
        #[arg(long, value_name = "WxH", value_parser = parse_target)]
        target: Option<Target>,
    },
    /// List every plugin found, what it registers, and why any was refused.
    Plugins,
    /// Describe a checkpoint (file or diffusers folder): family, prediction type, latent,
    /// text encoders, UNet size, stored dtype, file size; or why it is refused.
    Info { checkpoint: PathBuf },
    /// Merge checkpoints of one family: OUT A:0.8 B:0.2 (weighted sum), or
    /// OUT --add-difference A B C:M (A + (B - C) * M), as A1111's checkpoint merger.
    Merge {
        out: PathBuf,
        #[arg(required = true)]
        inputs: Vec<String>,
        #[arg(long)]
        add_difference: bool,
    },
    /// Convert a PyTorch pickle checkpoint (.pth, as ESRGAN upscalers are published) to
    /// .safetensors; only tensor state dicts convert, and nothing in the file is executed.
    Convert {
        model: PathBuf,
        /// Output path (default: MODEL.safetensors beside the input); never overwritten.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Run a job file's jobs (a base profile × tables of overrides), this shard's share:
    /// --shard I/N, or Slurm's / Kubernetes' index; outputs named by job id, reruns resume.
    Batch(hiresfix::batch::Args),
    /// Serve an AUTOMATIC1111-compatible HTTP API (/sdapi/v1) and hiresfix's own
    /// (/hiresfix/v1/generate takes a profile and streams progress).
    Serve(hiresfix::serve::Args),
    /// Upscale an image as A1111's Extras tab: `upscale IMAGE --upscaler NAME [--scale 2]`.
    Upscale(commands::upscale::Args),
    /// Re-run the profile embedded in an image written by hiresfix.
    Replay {
        image: PathBuf,
        /// Import the image's A1111 / Forge parameters into a profile (stdout, or -o FILE).
        #[arg(long)]
        to_profile: bool,
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

/// `--target WxH`, read as the profile's `target` is.
fn parse_target(text: &str) -> Result<Target, String> {
    text.parse()
}

/// The `--set`s with `--target` as one more.
fn with_target(mut sets: Vec<String>, target: Option<Target>) -> Vec<String> {
    sets.extend(target.map(|t| format!("target=\"{t}\"")));
    sets
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Generate {
            profile: path,
            seed,
            batch,
            passes,
            sets,
            target,
            output,
            preview,
        } => {
            let mut profile = load_profile(&path, &with_target(sets, target))?;
            if let Some(seed) = seed {
                profile.seed = seed;
            }
            if let Some(batch) = batch {
                if batch == 0 {
                    bail!("--batch must be at least 1");
                }
                profile.batch = batch;
            }
            let options = generate::RunOptions {
                quiet: cli.quiet,
                output,
                passes: passes.map(|k| k as usize),
                ..generate::RunOptions::new(base_dir(&path))
            };
            run_generate(profile, options, preview.as_deref())
        }
        Command::Finish {
            image,
            profile,
            sets,
            output,
            ignore_latent,
        } => {
            let args = commands::finish::Args {
                image,
                profile,
                sets,
                output,
                ignore_latent,
            };
            commands::finish::run(&args, cli.quiet)
        }
        Command::Grid {
            profile,
            x,
            y,
            sets,
            output,
        } => {
            let args = commands::grid::Args {
                profile,
                x,
                y,
                sets,
                output,
            };
            commands::grid::run(&args, cli.quiet)
        }
        Command::Check {
            profile,
            sets,
            target,
        } => commands::check::run(&profile, &with_target(sets, target)),
        Command::Plugins => commands::plugins::run(),
        Command::Info { checkpoint } => commands::info::run(&checkpoint),
        Command::Merge {
            out,
            inputs,
            add_difference,
        } => commands::merge::run(&out, &inputs, add_difference),
        Command::Convert { model, output } => {
            commands::convert::run(&model, output.as_deref(), cli.quiet)
        }
        Command::Replay {
            image,
            to_profile: true,
            output,
        } => commands::replay::to_profile(&image, output.as_deref().map(std::path::Path::new)),
        Command::Replay { image, output, .. } => commands::replay::run(&image, cli.quiet, output),
        Command::Serve(args) => hiresfix::serve::run(&args, cli.quiet),
        Command::Upscale(args) => commands::upscale::run(&args, cli.quiet),
        Command::Batch(args) => hiresfix::batch::run(&args, cli.quiet),
        Command::Demo { checkpoint, output } => commands::demo::run(checkpoint, cli.quiet, output),
    }
}

/// clap's usage errors as one line, exit 2; help and version print as clap prints them.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.to_string();
    let first = text
        .lines()
        .map(|l| l.trim().trim_start_matches("error:").trim())
        .find(|l| !l.is_empty())
        .unwrap_or("bad command line");
    // clap's first line names what is wrong; the argument itself follows on the next one.
    let detail = text
        .lines()
        .skip(1)
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more"))
        .map(|l| format!(" {l}"))
        .unwrap_or_default();
    eprintln!("error: {first}{detail} — see `hiresfix --help`");
    ExitCode::from(2)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    // The commands that only print (`check | head`): a closed pipe ends them quietly, as it
    // ends `ls` — Rust ignores SIGPIPE, which made `println!` panic there. Commands that write
    // files or serve keep ignoring it (a write to a closed socket or pipe is an error they
    // handle).
    if matches!(
        cli.command,
        Command::Check { .. } | Command::Plugins | Command::Info { .. }
    ) {
        // SAFETY: restoring the default disposition of one signal, before any thread starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    // Ctrl-C stops sampling at the next step; a second Ctrl-C exits at once. The server
    // handles its own signals (it finishes open requests first).
    let serving = matches!(cli.command, Command::Serve(_));
    let _ = (!serving).then(|| {
        ctrlc::set_handler(|| {
            if hiresfix::terminal::STOP.swap(true, std::sync::atomic::Ordering::Relaxed) {
                std::process::exit(130);
            }
        })
    });
    let start = std::time::Instant::now();
    let result = run(cli);
    hiresfix::timings::write_if_asked(start.elapsed().as_secs_f64());
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", commands::one_line(&e));
            ExitCode::from(1)
        }
    }
}
