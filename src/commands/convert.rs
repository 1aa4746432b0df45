//! `hiresfix convert MODEL.pth [-o OUT.safetensors]`: a PyTorch pickle checkpoint (as ESRGAN
//! upscalers are published) to `.safetensors`, read by `convert/`'s restricted reader, which
//! executes nothing the file asks for.
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use host_api::tch::Tensor;

use crate::convert;

pub fn run(model: &Path, output: Option<&Path>, quiet: bool) -> Result<()> {
    if !model.exists() {
        bail!("{} not found", model.display());
    }
    if model.is_dir() {
        bail!("{} is a folder — give the .pth file", model.display());
    }
    let out = output.map_or_else(|| model.with_extension("safetensors"), Path::to_path_buf);
    if !out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        bail!(
            "{}: the converted file is written as .safetensors — end the name in .safetensors",
            out.display()
        );
    }
    let nothing_written =
        |e: anyhow::Error| anyhow!("{}: {e:#}; nothing was written", model.display());
    convert::sniff(model).map_err(nothing_written)?;
    refuse_existing(&out)?;
    let (tensors, notes) = convert::read_checkpoint(model).map_err(nothing_written)?;
    write(&tensors, &notes, &out)?;
    if !quiet {
        let kinds: BTreeSet<String> = tensors
            .iter()
            .map(|(_, t)| format!("{:?}", t.kind()))
            .collect();
        let kinds = kinds.into_iter().collect::<Vec<_>>().join(", ");
        eprintln!("{}: {} tensors ({kinds})", model.display(), tensors.len());
    }
    println!("{}", out.display());
    Ok(())
}

/// Puts `notes` in the safetensors header's `__metadata__` (tch writes none): the header is
/// read, extended and written back padded to 8 bytes; the data's offsets are relative to its
/// start, so they stay.
fn add_metadata(path: &Path, notes: &[(String, String)]) -> Result<()> {
    if notes.is_empty() {
        return Ok(());
    }
    let bytes = std::fs::read(path)?;
    let len = u64::from_le_bytes(bytes[..8].try_into()?) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + len])?;
    let metadata: serde_json::Map<String, serde_json::Value> = notes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    header.insert("__metadata__".into(), metadata.into());
    let mut text = serde_json::to_vec(&header)?;
    text.resize(text.len().div_ceil(8) * 8, b' ');
    let mut file = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - len);
    file.extend_from_slice(&(text.len() as u64).to_le_bytes());
    file.extend_from_slice(&text);
    file.extend_from_slice(&bytes[8 + len..]);
    std::fs::write(path, file)?;
    Ok(())
}

fn refuse_existing(out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "{} exists — choose another name with -o or remove it",
            out.display()
        );
    }
    Ok(())
}

/// Writes to a temporary name beside `out` (with `notes` as its metadata), then renames: `out`
/// is never partial.
fn write(tensors: &[(String, Tensor)], notes: &[(String, String)], out: &Path) -> Result<()> {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let partial: PathBuf = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let written = Tensor::write_safetensors(tensors, &partial)
        .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))
        .and_then(|()| add_metadata(&partial, notes))
        .and_then(|()| refuse_existing(out))
        .and_then(|()| {
            std::fs::rename(&partial, out)
                .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}
