//! Kohya "Deep Shrink" (ComfyUI `PatchModelAddDownscale`): while the sigma lies in the window
//! `[percent_to_sigma(end), percent_to_sigma(start)]`, the output of input block `block` is
//! shrunk by `factor` (after its skip is stored, by default), so the deep layers compose at
//! the model's comfortable size; every output-block input whose size differs from its skip
//! is resized back to the skip's size.
use host_api::tch::Tensor;
use host_api::{keys, Error, HookCtx, Options, Patch, PatchModel, Result};

use crate::options::{py_float, whole, within};

/// ComfyUI `common_upscale` methods (bislerp and lanczos are not offered here).
const METHODS: &[&str] = &["bicubic", "bilinear", "nearest-exact", "area"];

pub struct DeepShrink {
    block: u32,
    factor: f64,
    start: f64,
    end: f64,
    after_skip: bool,
    downscale_method: String,
    upscale_method: String,
    sigma_start: f64,
    sigma_end: f64,
}

fn method(options: &Options<'_>, key: &str) -> Result<String> {
    let m = options.text(key, "bicubic")?;
    match METHODS.contains(&m) {
        true => Ok(m.to_owned()),
        false => Err(Error(format!(
            "option `{key}` must be one of {}, got `{m}`",
            METHODS.join(", ")
        ))),
    }
}

/// `x` resized to `height` × `width` with `method` (torch `interpolate` defaults: no corner
/// alignment, no antialias; `area` is adaptive average pooling, as torch's `area` mode).
pub fn resize(x: &Tensor, height: i64, width: i64, method: &str) -> Result<Tensor> {
    let size = [height, width];
    Ok(match method {
        "bicubic" => x.f_upsample_bicubic2d(size, false, None, None)?,
        "bilinear" => x.f_upsample_bilinear2d(size, false, None, None)?,
        "nearest-exact" => x.f_internal_upsample_nearest_exact2d(size, None, None)?,
        "area" => x.f_adaptive_avg_pool2d(size)?,
        other => return Err(Error(format!("unknown resize method `{other}`"))),
    })
}

/// ComfyUI `ModelSamplingDiscrete.percent_to_sigma`: the sigma at `percent` of the model's
/// timestep range, log-interpolated in the model's (fp32) sigma table; 0 % is "above every
/// sigma", 100 % is 0.
pub fn percent_to_sigma(sigmas: &[f64], percent: f64) -> f64 {
    if percent <= 0.0 {
        return 999_999_999.9;
    }
    if percent >= 1.0 || sigmas.is_empty() {
        return 0.0;
    }
    let log = |i: usize| (sigmas[i] as f32).ln();
    let last = (sigmas.len() - 1) as f32;
    let t = (((1.0 - percent) * 999.0) as f32).clamp(0.0, last);
    let (low, high) = (t.floor() as usize, t.ceil() as usize);
    let w = t.fract();
    ((1.0 - w) * log(low) + w * log(high)).exp() as f64
}

impl DeepShrink {
    fn active(&self, ctx: &HookCtx) -> bool {
        ctx.block == self.block && self.sigma_end <= ctx.sigma && ctx.sigma <= self.sigma_start
    }

    fn shrink(&self, ctx: &HookCtx, h: Tensor) -> Result<Tensor> {
        if !self.active(ctx) {
            return Ok(h);
        }
        let s = h.size();
        // Python's round (half to even) of size × (1 / factor), as ComfyUI.
        let scale = 1.0 / self.factor;
        let (height, width) = (
            (s[2] as f64 * scale).round_ties_even() as i64,
            (s[3] as f64 * scale).round_ties_even() as i64,
        );
        if height < 1 || width < 1 {
            return Err(Error(format!(
                "deep_shrink: factor {} shrinks input block {}'s {}x{} latent to nothing — use a smaller factor or an earlier block",
                self.factor, self.block, s[3], s[2]
            )));
        }
        resize(&h, height, width, &self.downscale_method)
    }
}

impl Patch for DeepShrink {
    const NAME: &'static str = "deep_shrink";
    const ALIASES: &'static [&'static str] = &["Kohya HRFix Integrated", "kohya_hrfix"];
    const OPTIONS: &'static [&'static str] = &[
        "block",
        "factor",
        "start",
        "end",
        "after_skip",
        "downscale_method",
        "upscale_method",
    ];

    fn new(options: Options<'_>, model: &PatchModel) -> Result<Self> {
        let start = within(&options, "start", 0.0, 0.0, 1.0)?;
        let end = within(&options, "end", 0.35, 0.0, 1.0)?;
        if end < start {
            return Err(Error(format!(
                "deep_shrink: end ({end}) is before start ({start})"
            )));
        }
        let block = whole(&options, "block", 3)?;
        // Known once the model is (the host's plan-time probe has no model: then unchecked).
        if let Some(blocks) = Options(&model.extra).get_number(keys::UNET_INPUT_BLOCKS) {
            if f64::from(block) >= blocks {
                return Err(Error(format!(
                    "deep_shrink: block = {block} does not exist — this model's UNet has input blocks 0 to {} (3 is the usual choice)",
                    blocks - 1.0
                )));
            }
        }
        Ok(Self {
            block,
            factor: within(&options, "factor", 2.0, 0.1, 9.0)?,
            start,
            end,
            after_skip: options.flag("after_skip", true)?,
            downscale_method: method(&options, "downscale_method")?,
            upscale_method: method(&options, "upscale_method")?,
            sigma_start: percent_to_sigma(&model.sigmas, start),
            sigma_end: percent_to_sigma(&model.sigmas, end),
        })
    }

    fn infotext(&self) -> Vec<(String, String)> {
        let title = |s: &str| {
            let mut c = s.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default()
        };
        [
            ("enabled", "True".to_owned()),
            ("block_number", self.block.to_string()),
            ("downscale_factor", py_float(self.factor)),
            ("start_percent", py_float(self.start)),
            ("end_percent", py_float(self.end)),
            ("downscale_after_skip", title(&self.after_skip.to_string())),
            ("downscale_method", self.downscale_method.clone()),
            ("upscale_method", self.upscale_method.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (format!("kohya_hrfix_{k}"), v))
        .collect()
    }

    fn input_block(&self, ctx: &HookCtx, h: Tensor) -> Result<Tensor> {
        match self.after_skip {
            true => Ok(h),
            false => self.shrink(ctx, h),
        }
    }

    fn input_block_after_skip(&self, ctx: &HookCtx, h: Tensor) -> Result<Tensor> {
        match self.after_skip {
            true => self.shrink(ctx, h),
            false => Ok(h),
        }
    }

    fn output_block(&self, _ctx: &HookCtx, h: Tensor, skip: Tensor) -> Result<(Tensor, Tensor)> {
        let (hs, ss) = (h.size(), skip.size());
        if hs[2..] == ss[2..] {
            return Ok((h, skip));
        }
        Ok((resize(&h, ss[2], ss[3], &self.upscale_method)?, skip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_to_sigma_edges_are_comfyuis() {
        let sigmas: Vec<f64> = (0..1000).map(|i| 0.03 + i as f64 * 0.0146).collect();
        assert_eq!(percent_to_sigma(&sigmas, 0.0), 999_999_999.9);
        assert_eq!(percent_to_sigma(&sigmas, 1.0), 0.0);
        // 50 %: t = 499.5, halfway in log between sigmas[499] and sigmas[500].
        let expected = ((sigmas[499].ln() + sigmas[500].ln()) / 2.0).exp();
        assert!((percent_to_sigma(&sigmas, 0.5) - expected).abs() < 1e-5);
    }
}
