//! `hiresfix batch`: job files expanded and sharded; 4 shards give exactly the unsharded set,
//! byte for byte; a killed shard resumes without redoing finished jobs; a failing job is
//! recorded and the shard goes on; `--devices` workers; the Kubernetes manifest's index
//! reaches the shard; `--report` merges the manifests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::{repo, stderr, tiny_ldm, Scratch};
use serde_json::Value;

fn base_profile(scratch: &Scratch) {
    scratch.write(
        "base.toml",
        &format!(
            r#"prompt = "a red fox"
cfg = 5
device = "cpu"
[model]
checkpoint = "{}"
[[pass]]
width = 32
height = 32
steps = 2
[[pass]]
scale = 1.5
steps = 1
denoise = 0.5
"#,
            tiny_ldm().display()
        ),
    );
}

/// 12 jobs: 2 prompts × 3 seeds × 2 denoise values.
const JOBS: &str = r#"profile = "base.toml"
[[jobs]]
prompt = ["a red fox", "a lighthouse"]
seed = [1, 2, 3]
"pass.2.denoise" = [0.4, 0.5]
"#;

/// `hiresfix -q batch ARGS` in `cwd`, outside any Slurm or Kubernetes array.
fn batch_command(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hiresfix"));
    cmd.current_dir(cwd)
        .arg("-q")
        .arg("batch")
        .args(args)
        .env_remove("HIRESFIX_PLUGIN_PATH")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env("HIRESFIX_CACHE_DIR", repo().join("target/test-cache"));
    cmd
}

fn batch(cwd: &Path, args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = batch_command(cwd, args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// The PNGs of a folder: name → bytes.
fn pngs(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect()
}

/// Every manifest record of a folder.
fn records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("manifest-") && name.ends_with(".jsonl") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            out.extend(
                text.lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
            );
        }
    }
    out
}

fn ids_with(records: &[Value], status: &str) -> Vec<String> {
    records
        .iter()
        .filter(|r| r["status"] == status)
        .map(|r| r["job"].as_str().unwrap().to_owned())
        .collect()
}

fn setup(name: &str) -> Scratch {
    let scratch = Scratch::new(name);
    base_profile(&scratch);
    scratch.write("jobs.toml", JOBS);
    scratch
}

#[test]
fn four_shards_make_exactly_the_unsharded_set() {
    let scratch = setup("batch-shards");
    let out = batch(&scratch.0, &["jobs.toml", "--out", "all"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = pngs(&scratch.path("all"));
    assert_eq!(all.len(), 12);
    let children: Vec<_> = (0..4)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_hiresfix"))
                .current_dir(&scratch.0)
                .args([
                    "-q",
                    "batch",
                    "jobs.toml",
                    "--out",
                    "sharded",
                    "--shard",
                    &format!("{i}/4"),
                ])
                .env_remove("HIRESFIX_PLUGIN_PATH")
                .env_remove("SLURM_ARRAY_TASK_ID")
                .env_remove("JOB_COMPLETION_INDEX")
                .env("HIRESFIX_CACHE_DIR", repo().join("target/test-cache"))
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success());
    }
    let sharded = pngs(&scratch.path("sharded"));
    assert_eq!(
        sharded, all,
        "the shards' images differ from the unsharded run's"
    );
    let done = ids_with(&records(&scratch.path("sharded")), "done");
    let unique: BTreeSet<&String> = done.iter().collect();
    assert_eq!(
        (done.len(), unique.len()),
        (12, 12),
        "a job missing or done twice"
    );
    for id in &done {
        assert!(all.contains_key(&format!("{id}.png")));
    }
    // The same job file gives the same ids; the report merges the four manifests.
    let report = batch(&scratch.0, &["--report", "sharded", "jobs.toml"], &[]);
    assert!(report.status.success(), "{}", stderr(&report));
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.contains("12 jobs, 12 done, 0 failed, 0 never ran"),
        "{text}"
    );
    let merged = std::fs::read_to_string(scratch.path("sharded/manifest.jsonl")).unwrap();
    assert_eq!(merged.lines().count(), 12);
}

#[test]
fn a_killed_shard_resumes_without_redoing_finished_jobs() {
    let scratch = setup("batch-resume");
    let mut child = Command::new(env!("CARGO_BIN_EXE_hiresfix"))
        .current_dir(&scratch.0)
        .args(["-q", "batch", "jobs.toml", "--out", "out"])
        .env_remove("HIRESFIX_PLUGIN_PATH")
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env("HIRESFIX_CACHE_DIR", repo().join("target/test-cache"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while scratch.path("out").is_dir() && pngs(&scratch.path("out")).len() < 3
        || !scratch.path("out").is_dir()
    {
        assert!(Instant::now() < deadline, "no images after 300 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished: BTreeSet<String> = pngs(&scratch.path("out"))
        .keys()
        .map(|k| k.trim_end_matches(".png").to_owned())
        .collect();
    assert!(
        finished.len() < 12,
        "the shard finished before it was killed"
    );
    let first_run = records(&scratch.path("out")).len();
    let out = batch(&scratch.0, &["jobs.toml", "--out", "out"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let all = records(&scratch.path("out"));
    let rerun = &all[first_run..];
    let skipped: BTreeSet<String> = ids_with(rerun, "skipped").into_iter().collect();
    let done = ids_with(rerun, "done");
    assert_eq!(
        skipped, finished,
        "the rerun redid a finished job or skipped an unfinished one"
    );
    assert_eq!(skipped.len() + done.len(), 12);
    assert_eq!(pngs(&scratch.path("out")).len(), 12);
}

#[test]
fn a_failing_job_is_recorded_and_the_shard_goes_on() {
    let scratch = setup("batch-fail");
    scratch.write(
        "jobs.toml",
        "profile = \"base.toml\"\n[[jobs]]\nseed = 4\n\"pass.2.denoise\" = [0.5, 7]\n",
    );
    let out = batch(&scratch.0, &["jobs.toml", "--out", "out"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("1 job(s) of shard 0/1 failed"),
        "{}",
        stderr(&out)
    );
    let records = records(&scratch.path("out"));
    assert_eq!(records.len(), 2);
    let failed: Vec<&Value> = records.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(
        failed[0]["error"].as_str().unwrap().contains("denoise"),
        "{}",
        failed[0]
    );
    assert_eq!(ids_with(&records, "done").len(), 1);
    let report = batch(&scratch.0, &["--report", "out"], &[]);
    assert_eq!(report.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&report.stdout).contains("2 jobs, 1 done, 1 failed"));
}

#[test]
fn devices_run_one_worker_each_over_the_shard() {
    let scratch = setup("batch-devices");
    let out = batch(
        &scratch.0,
        &["jobs.toml", "--out", "out", "--devices", "cpu,cpu"],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(scratch
        .path("out/manifest-shard0of1-worker0.jsonl")
        .is_file());
    assert!(scratch
        .path("out/manifest-shard0of1-worker1.jsonl")
        .is_file());
    let done = ids_with(&records(&scratch.path("out")), "done");
    assert_eq!(done.iter().collect::<BTreeSet<_>>().len(), 12);
    assert_eq!(done.len(), 12);
}

/// The container command of the committed Indexed Job, run as each pod would (Kubernetes
/// sets JOB_COMPLETION_INDEX): together the pods run every job once.
#[test]
fn the_kubernetes_index_reaches_the_shard() {
    let scratch = setup("batch-k8s");
    let yaml = std::fs::read_to_string(repo().join("deploy/kubernetes/hiresfix-indexed-job.yaml"))
        .unwrap();
    assert!(yaml.contains("completionMode: Indexed"));
    let field = |key: &str| -> String {
        let line = yaml
            .lines()
            .find(|l| l.trim_start().starts_with(key))
            .unwrap();
        line.split_once(':').unwrap().1.trim().to_owned()
    };
    let completions: u64 = field("completions:").parse().unwrap();
    let command: Vec<String> = serde_json::from_str(&field("command:")).unwrap();
    assert_eq!(command[..3], ["hiresfix", "-q", "batch"]);
    let shards = command
        .iter()
        .position(|a| a == "--shards")
        .map(|i| command[i + 1].clone());
    assert_eq!(
        shards,
        Some(completions.to_string()),
        "--shards must equal completions"
    );
    let args: Vec<String> = command[3..]
        .iter()
        .map(|a| {
            a.replace("/data/jobs.toml", "jobs.toml")
                .replace("/data/out", "out")
        })
        .collect();
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    for index in 0..completions {
        let out = batch(
            &scratch.0,
            &refs,
            &[("JOB_COMPLETION_INDEX", &index.to_string())],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        let manifest = scratch.path(&format!("out/manifest-shard{index}of{completions}.jsonl"));
        assert!(manifest.is_file(), "pod {index} did not run shard {index}");
    }
    let done = ids_with(&records(&scratch.path("out")), "done");
    assert_eq!(
        (done.len(), done.iter().collect::<BTreeSet<_>>().len()),
        (12, 12)
    );
}

#[test]
fn three_runs_of_one_shard_at_once_leave_each_image_once() {
    let scratch = setup("batch-race");
    scratch.write(
        "jobs.toml",
        "profile = \"base.toml\"\n[[jobs]]\nseed = [1, 2, 3, 4]\n",
    );
    let spawn = || {
        batch_command(&scratch.0, &["jobs.toml", "--out", "out"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let runs: Vec<_> = (0..3).map(|_| spawn()).collect();
    for run in runs {
        let out = run.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let names: Vec<String> = std::fs::read_dir(scratch.path("out"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with("manifest"))
        .collect();
    assert_eq!(names.len(), 4, "one image per job, nothing else: {names:?}");
    assert!(
        names
            .iter()
            .all(|n| n.len() == "0123456789abcdef.png".len()),
        "{names:?}"
    );
}

#[test]
fn a_job_file_of_billions_of_jobs_is_refused_before_it_is_expanded() {
    let scratch = setup("batch-product");
    let values: Vec<String> = (1..=40).map(|v| v.to_string()).collect();
    let list = format!("[{}]", values.join(", "));
    let keys = [
        "seed",
        "cfg",
        "pass.1.steps",
        "pass.2.steps",
        "batch",
        "pass.1.clip_skip",
    ];
    let table: String = keys.iter().map(|k| format!("\"{k}\" = {list}\n")).collect();
    scratch.write(
        "jobs.toml",
        &format!("profile = \"base.toml\"\n[[jobs]]\n{table}"),
    );
    let (code, err, peak_mib) = crate::common::rss::run_with_peak_rss(&mut batch_command(
        &scratch.0,
        &["jobs.toml", "--shard", "0/1000", "--out", "out"],
    ));
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("brings the jobs to 4096000000 (at most 100000)"),
        "{err}"
    );
    assert!(peak_mib < 300.0, "peak RSS {peak_mib:.0} MiB");
    assert!(!scratch.path("out").exists(), "nothing written");
}
