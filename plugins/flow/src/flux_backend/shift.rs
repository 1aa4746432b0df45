//! Flux's flow shift: by the image's token count (dev; diffusers `calculate_shift` with
//! `use_dynamic_shifting`, ComfyUI `ModelSamplingFlux`: `exp(mu)`, mu linear from 0.5 at 256
//! packed tokens to 1.15 at 4096), or fixed (schnell's published scheduler: shift 1, none). A
//! diffusers folder's `scheduler/scheduler_config.json` decides; a single file takes its
//! variant's published scheduler.
use anyhow::{anyhow, Result};
use host_api::sampling::calculate_shift;
use serde_json::Value;

use crate::flux::Variant;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ShiftRule {
    /// `exp(mu)`, mu from `base_shift` at `base_tokens` to `max_shift` at `max_tokens`.
    BySize {
        base_tokens: f64,
        max_tokens: f64,
        base_shift: f64,
        max_shift: f64,
    },
    Fixed(f64),
}

/// The published dev scheduler's rule.
const DEV: ShiftRule = ShiftRule::BySize {
    base_tokens: 256.0,
    max_tokens: 4096.0,
    base_shift: 0.5,
    max_shift: 1.15,
};

impl ShiftRule {
    /// The published scheduler of `variant` (black-forest-labs/FLUX.1-dev and -schnell).
    pub fn published(variant: Variant) -> Self {
        match variant {
            Variant::Dev => DEV,
            Variant::Schnell => ShiftRule::Fixed(1.0),
        }
    }

    /// A diffusers `scheduler_config.json` (`what` names it), else the published rule.
    pub fn from_scheduler(json: Option<&Value>, variant: Variant, what: &str) -> Result<Self> {
        let Some(json) = json else {
            return Ok(Self::published(variant));
        };
        let number = |key: &str, default: f64| -> Result<f64> {
            match json.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| anyhow!("{what}: `{key}` {v} must be a number")),
            }
        };
        let dynamic = json
            .get("use_dynamic_shifting")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !dynamic {
            let shift = number("shift", 1.0)?;
            if shift <= 0.0 {
                anyhow::bail!("{what}: shift {shift} must be positive");
            }
            return Ok(ShiftRule::Fixed(shift));
        }
        let rule = ShiftRule::BySize {
            base_tokens: number("base_image_seq_len", 256.0)?,
            max_tokens: number("max_image_seq_len", 4096.0)?,
            base_shift: number("base_shift", 0.5)?,
            max_shift: number("max_shift", 1.15)?,
        };
        if let ShiftRule::BySize {
            base_tokens,
            max_tokens,
            ..
        } = rule
        {
            if max_tokens == base_tokens {
                anyhow::bail!("{what}: base_image_seq_len and max_image_seq_len must differ");
            }
        }
        Ok(rule)
    }

    /// The shift of a pass of `tokens` packed image tokens.
    pub fn shift(&self, tokens: f64) -> f64 {
        match *self {
            ShiftRule::Fixed(s) => s,
            ShiftRule::BySize {
                base_tokens,
                max_tokens,
                base_shift,
                max_shift,
            } => calculate_shift(tokens, (base_tokens, max_tokens), (base_shift, max_shift)).exp(),
        }
    }

    /// For `info`: `flow (shift by size: mu 0.5 at 256 tokens to 1.15 at 4096, shift = e^mu)`
    /// or `flow (shift 1)`.
    pub fn describe(&self) -> String {
        format!("flow ({})", self.rule())
    }

    /// The rule alone: `shift by size: …` or `shift 1`.
    pub fn rule(&self) -> String {
        match *self {
            ShiftRule::Fixed(s) => format!("shift {s}"),
            ShiftRule::BySize {
                base_tokens,
                max_tokens,
                base_shift,
                max_shift,
            } => format!(
                "shift by size: mu {base_shift} at {base_tokens} tokens to {max_shift} at \
                 {max_tokens}, shift = e^mu"
            ),
        }
    }
}

/// Packed image tokens of a `width × height` px pass with a VAE of `vae_factor`
/// (FluxPipeline: `(height // vae_scale_factor // 2) * (width // vae_scale_factor // 2)`).
pub fn image_tokens(width: u32, height: u32, vae_factor: u32) -> f64 {
    let f = vae_factor.max(1);
    f64::from((height / f / 2) * (width / f / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_shift_follows_calculate_shift_and_schnell_is_fixed() {
        let dev = ShiftRule::published(Variant::Dev);
        assert!((dev.shift(256.0) - 0.5f64.exp()).abs() < 1e-12);
        assert!((dev.shift(4096.0) - 1.15f64.exp()).abs() < 1e-12);
        // 1024 px with the 8x VAE: 64 × 64 packed tokens, the max shift.
        assert_eq!(image_tokens(1024, 1024, 8), 4096.0);
        assert_eq!(ShiftRule::published(Variant::Schnell).shift(4096.0), 1.0);
        let json = serde_json::json!({"use_dynamic_shifting": false, "shift": 3.0});
        let fixed = ShiftRule::from_scheduler(Some(&json), Variant::Dev, "x").unwrap();
        assert_eq!(fixed, ShiftRule::Fixed(3.0));
    }
}
