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
    let tensors = convert::read_state_dict(model).map_err(nothing_written)?;
    write(&tensors, &out)?;
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

fn refuse_existing(out: &Path) -> Result<()> {
    if out.exists() {
        bail!(
            "{} exists — choose another name with -o or remove it",
            out.display()
        );
    }
    Ok(())
}

/// Writes to a temporary name beside `out`, then renames: `out` is never partial.
fn write(tensors: &[(String, Tensor)], out: &Path) -> Result<()> {
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let partial: PathBuf = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let written = Tensor::write_safetensors(tensors, &partial)
        .map_err(|e| anyhow!("cannot write {}: {e}", out.display()))
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
