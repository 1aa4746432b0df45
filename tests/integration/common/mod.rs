//! Shared helpers for the host's integration tests.
#![allow(dead_code)]
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;

pub mod corpus;
pub mod files;
pub mod rss;
pub mod tensors;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn tiny_ldm() -> PathBuf {
    repo().join("tests/data/sd1-tiny/sd1-tiny.safetensors")
}

pub fn tiny_diffusers() -> PathBuf {
    repo().join("tests/data/sd1-tiny/diffusers")
}

/// A fresh folder for one test, removed when dropped.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// Every file below the folder whose name ends in `.png`.
    pub fn pngs(&self) -> Vec<PathBuf> {
        let mut found = Vec::new();
        let mut stack = vec![self.0.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let p = entry.path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.extension().is_some_and(|e| e == "png") {
                    found.push(p);
                }
            }
        }
        found.sort();
        found
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The first 12 hex digits of the sha256 of `bytes` (A1111's short hashes).
pub fn sha256_12(bytes: &[u8]) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(bytes);
    digest
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()[..12]
        .to_owned()
}

/// The text of one PNG chunk (`parameters`, `hiresfix-profile`).
pub fn chunk(path: &Path, key: &str) -> String {
    hiresfix::output::read_text_chunks(path)
        .unwrap()
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .expect(key)
}

/// Runs the hiresfix binary in `cwd`.
pub fn hiresfix(cwd: &Path, args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hiresfix"));
    cmd.current_dir(cwd)
        .args(args)
        .env_remove("HIRESFIX_PLUGIN_PATH")
        // Hashes cached for the tests, not in the user's cache folder.
        .env("HIRESFIX_CACHE_DIR", repo().join("target/test-cache"))
        .env("RUST_LOG", "warn");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("hiresfix runs")
}

/// The width and height of each PNG at `paths` (relative to the scratch folder).
pub fn png_sizes(scratch: &Scratch, paths: &[String]) -> Vec<(u32, u32)> {
    paths
        .iter()
        .map(|p| {
            let (w, h, _) = hiresfix::output::read_rgb8(&scratch.path(p)).unwrap();
            (w, h)
        })
        .collect()
}

/// The lines a successful run printed on stdout (the paths it wrote).
pub fn stdout_lines(out: &Output) -> Vec<String> {
    assert!(out.status.success(), "{}", stderr(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

/// The words of `check`'s memory-table row of `pass` at `size` (exactly one such row).
pub fn memory_row(lines: &[String], pass: &str, size: &str) -> Vec<String> {
    let found: Vec<&String> = lines
        .iter()
        .filter(|l| l.split_whitespace().take(2).eq([pass, size]))
        .collect();
    assert_eq!(found.len(), 1, "{lines:?}");
    found[0].split_whitespace().map(String::from).collect()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A small 2-pass profile on the tiny SD1 test model; pass 1 uses euler unless `pass1` names
/// a sampler.
/// Writes `profile` as `NAME.toml` in the scratch folder and runs `generate` on it to
/// `NAME.png`.
pub fn generate_as(scratch: &Scratch, name: &str, profile: &str) -> Output {
    let path = scratch.write(&format!("{name}.toml"), profile);
    let png = format!("{name}.png");
    hiresfix(
        &scratch.0,
        &["generate", path.to_str().unwrap(), "-o", &png],
        &[],
    )
}

pub fn tiny_profile(checkpoint: &Path, extra_top: &str, pass1: &str, pass2: &str) -> String {
    let pass1 = if pass1.contains("sampler") {
        pass1.to_owned()
    } else {
        format!("sampler = \"euler\"\n{pass1}")
    };
    format!(
        r#"seed = 7
prompt = "a photo of a cat"
negative = "blurry"
cfg = 5.0
device = "cpu"
output = "out/img-{{seed}}-{{n}}.png"
{extra_top}

[model]
checkpoint = "{}"

[[pass]]
width = 32
height = 32
steps = 3
{pass1}

[[pass]]
scale = 2.0
steps = 2
denoise = 0.5
{pass2}
"#,
        checkpoint.display()
    )
}

/// The workspace's target folder (outside crates build there too, so libtorch's bindings are
/// not rebuilt).
fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Runs `cargo build` in `dir` into the workspace's target folder and copies the dylib
/// `lib_name` to `keep` (a later build of a crate of the same name overwrites the original).
fn cargo_build(dir: &Path, lib_name: &str, keep: &Path) -> PathBuf {
    // The workspace's lock file pins the same dependency versions, so artifacts are reused.
    std::fs::copy(repo().join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    let status = Command::new(env!("CARGO"))
        .current_dir(dir)
        .args(["build", "--quiet", "--target-dir"])
        .arg(target_dir())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "building {} failed", dir.display());
    let built = target_dir().join("debug").join(format!("lib{lib_name}.so"));
    std::fs::create_dir_all(keep).unwrap();
    let file = keep.join(built.file_name().unwrap());
    std::fs::copy(&built, &file).unwrap();
    file
}

/// Built once per test run, by key: tests share the file (and run in parallel).
fn built_once(key: String, build: impl FnOnce() -> PathBuf) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    // Held while building: cargo would serialise the builds on its lock anyway.
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    built.entry(key).or_insert_with(build).clone()
}

/// Builds a plugin crate that lives outside the workspace, as its own `Cargo.toml` says (the
/// examples: against the frozen host-api 1.0.0 in `compat/`), and returns the built dylib.
pub fn build_outside_plugin(manifest_dir: &str, lib_name: &str) -> PathBuf {
    built_once(format!("{manifest_dir} {lib_name}"), || {
        let keep = target_dir().join("outside-plugins/as-written");
        cargo_build(&repo().join(manifest_dir), lib_name, &keep)
    })
}

/// The same crate built against the current `host-api/` instead (a copy whose `Cargo.toml`
/// points there): what the plugin is when its author rebuilds it today.
pub fn build_against_current_host_api(manifest_dir: &str, lib_name: &str) -> PathBuf {
    built_once(format!("current {manifest_dir} {lib_name}"), || {
        let source = repo().join(manifest_dir);
        let copy = target_dir()
            .join("outside-plugins/current-src")
            .join(lib_name);
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir_all(copy.join("src")).unwrap();
        for entry in std::fs::read_dir(source.join("src")).unwrap().flatten() {
            std::fs::copy(entry.path(), copy.join("src").join(entry.file_name())).unwrap();
        }
        let manifest = std::fs::read_to_string(source.join("Cargo.toml")).unwrap();
        let current = format!("path = \"{}\"", repo().join("host-api").display());
        let rewritten = manifest.replace("path = \"../../compat/host-api-1.0.0\"", &current);
        assert_ne!(
            manifest, rewritten,
            "{manifest_dir} names the frozen host-api"
        );
        std::fs::write(copy.join("Cargo.toml"), rewritten).unwrap();
        let keep = target_dir().join("outside-plugins/current");
        cargo_build(&copy, lib_name, &keep)
    })
}

/// Copies `dylibs` into a fresh plugin folder inside `scratch`.
pub fn plugin_dir(scratch: &Scratch, name: &str, dylibs: &[&Path]) -> PathBuf {
    let dir = scratch.path(name);
    std::fs::create_dir_all(&dir).unwrap();
    for lib in dylibs {
        std::fs::copy(lib, dir.join(lib.file_name().unwrap())).unwrap();
    }
    dir
}

/// The parity suites' 2-pass profile as the reference scripts run it: seed 1234, CFG 5, fp32
/// on the CPU, the "normal" schedule; pass 1 `width`×`height` of `steps1` steps, then `pass1`
/// lines (its sampler, ...); pass 2 twice the size, 4 steps at denoise 0.5, then `pass2` lines
/// (its upscaler, sampler, ...). `prompt`, `negative` and `checkpoint` are quoted here.
pub fn reference_profile(
    (prompt, negative, checkpoint): (&str, &str, &Path),
    (width, height, steps1): (u32, u32, u32),
    pass1: &str,
    pass2: &str,
) -> String {
    let q = |s: &str| toml::Value::from(s).to_string();
    format!(
        r#"seed = 1234
prompt = {prompt}
negative = {negative}
cfg = 5.0
device = "cpu"
dtype = "fp32"
[model]
checkpoint = {checkpoint}
[[pass]]
width = {width}
height = {height}
steps = {steps1}
schedule = "normal"
{pass1}
[[pass]]
scale = 2.0
steps = 4
denoise = 0.5
schedule = "normal"
{pass2}
"#,
        prompt = q(prompt),
        negative = q(negative),
        checkpoint = q(&checkpoint.to_string_lossy()),
    )
}
