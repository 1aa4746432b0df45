//! A job file: a base profile and tables of overrides, each table expanded to the cartesian
//! product of its list values, every job identified by a hash of its profile and assigned to
//! one shard by that hash.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::limits::MAX_JOBS;
use crate::profile::Profile;

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    /// The base profile, relative to the job file.
    profile: PathBuf,
    #[serde(default)]
    jobs: Vec<toml::Table>,
}

/// One job: its id, the overrides that make it, and its profile (or why it cannot be made).
pub struct Job {
    pub id: String,
    /// `key=value` overrides, as `--set` takes them.
    pub sets: Vec<String>,
    pub profile: Result<Profile, String>,
}

impl Job {
    /// The shard (of `shards`) this job belongs to: its id's hash modulo the count.
    pub fn shard(&self, shards: u64) -> u64 {
        self.hash() % shards
    }

    /// Within a shard, the worker (of `workers`) that runs it.
    pub fn worker(&self, shards: u64, workers: u64) -> u64 {
        (self.hash() / shards) % workers
    }

    fn hash(&self) -> u64 {
        u64::from_str_radix(&self.id[..16], 16).unwrap_or(0)
    }
}

/// The jobs of a job file and the folder its base profile's relative paths start from.
pub struct Jobs {
    pub jobs: Vec<Job>,
    pub base_dir: PathBuf,
    pub base: Profile,
}

/// Reads `path` and expands every table into its jobs, in file order; within a table the
/// keys vary in sorted order, the last fastest.
pub fn load(path: &Path) -> Result<Jobs> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read job file {}", path.display()))?;
    let file: JobFile = toml::from_str(&text)
        .map_err(|e| anyhow!("job file {}: {}", path.display(), e.message()))?;
    let folder = path.parent().unwrap_or(Path::new("")).to_path_buf();
    let profile_path = folder.join(&file.profile);
    let base = Profile::load(&profile_path)
        .with_context(|| format!("job file {}: its base profile", path.display()))?;
    if file.jobs.is_empty() {
        bail!(
            "job file {}: no [[jobs]] table — add one, e.g. [[jobs]] seed = [1, 2]",
            path.display()
        );
    }
    let mut total: u64 = 0;
    for (t, table) in file.jobs.iter().enumerate() {
        let count = product_len(table);
        total = total.saturating_add(count);
        if total > MAX_JOBS {
            bail!(
                "job file {}: [[jobs]] table {} brings the jobs to {} (at most {MAX_JOBS}) — split the file and run the parts one after another",
                path.display(),
                t + 1,
                if count == u64::MAX { "more than 2^64".to_owned() } else { total.to_string() }
            );
        }
    }
    let mut jobs = Vec::new();
    for (t, table) in file.jobs.iter().enumerate() {
        for sets in expand(table)
            .with_context(|| format!("job file {}: [[jobs]] table {}", path.display(), t + 1))?
        {
            let profile = base
                .with_overrides(&sets)
                .map_err(|e| crate::commands::one_line(&e));
            let id = job_id(&base, &sets, profile.as_ref().ok());
            jobs.push(Job { id, sets, profile });
        }
    }
    let mut seen = std::collections::HashSet::new();
    jobs.retain(|j| seen.insert(j.id.clone())); // the same job twice is one job
    Ok(Jobs {
        jobs,
        base_dir: profile_path.parent().unwrap_or(Path::new("")).to_path_buf(),
        base,
    })
}

/// The number of jobs a table expands to (saturating), counted before any is built.
fn product_len(table: &toml::Table) -> u64 {
    table.values().fold(1u64, |n, v| match v {
        toml::Value::Array(list) => n.saturating_mul(list.len() as u64),
        _ => n,
    })
}

/// A table's cartesian product as `key=value` lists (a scalar is a list of one).
fn expand(table: &toml::Table) -> Result<Vec<Vec<String>>> {
    let mut product: Vec<Vec<String>> = vec![Vec::new()];
    for (key, value) in table {
        let values = match value {
            toml::Value::Array(list) if list.is_empty() => {
                bail!("`{key}` has no values")
            }
            toml::Value::Array(list) => list.clone(),
            other => vec![other.clone()],
        };
        product = product
            .into_iter()
            .flat_map(|prefix| {
                values.iter().map(move |v| {
                    let mut sets = prefix.clone();
                    sets.push(format!("{key}={v}"));
                    sets
                })
            })
            .collect();
    }
    Ok(product)
}

/// A hash of the job's resolved profile (of the base and overrides when they do not apply),
/// 16 hex digits: the same job file always gives the same ids.
fn job_id(base: &Profile, sets: &[String], profile: Option<&Profile>) -> String {
    let text = match profile.and_then(|p| toml::to_string(p).ok()) {
        Some(text) => text,
        None => format!(
            "{}\n{}",
            toml::to_string(base).unwrap_or_default(),
            sets.join("\n")
        ),
    };
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Shard `I/N` from `--shard`, else Slurm's array variables, else Kubernetes' completion
/// index with `--shards N`; `0/1` (everything) when none is set.
pub fn shard_of(flag: Option<&str>, shards: Option<u64>) -> Result<(u64, u64)> {
    let parse = |what: &str, v: &str| -> Result<u64> {
        v.trim()
            .parse()
            .map_err(|_| anyhow!("{what} = {v}: not a whole number"))
    };
    let (index, count) = if let Some(flag) = flag {
        let (i, n) = flag
            .split_once('/')
            .ok_or_else(|| anyhow!("--shard {flag}: expected I/N, e.g. --shard 0/4"))?;
        (parse("--shard", i)?, parse("--shard", n)?)
    } else if let Ok(id) = std::env::var("SLURM_ARRAY_TASK_ID") {
        let id = parse("SLURM_ARRAY_TASK_ID", &id)?;
        match shards {
            // The task id is the shard: a rerun of some shards (`--array=2`) keeps them.
            Some(n) => (id, n),
            None => {
                let count = std::env::var("SLURM_ARRAY_TASK_COUNT")
                    .map_err(|_| anyhow!("SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT: give --shards N"))?;
                let min = std::env::var("SLURM_ARRAY_TASK_MIN").unwrap_or_else(|_| "0".into());
                let min = parse("SLURM_ARRAY_TASK_MIN", &min)?;
                let index = id.checked_sub(min).ok_or_else(|| {
                    anyhow!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")
                })?;
                (index, parse("SLURM_ARRAY_TASK_COUNT", &count)?)
            }
        }
    } else if let Ok(index) = std::env::var("JOB_COMPLETION_INDEX") {
        let count = shards.ok_or_else(|| {
            anyhow!("JOB_COMPLETION_INDEX is set: give --shards N (the Job's completions)")
        })?;
        (parse("JOB_COMPLETION_INDEX", &index)?, count)
    } else {
        match shards {
            Some(n) => bail!("--shards {n} without a shard index: give --shard I/{n}, or run under a Slurm array or a Kubernetes Indexed Job"),
            None => (0, 1),
        }
    };
    if count == 0 || index >= count {
        bail!("shard {index}/{count}: the index must be below the count (0-based)");
    }
    if let Some(n) = shards {
        if n != count {
            bail!("--shards {n} but the shard count is {count}: give one count");
        }
    }
    Ok((index, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_expands_to_the_product_last_key_fastest() {
        let table: toml::Table =
            toml::from_str("prompt = [\"a\", \"b\"]\nseed = [1, 2, 3]\ncfg = 5").unwrap();
        let sets = expand(&table).unwrap();
        assert_eq!(sets.len(), 6);
        assert_eq!(sets[0], vec!["cfg=5", "prompt=\"a\"", "seed=1"]);
        assert_eq!(sets[1], vec!["cfg=5", "prompt=\"a\"", "seed=2"]);
        assert_eq!(sets[5], vec!["cfg=5", "prompt=\"b\"", "seed=3"]);
    }

    #[test]
    fn shard_flags_are_checked() {
        assert_eq!(shard_of(Some("2/4"), None).unwrap(), (2, 4));
        assert!(shard_of(Some("4/4"), None).is_err());
        assert!(shard_of(Some("1/4"), Some(3)).is_err());
        assert!(shard_of(Some("x"), None).is_err());
    }
}
