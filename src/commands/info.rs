//! `hiresfix info CHECKPOINT`: what a checkpoint is, read by the backend that claims it, or
//! the one-line reason it is refused.
use std::path::Path;

use anyhow::{anyhow, Result};
use host_api::CheckpointInfo;

use crate::models::detect_backend;
use crate::registry::Registry;

pub fn run(checkpoint: &Path) -> Result<()> {
    let registry = Registry::load(&[], &Default::default());
    let backend = detect_backend(&registry, checkpoint)?;
    let found = backend
        .decl
        .run_inspect(checkpoint, true)
        .map_err(|e| anyhow!("{e}"))?;
    for (key, value) in lines(checkpoint, &found) {
        println!("{:<15}{value}", format!("{key}:"));
    }
    Ok(())
}

/// The report, one `(label, value)` per line.
pub fn lines(checkpoint: &Path, info: &CheckpointInfo) -> Vec<(&'static str, String)> {
    vec![
        ("checkpoint", checkpoint.display().to_string()),
        ("format", info.format.to_string()),
        ("family", format!("{} ({})", info.family, info.family_name)),
        (
            "prediction",
            format!("{} ({})", info.prediction, info.prediction_source),
        ),
        (
            "latent",
            format!(
                "{} channels, 1/{} of the image side, scaling factor {}",
                info.latent_channels, info.vae_scale_factor, info.latent_scaling_factor
            ),
        ),
        ("text encoders", info.text_encoders.to_string()),
        (
            "unet",
            format!("{} parameters", human(info.unet_parameters as f64, "")),
        ),
        ("stored dtype", info.stored_dtype.to_string()),
        (
            "file size",
            format!(
                "{} ({} bytes)",
                human(info.file_bytes as f64, "B"),
                info.file_bytes
            ),
        ),
        ("native size", format!("{} px", info.default_size)),
    ]
}

/// `2.57 G`, `860.0 M`, `6.94 GB`.
fn human(value: f64, unit: &str) -> String {
    let (scaled, prefix) = match value {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e3 => (v / 1e3, "k"),
        v => (v, ""),
    };
    format!("{scaled:.2} {prefix}{unit}").trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_like_a_file_manager() {
        assert_eq!(human(6_938_041_000.0, "B"), "6.94 GB");
        assert_eq!(human(859_520_964.0, ""), "859.52 M");
        assert_eq!(human(12.0, ""), "12.00");
    }
}
