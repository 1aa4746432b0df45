//! The bad-input corpus rule (README "Reliability"), shared by `bad_input.rs`, `png_hostile.rs`
//! and `files_hostile.rs`: a case's command fails with its exit code and one `error: ` line
//! under 300 characters containing the expected text, no panic, and no file written.
use std::path::{Path, PathBuf};

use super::{hiresfix, stderr, Scratch};

/// What one case's command did.
pub struct Run {
    pub code: Option<i32>,
    /// All of stderr.
    pub err: String,
    /// The failure's line (lint warnings about the profile may come before it).
    pub line: String,
    /// Lines on stderr other than warnings.
    pub lines: usize,
    /// Whether the folder holds other files than before the command.
    pub wrote: bool,
}

/// A scratch folder for case `name` (the case's setup makes its files there).
pub fn scratch(prefix: &str, name: &str) -> Scratch {
    Scratch::new(&format!("{prefix}-{}", name.replace(' ', "-")))
}

/// Runs `hiresfix ARGS` in `scratch`.
pub fn run(scratch: &Scratch, args: &[String]) -> Run {
    let before = files_under(&scratch.0);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = hiresfix(&scratch.0, &refs, &[]);
    let err = stderr(&out);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("warning: "))
        .collect();
    Run {
        code: out.status.code(),
        line: lines.first().copied().unwrap_or("").to_owned(),
        lines: lines.len(),
        wrote: files_under(&scratch.0) != before,
        err,
    }
}

impl Run {
    /// Every way the run breaks the rule, for exit `code` and a line containing each `expect`.
    pub fn problems(&self, code: i32, expect: &[&str]) -> Vec<String> {
        let line = &self.line;
        let problems = [
            (self.code != Some(code)).then(|| format!("exit {:?}, expected {code}", self.code)),
            (self.lines != 1).then(|| format!("{} lines on stderr", self.lines)),
            (!line.starts_with("error: ")).then(|| "does not start with `error: `".to_string()),
            (line.chars().count() >= 300).then(|| format!("{} characters", line.chars().count())),
            expect
                .iter()
                .find(|e| !line.contains(**e))
                .map(|e| format!("does not contain `{e}`")),
            (self.err.contains("panicked") || self.err.contains("RUST_BACKTRACE"))
                .then(|| "panicked".to_string()),
            self.wrote.then(|| "wrote files".to_string()),
        ];
        problems.into_iter().flatten().collect()
    }
}

/// `Ok` without problems, else one report naming the case.
pub fn verdict(name: &str, problems: Vec<String>, err: &str) -> Result<(), String> {
    match problems.is_empty() {
        true => Ok(()),
        false => Err(format!(
            "{name}: {}\n    stderr: {err}",
            problems.join("; ")
        )),
    }
}

/// Fails listing every case that broke the rule.
pub fn assert_all_hold(results: Vec<Result<(), String>>) {
    let total = results.len();
    let failures: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    assert!(
        failures.is_empty(),
        "{} of {total} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every file and folder below `dir`, sorted.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            found.push(p);
        }
    }
    found.sort();
    found
}
