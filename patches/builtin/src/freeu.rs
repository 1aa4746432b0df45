//! FreeU (Si et al. 2023) as diffusers' `enable_freeu` applies it: before each output block
//! of the deepest decoder stage (stage 0, the UNet's deepest level) the first half of the
//! backbone features `h` is scaled by `b1` and the skip's lowest frequencies by `s1`; the next
//! stage uses `b2`, `s2`. Version 2 (ComfyUI `FreeU_V2`) scales the backbone by
//! `(b - 1) · m + 1`, `m` the channel-mean map normalised to [0, 1] per image.
//!
//! The stages are diffusers' (decoder stage index); ComfyUI keys FreeU on channel counts
//! (4× and 2× the model channels), which selects the same blocks on SDXL except at the first
//! block of stage 1 and differs on SD 1.x.
use host_api::tch::{Kind, Tensor};
use host_api::{Error, HookCtx, Options, Patch, PatchModel, Result};

use crate::options::{py_float, within};

pub struct FreeU {
    version: u32,
    b: [f64; 2],
    s: [f64; 2],
}

/// diffusers `fourier_filter`: the centred `2·threshold`² block of the shifted spectrum
/// (per image and channel) scaled by `scale`, computed in fp32.
pub fn fourier_filter(x: &Tensor, threshold: i64, scale: f64) -> Result<Tensor> {
    let kind = x.kind();
    let s = x.size();
    let (h, w) = (s[2], s[3]);
    let dims = [-2i64, -1].as_slice();
    let freq = x
        .f_to_kind(Kind::Float)?
        .f_fft_fftn(None::<&[i64]>, Some(dims), "backward")?
        .f_fft_fftshift(Some(dims))?;
    let mask = Tensor::f_ones([h, w], (Kind::Float, x.device()))?;
    // Python slice bounds `centre - t : centre + t`, negative starts counting from the end.
    let span = |n: i64| {
        let (lo, hi) = (n / 2 - threshold, n / 2 + threshold);
        let lo = if lo < 0 { (lo + n).max(0) } else { lo };
        (lo.min(n), hi.clamp(0, n))
    };
    let ((r0, r1), (c0, c1)) = (span(h), span(w));
    if r1 > r0 && c1 > c0 {
        let _ = mask
            .narrow(0, r0, r1 - r0)
            .narrow(1, c0, c1 - c0)
            .f_fill_(scale)?;
    }
    let filtered = (freq * mask)
        .f_fft_ifftshift(Some(dims))?
        .f_fft_ifftn(None::<&[i64]>, Some(dims), "backward")?
        .f_real()?;
    Ok(filtered.f_to_kind(kind)?)
}

impl FreeU {
    fn scale_backbone(&self, h: &Tensor, b: f64) -> Result<Tensor> {
        let half = h.size()[1] / 2;
        let (first, rest) = (h.narrow(1, 0, half), h.narrow(1, half, h.size()[1] - half));
        let first = match self.version {
            1 => first * b,
            _ => {
                // The channel-mean map of each image, normalised to [0, 1]; a constant map
                // (max = min) counts as 0 instead of dividing by zero.
                let mean = h.f_mean_dim(1, true, h.kind())?;
                let flat = mean.flatten(1, -1);
                let (max, min) = (flat.amax(1, true), flat.amin(1, true));
                let span = &max - &min;
                let span = span.where_self(&span.ne(0.0), &span.ones_like());
                let shape = [-1i64, 1, 1, 1];
                let norm = (mean - min.view(shape)) / span.view(shape);
                first * ((b - 1.0) * norm + 1.0)
            }
        };
        Ok(Tensor::f_cat(&[first, rest], 1)?)
    }
}

impl Patch for FreeU {
    const NAME: &'static str = "freeu";
    const ALIASES: &'static [&'static str] = &["FreeU"];
    const OPTIONS: &'static [&'static str] = &["version", "b1", "b2", "s1", "s2"];

    fn new(options: Options<'_>, _model: &PatchModel) -> Result<Self> {
        let version = options.number("version", 2.0)?;
        let version = match version {
            1.0 => 1,
            2.0 => 2,
            other => {
                return Err(Error(format!(
                    "option `version` must be 1 or 2, got {other}"
                )))
            }
        };
        // ComfyUI's node defaults: FreeU (v1) 1.1 / 1.2, FreeU_V2 1.3 / 1.4; s 0.9 / 0.2.
        let (b1, b2) = match version {
            1 => (1.1, 1.2),
            _ => (1.3, 1.4),
        };
        Ok(Self {
            version,
            b: [
                within(&options, "b1", b1, 0.0, 10.0)?,
                within(&options, "b2", b2, 0.0, 10.0)?,
            ],
            s: [
                within(&options, "s1", 0.9, 0.0, 10.0)?,
                within(&options, "s2", 0.2, 0.0, 10.0)?,
            ],
        })
    }

    fn infotext(&self) -> Vec<(String, String)> {
        vec![
            ("freeu_enabled".into(), "True".into()),
            ("freeu_version".into(), self.version.to_string()),
            ("freeu_b1".into(), py_float(self.b[0])),
            ("freeu_b2".into(), py_float(self.b[1])),
            ("freeu_s1".into(), py_float(self.s[0])),
            ("freeu_s2".into(), py_float(self.s[1])),
        ]
    }

    fn output_block(&self, ctx: &HookCtx, h: Tensor, skip: Tensor) -> Result<(Tensor, Tensor)> {
        let stage = ctx.levels.saturating_sub(1).saturating_sub(ctx.level) as usize;
        if ctx.level >= ctx.levels || stage > 1 {
            return Ok((h, skip));
        }
        Ok((
            self.scale_backbone(&h, self.b[stage])?,
            fourier_filter(&skip, 1, self.s[stage])?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use host_api::tch::Device;

    fn v2() -> FreeU {
        FreeU {
            version: 2,
            b: [1.3, 1.4],
            s: [0.9, 0.2],
        }
    }

    #[test]
    fn v2_keeps_a_constant_feature_map_finite_and_unscaled() {
        // A constant channel-mean map has max = min (random tiny models give exact zeros):
        // the normalisation must not divide 0 by 0. The map normalises to 0: scale 1.
        let h = Tensor::zeros([2, 8, 4, 4], (Kind::Float, Device::Cpu)) + 0.5;
        let out = v2().scale_backbone(&h, 1.3).unwrap();
        assert!(out.equal(&h));
    }

    #[test]
    fn v2_scales_the_first_half_by_the_normalised_mean() {
        // One image, 2 channels, 1x2: mean map [0, 1] normalises to [0, 1]; the first
        // channel is scaled by 1 and by b.
        let h = Tensor::from_slice(&[0.0f32, 2.0, 0.0, 0.0]).view([1, 2, 1, 2]);
        let out = v2().scale_backbone(&h, 1.5).unwrap();
        let expected = Tensor::from_slice(&[0.0f32, 3.0, 0.0, 0.0]).view([1, 2, 1, 2]);
        assert!(out.allclose(&expected, 1e-6, 1e-6, false), "{out}");
    }

    #[test]
    fn fourier_filter_scales_only_the_centred_low_frequencies() {
        // A constant image is pure DC: scaling the centre block by 0.5 halves it.
        let x = Tensor::ones([1, 1, 8, 8], (Kind::Float, Device::Cpu));
        let out = fourier_filter(&x, 1, 0.5).unwrap();
        assert!(out.allclose(&(x * 0.5), 1e-6, 1e-6, false));
    }
}
