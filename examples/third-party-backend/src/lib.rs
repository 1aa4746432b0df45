//! A minimal third-party model backend: family `toy_gaussian`, whose "model" is the exact
//! denoiser of Gaussian data. It implements only what generation needs (`Backend`, no
//! `BackendTools`), so `hiresfix generate` runs it with every sampler, schedule and upscaler
//! while `hiresfix info` says the family has no tools.
//!
//! A checkpoint is a text file:
//! ```text
//! hiresfix toy model
//! mean = 0.25
//! std = 0.5
//! ```
//! The data are `N(mean + shift(prompt), std²)` per latent cell, so the denoiser is the
//! posterior mean `D(x, σ) = (x·std² + m·σ²) / (std² + σ²)` (Karras et al. 2022, eq. 3 with a
//! Gaussian data distribution); a prompt shifts `m` by its length, so CFG has something to do.
use std::path::Path;

use host_api::tch::{Kind, Tensor};
use host_api::{Backend, EncodeRequest, Error, LoadRequest, ModelInfo, Result};

const MAGIC: &str = "hiresfix toy model";
/// Pixels per latent cell along each side.
const SCALE: i64 = 8;

pub struct ToyGaussian {
    mean: f64,
    std: f64,
}

/// The file's first line, read without trusting its size (at most 64 bytes).
fn first_line(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut head = [0u8; 64];
    let mut file =
        std::fs::File::open(path).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
    let n = file
        .read(&mut head)
        .map_err(|e| Error::new(e.to_string()))?;
    let text = String::from_utf8_lossy(&head[..n]);
    Ok(text.lines().next().unwrap_or_default().trim().to_owned())
}

fn number(text: &str, key: &str, path: &str) -> Result<f64> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse::<f64>().ok())
        .filter(|v| v.is_finite())
        .ok_or_else(|| Error::new(format!("{path}: no finite `{key} = ...` line")))
}

impl Backend for ToyGaussian {
    const FAMILY: &'static str = "toy_gaussian";

    fn detect(checkpoint: &Path) -> Result<Option<String>> {
        Ok((first_line(checkpoint)? == MAGIC).then(|| "Toy Gaussian".to_owned()))
    }

    fn load(request: &LoadRequest) -> Result<Self> {
        let path = request.checkpoint.as_str();
        let text = std::fs::read_to_string(path).map_err(|e| Error::new(format!("{path}: {e}")))?;
        let (mean, std) = (number(&text, "mean", path)?, number(&text, "std", path)?);
        if std <= 0.0 {
            return Err(Error::new(format!("{path}: std must be positive")));
        }
        Ok(Self { mean, std })
    }

    fn info(&self) -> ModelInfo {
        // 1000 log-spaced noise levels from 0.03 to 15, ascending (roughly SD's range).
        let sigmas = (0..1000)
            .map(|i| (0.03f64.ln() + (15f64.ln() - 0.03f64.ln()) * i as f64 / 999.0).exp())
            .collect::<Vec<_>>();
        ModelInfo {
            family: Self::FAMILY.into(),
            prediction: "eps".into(),
            latent_channels: 4,
            vae_scale_factor: SCALE as u32,
            default_size: 64,
            text_encoders: "none (the prompt's length shifts the mean)".into(),
            dtype: "Float".into(),
            device: "cpu".into(),
            sigmas: sigmas.into(),
            extra: Default::default(),
        }
    }

    /// One scalar per prompt: its shift of the mean (a negative prompt shifts the other way).
    fn encode_prompts(&self, request: &EncodeRequest) -> Result<Vec<Vec<Tensor>>> {
        Ok(request
            .prompts
            .iter()
            .map(|p| {
                let shift = (p.text.len() % 11) as f64 / 20.0;
                let shift = if p.negative { -shift } else { shift };
                vec![Tensor::from_slice(&[shift])]
            })
            .collect())
    }

    fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&[Tensor]]) -> Result<Vec<Tensor>> {
        let var = self.std * self.std;
        conds
            .iter()
            .map(|cond| {
                let shift = cond
                    .first()
                    .ok_or_else(|| Error::new("empty conditioning"))?
                    .double_value(&[0]);
                let m = self.mean + shift;
                Ok((x * var + m * sigma * sigma) / (var + sigma * sigma))
            })
            .collect()
    }

    /// Latent → pixels: the first three channels, squashed into [-1, 1], each cell 8×8 pixels.
    fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        let rgb = latent.narrow(1, 0, 3).tanh();
        Ok(rgb
            .repeat_interleave_self_int(SCALE, Some(2), None)
            .repeat_interleave_self_int(SCALE, Some(3), None))
    }

    /// Pixels → latent: the inverse of `decode` on 8×8 means; channel 4 is their average.
    fn encode(&self, image: &Tensor) -> Result<Tensor> {
        let cells = image.to_kind(Kind::Float).avg_pool2d(
            [SCALE, SCALE],
            [SCALE, SCALE],
            [0, 0],
            false,
            true,
            None,
        );
        let rgb = cells.clamp(-0.999, 0.999).atanh();
        let fourth = rgb.mean_dim(Some(&[1i64][..]), true, Kind::Float);
        Ok(Tensor::cat(&[rgb, fourth], 1))
    }
}

host_api::export_plugin! {
    backends: [ToyGaussian],
}
