//! Checkpoint merging with A1111's checkpoint-merger semantics — a weighted sum
//! `Σ wᵢ·Xᵢ`, or add-difference `A + (B − C)·m` — streamed tensor by tensor from the inputs'
//! memory maps into the output file, so merging two SDXL files never holds either in memory.
//! The output keeps the first input's keys, layout and dtypes (fp8 tensors are written as fp16:
//! exact for every fp8 value, and a merged weight rounded back to fp8 would lose the merge),
//! carries the recipe in its safetensors metadata, and loads like any checkpoint.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use tch::{Kind, Tensor};

use crate::checkpoint::safetensors::{is_float, is_fp8, SafetensorsFile, TensorEntry};
use crate::checkpoint::Checkpoint;

/// How the inputs combine.
#[derive(Debug, Clone, PartialEq)]
pub enum Recipe {
    /// `Σ weight·X` over (file, weight).
    WeightedSum(Vec<(PathBuf, f64)>),
    /// `A + (B − C)·multiplier`.
    AddDifference {
        a: PathBuf,
        b: PathBuf,
        c: PathBuf,
        multiplier: f64,
    },
}

impl Recipe {
    fn inputs(&self) -> Vec<&Path> {
        match self {
            Recipe::WeightedSum(list) => list.iter().map(|(p, _)| p.as_path()).collect(),
            Recipe::AddDifference { a, b, c, .. } => vec![a, b, c],
        }
    }

    /// Each input's factor: the weights, or (1, m, −m).
    fn factors(&self) -> Vec<f64> {
        match self {
            Recipe::WeightedSum(list) => list.iter().map(|(_, w)| *w).collect(),
            Recipe::AddDifference { multiplier, .. } => vec![1.0, *multiplier, -multiplier],
        }
    }

    /// The recipe as text, for the output's metadata and infotext.
    pub fn describe(&self) -> String {
        let name = |p: &Path| {
            p.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        };
        match self {
            Recipe::WeightedSum(list) => list
                .iter()
                .map(|(p, w)| format!("{}:{}", name(p), crate::health::number(*w)))
                .collect::<Vec<_>>()
                .join(" + "),
            Recipe::AddDifference {
                a,
                b,
                c,
                multiplier,
            } => format!(
                "{} + ({} - {}) * {}",
                name(a),
                name(b),
                name(c),
                crate::health::number(*multiplier)
            ),
        }
    }
}

/// What a merge did, for the user.
#[derive(Debug, Default)]
pub struct MergeReport {
    pub merged: usize,
    /// Tensors some input lacks (or has in another shape), copied from the first.
    pub copied: Vec<String>,
    /// An inpainting checkpoint (first) merged with text-to-image ones: its input
    /// convolution merged on the latent's channels only (A1111's merger).
    pub inpainting: bool,
    /// Tensors the first input stores as fp8, written as fp16.
    pub widened: usize,
}

/// The input convolution's channels of the checkpoint at `path` (4, or 9 for inpainting).
fn input_channels(ckpt: &Checkpoint) -> i64 {
    let key = format!("{}input_blocks.0.0.weight", crate::convert::UNET_PREFIX);
    ckpt.shape(&key)
        .and_then(|s| s.get(1).copied())
        .unwrap_or(0)
}

/// Merges the inputs of `recipe` into `out` (written to a temporary name, then renamed).
pub fn merge(recipe: &Recipe, out: &Path) -> Result<MergeReport> {
    let paths = recipe.inputs();
    let mut family = None;
    let mut channels = Vec::new();
    for path in &paths {
        if path.is_dir() {
            bail!(
                "{}: merging reads single-file checkpoints; this is a diffusers folder",
                path.display()
            );
        }
        let ckpt = Checkpoint::open(path)?;
        let found = ckpt.family()?;
        channels.push(input_channels(&ckpt));
        match family {
            None => family = Some(found),
            Some(first) if first.id != found.id => bail!(
                "{} is {} but {} is {} — only checkpoints of one family merge",
                paths[0].display(),
                first.name,
                path.display(),
                found.name
            ),
            Some(_) => {}
        }
    }
    // A1111's merger (extras.py run_modelmerger): an inpainting checkpoint merges with
    // text-to-image ones when it is A, its input convolution on the latent's channels.
    if let Some(i) = channels.iter().position(|c| *c != channels[0]) {
        let (first, other) = (paths[0].display(), paths[i].display());
        match channels[0] {
            9 => {}
            _ => bail!(
                "merge: {other} is an inpainting checkpoint but the first, {first}, is not — put the inpainting checkpoint first"
            ),
        }
    }
    let files = paths
        .iter()
        .map(|p| SafetensorsFile::open(p))
        .collect::<Result<Vec<_>>>()?;
    let factors = recipe.factors();
    let first = &files[0];
    let header = header(first.entries(), &recipe.describe())?;
    let tmp = out.with_file_name(format!(
        ".{}.tmp",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    if let Some((path, w)) = paths.iter().zip(&factors).find(|(_, w)| !w.is_finite()) {
        bail!(
            "merge: the weight {} of {} is not a finite number",
            crate::health::number(*w),
            path.display()
        );
    }
    let written = write_merged(&tmp, &header, &files, &factors, &recipe.describe());
    let report = match written {
        Ok(report) => report,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    std::fs::rename(&tmp, out).with_context(|| format!("{}: cannot write", out.display()))?;
    Ok(report)
}

/// The output header: the first input's tensors at consecutive offsets, the recipe as metadata,
/// padded with spaces to a multiple of 8 bytes (as the safetensors writer does).
fn header(entries: &BTreeMap<String, TensorEntry>, recipe: &str) -> Result<Vec<u8>> {
    let mut json = serde_json::Map::new();
    json.insert(
        "__metadata__".into(),
        serde_json::json!({ "format": "pt", "hiresfix_merge": recipe }),
    );
    let mut offset = 0usize;
    for (name, entry) in entries {
        let end = offset + entry.read_bytes();
        json.insert(
            name.clone(),
            serde_json::json!({ "dtype": entry.read_dtype(), "shape": entry.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut bytes = serde_json::to_vec(&serde_json::Value::Object(json))?;
    while bytes.len() % 8 != 0 {
        bytes.push(b' ');
    }
    Ok(bytes)
}

fn write_merged(
    tmp: &Path,
    header: &[u8],
    files: &[SafetensorsFile],
    factors: &[f64],
    recipe: &str,
) -> Result<MergeReport> {
    let shown = tmp.display();
    let file = std::fs::File::create(tmp).with_context(|| format!("{shown}: cannot create"))?;
    let mut out = std::io::BufWriter::new(file);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header)?;
    let mut report = MergeReport::default();
    let first = &files[0];
    for (name, entry) in first.entries() {
        if is_fp8(&entry.dtype) {
            report.widened += 1;
        }
        let shapes_agree = files.iter().all(|f| {
            f.entries()
                .get(name)
                .is_some_and(|e| e.shape == entry.shape)
        });
        let latent_only = is_float(&entry.dtype) && !shapes_agree && inpainting_mix(files, name);
        let tensor = if latent_only {
            // The inpainting input convolution: the latent's 4 channels merged, the mask's
            // and masked image's kept from the first (A1111's merger).
            report.merged += 1;
            report.inpainting = true;
            let kind =
                crate::checkpoint::safetensors::kind_of(entry.read_dtype()).unwrap_or(Kind::Float);
            let latent = weighted(files, factors, name, true)?;
            let rest = first
                .read(name)?
                .to_kind(Kind::Float)
                .narrow(1, 4, entry.shape[1] - 4);
            let merged = Tensor::f_cat(&[latent, rest], 1)?.to_kind(kind);
            finite(merged, recipe, name, kind)?
        } else if is_float(&entry.dtype) && shapes_agree {
            report.merged += 1;
            let kind =
                crate::checkpoint::safetensors::kind_of(entry.read_dtype()).unwrap_or(Kind::Float);
            let merged = weighted(files, factors, name, false)?.to_kind(kind);
            finite(merged, recipe, name, kind)?
        } else {
            if is_float(&entry.dtype) {
                report.copied.push(name.clone());
            }
            first.read(name)?
        };
        let mut bytes = vec![0u8; entry.read_bytes()];
        tensor
            .contiguous()
            .f_copy_data_u8(&mut bytes, tensor.numel())
            .with_context(|| format!("{shown}: tensor `{name}`"))?;
        out.write_all(&bytes)
            .with_context(|| format!("{shown}: cannot write (disk full?)"))?;
    }
    out.flush()
        .with_context(|| format!("{shown}: cannot write (disk full?)"))?;
    Ok(report)
}

/// Whether `name` is an inpainting input convolution in the first input (`[out, 9, k, k]`)
/// and a text-to-image one (`[out, 4, k, k]`) or the same in every other.
fn inpainting_mix(files: &[SafetensorsFile], name: &str) -> bool {
    let shape = |f: &SafetensorsFile| f.entries().get(name).map(|e| e.shape.clone());
    let Some(first) = shape(&files[0]) else {
        return false;
    };
    let latent_only = match first.as_slice() {
        [out, 9, kh, kw] => vec![*out, 4, *kh, *kw],
        _ => return false,
    };
    files[1..]
        .iter()
        .all(|f| shape(f).is_some_and(|s| s == first || s == latent_only))
}

/// `Σ factor·tensor` of `name` over the inputs, in fp32; `latent_only`: of each tensor's
/// first 4 channels along dimension 1 (an inpainting input convolution's latent part).
fn weighted(
    files: &[SafetensorsFile],
    factors: &[f64],
    name: &str,
    latent_only: bool,
) -> Result<Tensor> {
    let mut acc: Option<Tensor> = None;
    for (file, factor) in files.iter().zip(factors) {
        let part = file.with_view(name, |t| {
            if !crate::health::is_finite(t) {
                bail!(
                    "{}: tensor `{name}` holds NaN or inf — the file is damaged; re-download it",
                    file.path().display()
                );
            }
            let t = match latent_only {
                true => t.narrow(1, 0, 4),
                false => t.shallow_clone(),
            };
            Ok(t.to_kind(Kind::Float) * *factor)
        })?;
        acc = Some(match acc {
            Some(a) => a + part,
            None => part,
        });
    }
    acc.ok_or_else(|| anyhow!("no inputs to merge"))
}

/// `text` cut to 120 characters with an ellipsis.
fn cut(text: &str) -> String {
    match text.char_indices().nth(120) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// `merged` when every value is finite: weights that overflow fp32 (or the stored dtype) are
/// never written (the temporary file is removed).
fn finite(merged: Tensor, recipe: &str, name: &str, kind: Kind) -> Result<Tensor> {
    if !crate::health::is_finite(&merged) {
        bail!(
            "merge ({}): tensor `{name}` becomes NaN or inf in {} — use weights near 0..1",
            cut(recipe),
            crate::health::dtype(kind)
        );
    }
    Ok(merged)
}
