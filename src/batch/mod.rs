//! `hiresfix batch`: a job file's jobs (a base profile × tables of overrides) sharded over
//! Slurm array tasks, Kubernetes Indexed Job pods or plain processes; outputs named by job
//! id, so a rerun skips what is done and a preempted shard resumes; one worker process per
//! device with `--devices`; every shard appends to its own manifest and `--report` merges them.
pub mod jobs;
pub mod manifest;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::generate::{generate_in_memory, Models, Rendered};
use manifest::{Manifest, Record};

/// The PNG text chunk that ties an image to its job.
pub const JOB_CHUNK: &str = "hiresfix-job";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The job file (with --report: to list the jobs that never ran too).
    pub jobs: Option<PathBuf>,
    /// This process's share, I/N (0-based); else SLURM_ARRAY_TASK_ID / _COUNT, else
    /// JOB_COMPLETION_INDEX with --shards N.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// The shard count when the index comes from the environment (Kubernetes).
    #[arg(long, value_name = "N")]
    pub shards: Option<u64>,
    /// Output folder: images named by job id, and the manifests.
    #[arg(long, default_value = "batch-out")]
    pub out: PathBuf,
    /// One worker process per device over this shard: --devices cuda:0,cuda:1
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<String>,
    /// Merge the manifests in DIR: one line per job in DIR/manifest.jsonl and a summary.
    #[arg(long, value_name = "DIR")]
    pub report: Option<PathBuf>,
    /// (internal) worker K/W of a --devices run, and its device.
    #[arg(long, hide = true, value_name = "K/W")]
    pub worker: Option<String>,
    #[arg(long, hide = true)]
    pub device: Option<String>,
}

pub fn run(args: &Args, quiet: bool) -> Result<()> {
    if let Some(dir) = &args.report {
        return report(dir, args.jobs.as_deref());
    }
    let path = args.jobs.as_deref().ok_or_else(|| {
        anyhow!("give a job file: hiresfix batch JOBS.toml [--shard I/N] [--out DIR]")
    })?;
    let (shard, shards) = jobs::shard_of(args.shard.as_deref(), args.shards)?;
    if !args.devices.is_empty() && args.worker.is_none() {
        return run_devices(args, path, (shard, shards), quiet);
    }
    let (worker, workers) = match &args.worker {
        Some(w) => parse_worker(w)?,
        None => (0, 1),
    };
    let all = jobs::load(path)?;
    let mine: Vec<&jobs::Job> = all
        .jobs
        .iter()
        .filter(|j| j.shard(shards) == shard && j.worker(shards, workers) == worker)
        .collect();
    let name = match workers {
        1 => format!("manifest-shard{shard}of{shards}.jsonl"),
        _ => format!("manifest-shard{shard}of{shards}-worker{worker}.jsonl"),
    };
    let mut manifest = Manifest::open(&args.out, &name)?;
    if !quiet {
        eprintln!(
            "shard {shard}/{shards}{}: {} of {} jobs → {}",
            match workers {
                1 => String::new(),
                _ => format!(" worker {worker}/{workers}"),
            },
            mine.len(),
            all.jobs.len(),
            args.out.display()
        );
    }
    let registry = crate::commands::registry_for(&all.base, &all.base_dir);
    // The jobs' own bar is the progress shown; the observer carries Ctrl-C to the sampler.
    let terminal = crate::terminal::Terminal::new(true);
    let mut models = Models::observed(&registry, &terminal);
    let bar = jobs_bar(quiet, mine.len());
    let mut failed = 0;
    for job in mine {
        if crate::terminal::stopped() {
            bail!(
                "cancelled (Ctrl-C); finished jobs are kept — run the same command again to resume"
            );
        }
        let record = run_job(
            job,
            &args.out,
            &registry,
            &all.base_dir,
            &mut models,
            args.device.as_deref(),
        );
        if !record.succeeded() {
            failed += 1;
            bar.suspend(|| {
                eprintln!(
                    "job {} failed: {}",
                    record.job,
                    record.error.as_deref().unwrap_or("")
                )
            });
        }
        manifest.append(&record)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    crate::commands::warn_refused(&registry);
    match failed {
        0 => Ok(()),
        n => bail!(
            "{n} job(s) of shard {shard}/{shards} failed; see {}",
            manifest.path.display()
        ),
    }
}

fn jobs_bar(quiet: bool, total: usize) -> ProgressBar {
    let target = match quiet {
        true => ProgressDrawTarget::hidden(),
        false => ProgressDrawTarget::stderr(),
    };
    let bar = ProgressBar::with_draw_target(Some(total as u64), target);
    if let Ok(style) = ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} ETA {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix("jobs");
    bar
}

fn parse_worker(text: &str) -> Result<(u64, u64)> {
    let (k, w) = text
        .split_once('/')
        .and_then(|(k, w)| Some((k.parse::<u64>().ok()?, w.parse::<u64>().ok()?)))
        .ok_or_else(|| anyhow!("--worker {text}: expected K/W"))?;
    if w == 0 || k >= w {
        bail!("--worker {text}: K must be below W");
    }
    Ok((k, w))
}

/// The file names of a job's images: `ID.png`, or `ID-N.png` for a batch of several.
fn output_names(id: &str, batch: u32) -> Vec<String> {
    match batch {
        1 => vec![format!("{id}.png")],
        n => (0..n).map(|i| format!("{id}-{i}.png")).collect(),
    }
}

/// Whether `path` is a whole PNG of job `id` (decodes, carries the id).
fn verified(path: &Path, id: &str) -> bool {
    let carries = crate::output::read_text_chunks(path)
        .is_ok_and(|chunks| chunks.iter().any(|(k, v)| k == JOB_CHUNK && v == id));
    carries && crate::output::read_rgb8(path).is_ok()
}

/// Runs one job (or finds it done) and says how it went.
fn run_job<'r>(
    job: &jobs::Job,
    out: &Path,
    registry: &'r crate::registry::Registry,
    base_dir: &Path,
    models: &mut Models<'r>,
    device: Option<&str>,
) -> Record {
    let mut record = Record {
        job: job.id.clone(),
        output: None,
        outputs: Vec::new(),
        seed: None,
        seconds: 0.0,
        status: "failed".into(),
        error: None,
        sets: job.sets.clone(),
    };
    let mut profile = match &job.profile {
        Ok(p) => p.clone(),
        Err(e) => {
            record.error = Some(e.clone());
            return record;
        }
    };
    let names = output_names(&job.id, profile.batch);
    if names.iter().all(|n| verified(&out.join(n), &job.id)) {
        record.status = "skipped".into();
        record.seed = Some(profile.seed);
        record.output = names.first().cloned();
        record.outputs = if names.len() > 1 { names } else { Vec::new() };
        return record;
    }
    if let Some(device) = device {
        match serde_json::from_value(serde_json::Value::String(device.to_owned())) {
            Ok(d) => profile.device = d,
            Err(e) => {
                record.error = Some(format!("--devices {device}: {e}"));
                return record;
            }
        }
    }
    let clock = Instant::now();
    let result = generate_in_memory(profile, registry, base_dir, models, true)
        .map_err(|e| crate::commands::one_line(&e.error))
        .and_then(|images| {
            write_outputs(&images, &names, out, &job.id)
                .map_err(|e| crate::commands::one_line(&e))
                .map(|()| images)
        });
    record.seconds = clock.elapsed().as_secs_f64();
    match result {
        Ok(images) => {
            record.status = "done".into();
            record.seed = images.first().map(|i| i.seed);
            record.output = names.first().cloned();
            record.outputs = if names.len() > 1 { names } else { Vec::new() };
        }
        Err(e) => record.error = Some(e),
    }
    record
}

/// Writes a job's images under their names (a damaged earlier file is replaced), each
/// carrying the job id; written whole or not at all.
fn write_outputs(images: &[Rendered], names: &[String], out: &Path, id: &str) -> Result<()> {
    if images.len() != names.len() {
        bail!("{} images for {} names", images.len(), names.len());
    }
    for (image, name) in images.iter().zip(names) {
        let path = out.join(name);
        if verified(&path, id) {
            continue;
        }
        let png = crate::output::add_text_chunk(&image.png, JOB_CHUNK, id)?;
        replace_file(&path, &png)?;
    }
    Ok(())
}

/// Writes `bytes` at `path` in one step: a temporary file beside it, renamed over it. Workers
/// that run the same job at once (the same shard started twice) each rename the same image
/// there; none sees a half-written file, and none picks another name.
fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create output folder {}", dir.display()))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(
        ".{name}.{}-{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let placed = written.and_then(|()| std::fs::rename(&tmp, path));
    if placed.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    placed.with_context(|| format!("cannot write {}", path.display()))
}

/// `--devices`: one worker process per device over this shard; fails if any worker failed.
fn run_devices(args: &Args, path: &Path, (shard, shards): (u64, u64), quiet: bool) -> Result<()> {
    let exe =
        std::env::current_exe().context("cannot find the hiresfix binary to start workers")?;
    let workers = args.devices.len();
    let mut children: Vec<(String, std::process::Child)> = Vec::new();
    for (k, device) in args.devices.iter().enumerate() {
        let mut command = std::process::Command::new(&exe);
        if quiet {
            command.arg("-q");
        }
        let started = command
            .arg("batch")
            .arg(path)
            .args(["--shard", &format!("{shard}/{shards}")])
            .arg("--out")
            .arg(&args.out)
            .args(["--worker", &format!("{k}/{workers}"), "--device", device])
            .spawn();
        match started {
            Ok(child) => children.push((device.clone(), child)),
            Err(e) => {
                for (_, mut child) in children {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                bail!("cannot start the worker for {device}: {e}");
            }
        }
    }
    let mut failed = Vec::new();
    for (device, mut child) in children {
        let status = child.wait().with_context(|| format!("worker {device}"))?;
        if !status.success() {
            failed.push(device);
        }
    }
    match failed.is_empty() {
        true => Ok(()),
        false => bail!(
            "the workers on {} had failed jobs or stopped; see the manifests in {}",
            failed.join(", "),
            args.out.display()
        ),
    }
}

/// `--report DIR`: merged manifest, summary, and the jobs of JOBS that never ran.
fn report(dir: &Path, jobs_file: Option<&Path>) -> Result<()> {
    let merged = manifest::merge(manifest::read_all(dir)?);
    let mut text = String::new();
    for record in merged.values() {
        text.push_str(&serde_json::to_string(record)?);
        text.push('\n');
    }
    let out = dir.join("manifest.jsonl");
    let tmp = dir.join(".manifest.jsonl.tmp");
    std::fs::write(&tmp, text)
        .and_then(|_| std::fs::rename(&tmp, &out))
        .with_context(|| format!("cannot write {}", out.display()))?;
    let done = merged.values().filter(|r| r.succeeded()).count();
    let failed: Vec<&Record> = merged.values().filter(|r| !r.succeeded()).collect();
    let missing: Vec<String> = match jobs_file {
        Some(path) => jobs::load(path)?
            .jobs
            .into_iter()
            .filter(|j| !merged.contains_key(&j.id))
            .map(|j| j.id)
            .collect(),
        None => Vec::new(),
    };
    println!(
        "{}: {} jobs, {done} done, {} failed{}",
        out.display(),
        merged.len(),
        failed.len(),
        match jobs_file {
            Some(_) => format!(", {} never ran", missing.len()),
            None => String::new(),
        }
    );
    for record in &failed {
        println!(
            "failed {}: {}",
            record.job,
            record.error.as_deref().unwrap_or("")
        );
    }
    for id in &missing {
        println!("never ran {id}");
    }
    match failed.len() + missing.len() {
        0 => Ok(()),
        n => {
            bail!("{n} job(s) failed or never ran; rerun their shards (finished jobs are skipped)")
        }
    }
}
