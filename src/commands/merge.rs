//! `hiresfix merge OUT.safetensors A:0.8 B:0.2` (weighted sum) or
//! `hiresfix merge OUT.safetensors --add-difference A B C:M` (A + (B − C)·M): A1111's
//! checkpoint merger, streamed by the backend that reads the first input.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use host_api::{MergeInput, MergeRequest};

use crate::models::detect_backend;
use crate::registry::Registry;

/// `path:weight`, the weight after the last `:` (paths may hold `:`), or `default` without one.
fn input(arg: &str, default: Option<f64>) -> Result<(PathBuf, f64)> {
    if let Some((path, weight)) = arg.rsplit_once(':') {
        if let Ok(w) = weight.trim().parse::<f64>() {
            let w = crate::defaults::weight(w)
                .map_err(|what| anyhow!("merge input `{}`: {what}", crate::errors::echo(arg)))?;
            return Ok((PathBuf::from(path), w));
        }
    }
    match default {
        Some(w) => Ok((PathBuf::from(arg), w)),
        None => bail!("merge input `{arg}` has no weight — write it as FILE:0.8"),
    }
}

pub fn run(out: &Path, args: &[String], add_difference: bool) -> Result<()> {
    let inputs: Vec<(PathBuf, f64)> = match add_difference {
        true => match args {
            [a, b, c] => vec![
                input(a, Some(1.0))?,
                input(b, Some(1.0))?,
                input(c, Some(1.0))?,
            ],
            _ => bail!("--add-difference takes three checkpoints: A B C[:multiplier]"),
        },
        false if args.len() < 2 => bail!("merge needs at least two inputs: OUT A:0.8 B:0.2"),
        false => args.iter().map(|a| input(a, None)).collect::<Result<_>>()?,
    };
    if out.exists() {
        bail!(
            "{} exists — choose another output name or remove it",
            out.display()
        );
    }
    if !out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        bail!(
            "{}: the merged checkpoint is written as .safetensors — end the name in .safetensors",
            out.display()
        );
    }
    if !add_difference {
        let total: f64 = inputs.iter().map(|(_, w)| w).sum();
        if (total - 1.0).abs() > 1e-6 {
            eprintln!("note: the weights add up to {total}, not 1");
        }
    }
    let registry = Registry::load(&[], &Default::default());
    let backend = detect_backend(&registry, &inputs[0].0)?;
    let multiplier = inputs.last().map_or(1.0, |(_, w)| *w);
    let request = MergeRequest {
        inputs: inputs
            .iter()
            .map(|(path, weight)| MergeInput {
                path: path.to_string_lossy().as_ref().into(),
                weight: *weight,
            })
            .collect(),
        add_difference,
        multiplier,
        out: out.to_string_lossy().as_ref().into(),
    };
    let note = backend
        .decl
        .run_merge(&request)
        .map_err(|e| anyhow!("{e}"))?;
    eprintln!("{note}");
    println!("{}", out.display());
    Ok(())
}
