//! Textual-inversion embeddings (A1111 rules) through the host and the plugin ABI: prompts that
//! name the tiny SD 1.x, SD 2.x and SDXL embeddings (a `.pt` converted by `hiresfix convert` among
//! them) match diffusers' `load_textual_inversion` conditioning with A1111's chunking and
//! weighting (reference: scripts/make_embedding_reference.py); infotext `TI hashes` and its
//! import; the warning for another family's embedding.
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::*;
use hiresfix::generate::prepare;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::Tensor;
use host_api::EncodeRequest;

const TOLERANCE: f64 = 1e-5;

fn data() -> PathBuf {
    repo().join("tests/data/embeddings")
}

fn reference() -> HashMap<String, Tensor> {
    tensors::read_reference(&data().join("reference.safetensors"))
}

/// The prompts the reference encoded, by key (`sd1.short`, ...).
fn prompt(key: &str) -> String {
    let text = std::fs::read_to_string(data().join("reference.json")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    doc["prompts"][key]["prompt"].as_str().unwrap().to_owned()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    f64::try_from((a - b).abs().max()).unwrap()
}

/// The SD 1.x embeddings in a scratch folder: the safetensors ones copied, the `.pt` converted.
fn sd1_folder(scratch: &Scratch) -> PathBuf {
    let dir = scratch.path("sd1");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["tinyneg", "tinylong"] {
        let file = format!("{name}.safetensors");
        std::fs::copy(data().join("sd1").join(&file), dir.join(&file)).unwrap();
    }
    let pt = data().join("sd1/tinystyle.pt");
    let out = dir.join("tinystyle.safetensors");
    let run = hiresfix(
        &scratch.0,
        &["convert", pt.to_str().unwrap(), "-o", out.to_str().unwrap()],
        &[],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    dir
}

/// The conditioning `(context, vector)` of `text` by the model of `checkpoint` with the
/// embeddings found in `dir`.
fn encode(checkpoint: &Path, dir: &Path, text: &str) -> (Tensor, Option<Tensor>) {
    let registry = Registry::load(&[], &Default::default());
    let profile = tiny_profile(checkpoint, "", "", "");
    let profile = Profile::parse(&profile, "embeddings").unwrap();
    let mut job = prepare(profile, &registry, &repo()).unwrap();
    let (model, _) = job
        .models
        .get(&job.settings, &job.plans[0].checkpoint, None, &[])
        .unwrap();
    let specs = hiresfix::embeddings::files(&[dir.to_path_buf()]);
    let states = job.models.set_embeddings(&model, &specs).unwrap();
    assert!(states.iter().all(|s| s.loaded), "{states:?}");
    assert_eq!(states.len(), specs.len());
    let mut conds = model
        .encode_prompts(&EncodeRequest::pair("", text, 1, 64, 64))
        .unwrap();
    let mut cond = conds.remove(1);
    let vector = (cond.len() == 2).then(|| cond.remove(1));
    (cond.remove(0), vector)
}

#[test]
fn prompts_naming_embeddings_match_diffusers_with_a1111_chunking_and_weights() {
    let r = reference();
    let scratch = Scratch::new("embeddings-parity");
    let sd1 = sd1_folder(&scratch);
    // `hiresfix convert` wrote the .pt's vectors exactly.
    let converted = tensors::read_reference(&sd1.join("tinystyle.safetensors"));
    assert_eq!(
        max_diff(&converted["emb_params"], &r["sd1.tinystyle.vectors"]),
        0.0
    );
    // Without the embeddings the names are text: far from the reference (the test can fail).
    let empty = scratch.path("none");
    std::fs::create_dir_all(&empty).unwrap();
    let (plain, _) = encode(&tiny_ldm(), &empty, &prompt("sd1.short"));
    assert!(max_diff(&plain, &r["sd1.short.context"]) > 1e-2);
    for key in ["sd1.short", "sd1.long"] {
        let (context, _) = encode(&tiny_ldm(), &sd1, &prompt(key));
        let d = max_diff(&context, &r[&format!("{key}.context")]);
        eprintln!("{key}: max |Δ| {d:.2e}");
        assert!(d < TOLERANCE, "{key}: {d}");
    }
    // SD 2.x: OpenCLIP-H, padded with 0 after the end token.
    let sd2 = repo().join("tests/data/sd2-tiny/sd2-tiny.safetensors");
    let (context, _) = encode(&sd2, &data().join("sd2"), &prompt("sd2.short"));
    let d = max_diff(&context, &r["sd2.short.context"]);
    eprintln!("sd2.short: max |Δ| {d:.2e}");
    assert!(d < TOLERANCE, "sd2.short: {d}");
    let sdxl = repo().join("tests/data/sdxl-tiny/sdxl-tiny.safetensors");
    for key in ["sdxl.short", "sdxl.long"] {
        let (context, vector) = encode(&sdxl, &data().join("sdxl"), &prompt(key));
        let pooled = vector.unwrap().narrow(1, 0, 16);
        let d = max_diff(&context, &r[&format!("{key}.context")]);
        let p = max_diff(&pooled, &r[&format!("{key}.pooled")]);
        eprintln!("{key}: max |Δ| {d:.2e}, pooled {p:.2e}");
        assert!(d < TOLERANCE && p < TOLERANCE, "{key}: {d} {p}");
    }
}

/// What `hiresfix generate` prints and writes for `prompt` on `checkpoint` with the
/// embeddings of `dir`.
fn generate_with(scratch: &Scratch, checkpoint: &Path, dir: &Path, prompt: &str) -> Output {
    let top = format!("embedding_dirs = [\"{}\"]", dir.display());
    let text = tiny_profile(checkpoint, &top, "", "")
        .replace(
            "prompt = \"a photo of a cat\"",
            &format!("prompt = \"{prompt}\""),
        )
        .replace("negative = \"blurry\"", "negative = \"tinyneg\"");
    generate_as(scratch, "run", &text)
}

fn sha12(path: &Path) -> String {
    sha256_12(&std::fs::read(path).unwrap())
}

#[test]
fn the_infotext_lists_ti_hashes_and_import_finds_the_embeddings_again() {
    let scratch = Scratch::new("embeddings-infotext");
    let dir = sd1_folder(&scratch);
    let out = generate_with(
        &scratch,
        &tiny_ldm(),
        &dir,
        "a (tinylong:1.2) cat, [tinystyle], tinylong",
    );
    let png = stdout_lines(&out).pop().unwrap();
    let parameters = chunk(&scratch.0.join(png), "parameters");
    let hash = |name: &str| sha12(&dir.join(format!("{name}.safetensors")));
    // The prompt's in order of appearance, then the negative's; each once.
    let expected = format!(
        "TI hashes: \"tinylong: {}, tinystyle: {}, tinyneg: {}\"",
        hash("tinylong"),
        hash("tinystyle"),
        hash("tinyneg")
    );
    assert!(parameters.contains(&expected), "{parameters}");

    // An A1111 image naming them: import puts their folder in embedding_dirs.
    let text = format!("a tinyneg cat\nSteps: 20, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 512x512, {expected}, Version: v1.10.1");
    let image = hiresfix::output::encode_png(8, 8, &[0; 8 * 8 * 3], &text, "", None).unwrap();
    std::fs::write(scratch.path("a1111.png"), image).unwrap();
    let envs: [(&str, &Path); 1] = [("HIRESFIX_EMBEDDING_PATH", &dir)];
    let run = hiresfix(&scratch.0, &["replay", "--to-profile", "a1111.png"], &envs);
    assert!(run.status.success(), "{}", stderr(&run));
    let imported = Profile::parse(&String::from_utf8_lossy(&run.stdout), "imported").unwrap();
    assert_eq!(imported.embedding_dirs, std::slice::from_ref(&dir));
    // Another version of a file (its hash differs) is a note, not a folder.
    let stale = text.replace(&hash("tinyneg"), "000000000000");
    let image = hiresfix::output::encode_png(8, 8, &[0; 8 * 8 * 3], &stale, "", None).unwrap();
    std::fs::write(scratch.path("stale.png"), image).unwrap();
    let run = hiresfix(&scratch.0, &["replay", "--to-profile", "stale.png"], &envs);
    assert!(
        stderr(&run).contains("has hash") && stderr(&run).contains("tinyneg"),
        "{}",
        stderr(&run)
    );
}

#[test]
fn an_sd1_embedding_in_an_sdxl_prompt_is_one_warning_naming_the_file() {
    let scratch = Scratch::new("embeddings-mismatch");
    let dir = sd1_folder(&scratch);
    let sdxl = repo().join("tests/data/sdxl-tiny/sdxl-tiny.safetensors");
    let out = generate_with(&scratch, &sdxl, &dir, "a tinylong cat");
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("tinylong")).collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].starts_with("warning: "), "{err}");
    assert!(warnings[0].contains("tinylong.safetensors"), "{err}");
    // The negative names tinyneg: its own single warning; the unused tinystyle gets none.
    assert_eq!(
        err.lines().filter(|l| l.contains("tinyneg")).count(),
        1,
        "{err}"
    );
    assert!(!err.contains("tinystyle"), "{err}");
    // No hash for an embedding that was not used.
    let png = stdout_lines(&out).pop().unwrap();
    assert!(!chunk(&scratch.0.join(png), "parameters").contains("TI hashes"));
}
