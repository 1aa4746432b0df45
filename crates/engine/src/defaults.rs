//! Every default and every range rule of a profile, in one place (a leaf: it imports only
//! [`crate::errors`], so every other module may use it). A TOML profile checks each field against these rules as
//! it parses; a profile made otherwise — a server request (`hiresfix-serve`), an imported
//! A1111 infotext ([`crate::import`]) — is checked with `Profile::validate`; and every
//! profile, wherever it came from, is filled by `Profile::resolve` before it is planned. The
//! planner and the job read resolved values ([`resolved`]) and apply no defaults of their own.
use std::fmt;

use anyhow::{anyhow, Result};

/// The seed: -1 picks a random one.
pub const SEED: i64 = -1;
/// Images per job.
pub const BATCH: u32 = 1;
/// Classifier-free guidance scale.
pub const CFG: f64 = 7.0;
/// Where images are written: a template with `{seed}` and `{n}`.
pub const OUTPUT: &str = "out/{seed}-{n}.png";
/// `[model] clip_skip`: 1 reads the text encoder's last layer (no skip).
pub const CLIP_SKIP: u32 = 1;
/// A LoRA's weight when its entry gives none.
pub const LORA_WEIGHT: f64 = 1.0;
/// Pass 1's sampler steps; a later pass defaults to pass 1's (as A1111's hires pass does).
pub const STEPS: u32 = 20;
/// Pass 1's sampler; a later pass defaults to the previous pass's.
pub const SAMPLER: &str = "euler";
/// The schedule of a sampler that names no default schedule of its own.
pub const SCHEDULE: &str = "normal";
/// Pass 1's side before the model's own size is known (SD 1.x's), e.g. for a server's limits.
pub const SIZE: u32 = 512;
/// A later pass's upscale factor when it gives no size.
pub const HIRES_SCALE: f64 = 2.0;
/// A later pass's upscaler.
pub const HIRES_UPSCALER: &str = "latent";
/// A later pass's denoising strength.
pub const HIRES_DENOISE: f64 = 0.7;

/// AUTOMATIC1111's `/sdapi/v1/txt2img` defaults where they differ from a profile's: a request
/// that leaves a field unset gets what A1111 would give it (its hires scale and upscaler are
/// [`HIRES_SCALE`] and [`HIRES_UPSCALER`]).
pub mod a1111 {
    /// `steps`.
    pub const STEPS: u32 = 50;
    /// `denoising_strength`.
    pub const DENOISE: f64 = 0.75;
    /// `sampler_name` / `sampler_index`.
    pub const SAMPLER: &str = "Euler";
    /// `width` and `height`, whatever the model.
    pub const SIZE: u32 = 512;
}

/// A model family's native side, for checks made before its checkpoint is read (a server's
/// limits on a native request): SDXL 1024, SD 2.x 768, else [`SIZE`].
pub fn family_size(family: &str) -> u32 {
    match family {
        "sdxl" => 1024,
        "sd2" => 768,
        _ => SIZE,
    }
}

/// A model family's CFG scale where neither the profile nor the pass sets one: Flux (guidance-
/// or timestep-distilled) runs one conditioning row at 1, as Forge and diffusers do; the
/// others A1111's [`CFG`].
pub fn family_cfg(family: &str) -> f64 {
    match family {
        "flux-dev" | "flux-schnell" => 1.0,
        _ => CFG,
    }
}

/// A model family's pass-1 steps where the profile sets none, when it has its own: Flux
/// schnell (timestep-distilled) is made for 4 (its published default, diffusers' and
/// ComfyUI's); the others take [`STEPS`].
pub fn family_steps(family: &str) -> Option<u32> {
    match family {
        "flux-schnell" => Some(4),
        _ => None,
    }
}

/// Smallest side of a pass, in pixels.
pub const MIN_SIZE: u32 = 8;
/// Largest side of a pass, in pixels.
pub const MAX_SIZE: u32 = 16_384;
/// Largest upscale factor of one pass.
pub const MAX_SCALE: f64 = 16.0;
/// Passes in one job (a stage plan's included).
pub const MAX_PASSES: usize = 16;
/// A stage plan's upscale factor per stage (`stage_factor`), the article's 512 → 1024 → 2048.
pub const STAGE_FACTOR: f64 = 2.0;
/// Most sampler steps of one pass.
pub const MAX_STEPS: u32 = 10_000;
/// Largest CFG scale.
pub const MAX_CFG: f64 = 100.0;
/// Largest LoRA or merge weight, either sign (A1111 takes any number; past this no trained
/// LoRA gives an image, and fp32 weights overflow to inf).
pub const MAX_WEIGHT: f64 = 100.0;

/// A range rule: the value, or the sentence saying what it must be.
pub type Rule<T> = fn(T) -> Result<T, String>;

fn rule<T>(value: T, ok: bool, what: impl FnOnce() -> String) -> Result<T, String> {
    match ok {
        true => Ok(value),
        false => Err(what()),
    }
}

/// A pass's width or height.
pub fn size(v: u32) -> Result<u32, String> {
    rule(v, (MIN_SIZE..=MAX_SIZE).contains(&v), || {
        format!("size must be between {MIN_SIZE} and {MAX_SIZE} pixels")
    })
}

/// A later pass's upscale factor.
pub fn scale(v: f64) -> Result<f64, String> {
    rule(v, v > 0.0 && v <= MAX_SCALE, || {
        format!("scale must be greater than 0 and at most {MAX_SCALE}")
    })
}

/// A stage plan's upscale factor per stage (`stage_factor`).
pub fn stage_factor(v: f64) -> Result<f64, String> {
    rule(v, v > 1.0 && v <= MAX_SCALE, || {
        format!("stage_factor must be greater than 1 and at most {MAX_SCALE}: each stage upscales the one before by it")
    })
}

/// A pass's sampler steps.
pub fn steps(v: u32) -> Result<u32, String> {
    rule(v, (1..=MAX_STEPS).contains(&v), || {
        format!("steps must be between 1 and {MAX_STEPS}")
    })
}

/// A later pass's denoising strength, 0 to 1. 0 upscales without re-denoising (A1111's
/// zero-strength hires pass: a schedule of no steps, the upscaled latent as it is).
pub fn denoise(v: f64) -> Result<f64, String> {
    rule(v, (0.0..=1.0).contains(&v), || {
        "denoise must be in [0, 1]: 0 only upscales, 1 repaints from noise".into()
    })
}

/// A1111's `refiner_switch_at`: the fraction of a pass's schedule after which the refiner
/// takes over (0 and 1 would leave one of the two models nothing).
pub fn refiner_switch_at(v: f64) -> Result<f64, String> {
    rule(v, v > 0.0 && v < 1.0, || {
        "refiner_switch_at must be between 0 and 1 (exclusive): 0.8 hands the last 20 % of the schedule to the refiner".into()
    })
}

/// A1111's default `refiner_switch_at` (its UI's "Switch at").
pub const REFINER_SWITCH_AT: f64 = 0.8;

/// A1111's variation seed strength.
pub fn subseed_strength(v: f64) -> Result<f64, String> {
    rule(v, (0.0..=1.0).contains(&v), || {
        "subseed_strength must be in [0, 1]: 0 is the seed's noise alone, 1 the subseed's".into()
    })
}

/// A1111's "Seed resize from" side in pixels (0 = off).
pub fn seed_resize(v: u32) -> Result<u32, String> {
    rule(v, v <= MAX_SIZE, || {
        format!("seed_resize_from must be 0 (off) or at most {MAX_SIZE} pixels")
    })
}

/// `preview_every`: 0 (off) or a number of steps.
pub fn preview_every(v: i64) -> Result<i64, String> {
    rule(v, (0..=i64::from(u16::MAX)).contains(&v), || {
        format!(
            "preview_every must be 0 (no live previews) or a number of steps up to {}",
            u16::MAX
        )
    })
}

/// The CFG scale, of the profile or of a pass.
pub fn cfg(v: f64) -> Result<f64, String> {
    rule(v, (0.0..=MAX_CFG).contains(&v), || {
        format!("cfg must be between 0 and {MAX_CFG}")
    })
}

/// Flux dev's distilled guidance, of the profile or of a pass (Forge's "Distilled CFG
/// Scale"; the same range as cfg).
pub fn guidance(v: f64) -> Result<f64, String> {
    rule(v, (0.0..=MAX_CFG).contains(&v), || {
        format!("guidance must be between 0 and {MAX_CFG}")
    })
}

/// A LoRA's or a merge's weight: finite, at most [`MAX_WEIGHT`] either way.
pub fn weight(v: f64) -> Result<f64, String> {
    rule(v, v.is_finite() && v.abs() <= MAX_WEIGHT, || {
        format!("a weight must be a number between -{MAX_WEIGHT} and {MAX_WEIGHT}")
    })
}

/// A LoRA's weight in a profile ([`weight`], saying whose).
pub fn lora_weight(v: f64) -> Result<f64, String> {
    weight(v).map_err(|e| format!("a LoRA's {}", &e[2..]))
}

/// A merge's weight in a profile ([`weight`], saying whose).
pub fn merge_weight(v: f64) -> Result<f64, String> {
    weight(v).map_err(|e| format!("a merge's {}", &e[2..]))
}

/// A count that starts at 1 (`batch`, `clip_skip`).
pub fn at_least_one(v: u32) -> Result<u32, String> {
    rule(v, v >= 1, || "must be at least 1".into())
}

/// Pass 1 is txt2img: what only a later pass may set.
pub const FIRST_PASS_RULE: &str =
    "pass 1 is txt2img: `scale`, `upscaler` and `denoise` belong to later passes";

/// Pass 1 with an `init_image` (img2img): its denoising strength.
pub const IMG2IMG_DENOISE: f64 = 0.75;
/// A1111's default mask blur, in pixels.
pub const MASK_BLUR: u32 = 4;
/// Largest mask blur (A1111's slider stops at 64).
pub const MAX_MASK_BLUR: u32 = 64;
/// "Only masked" padding around the mask, in pixels.
pub const INPAINT_PADDING: u32 = 32;
/// Largest "only masked" padding (A1111's slider stops at 256).
pub const MAX_INPAINT_PADDING: u32 = 256;
/// A 9-channel inpainting checkpoint's conditional mask weight (A1111's default).
pub const INPAINTING_MASK_WEIGHT: f64 = 1.0;

/// The img2img keys, which only pass 1 may set.
pub const IMG2IMG_KEYS: &str = "init_image, mask, mask_blur, mask_invert, inpainting_fill, inpaint_full_res, inpaint_full_res_padding, resize_mode, inpainting_mask_weight";

/// `mask_blur`.
pub fn mask_blur(v: u32) -> Result<u32, String> {
    rule(v, v <= MAX_MASK_BLUR, || {
        format!("mask_blur must be between 0 and {MAX_MASK_BLUR} pixels")
    })
}

/// `inpaint_full_res_padding`.
pub fn inpaint_padding(v: u32) -> Result<u32, String> {
    rule(v, v <= MAX_INPAINT_PADDING, || {
        format!("inpaint_full_res_padding must be between 0 and {MAX_INPAINT_PADDING} pixels")
    })
}

/// `inpainting_mask_weight`.
pub fn mask_weight(v: f64) -> Result<f64, String> {
    rule(v, (0.0..=1.0).contains(&v), || {
        "inpainting_mask_weight must be in [0, 1]".into()
    })
}

/// A rule a profile breaks: the profile key at fault (`pass.2.denoise`) and a sentence with
/// its value and what it must be.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Invalid {}

/// `value` of `key` under `rule`, as an [`Invalid`] naming both.
pub fn check<T: fmt::Display + Copy>(key: &str, value: T, rule: Rule<T>) -> Result<T, Invalid> {
    rule(value).map_err(|what| Invalid {
        key: key.to_owned(),
        message: format!("{key} = {}: {what}", crate::errors::shown(value)),
    })
}

/// A value `Profile::resolve` fills, where it must be filled: unset means the caller skipped
/// resolving, an error rather than a second default.
pub fn resolved<T>(value: Option<T>, pass: usize, key: &str) -> Result<T> {
    value.ok_or_else(|| {
        anyhow!("pass {pass}: `{key}` is unset — resolve the profile (Profile::resolve) first")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_say_what_the_value_must_be() {
        assert_eq!(
            denoise(-0.1).unwrap_err(),
            "denoise must be in [0, 1]: 0 only upscales, 1 repaints from noise"
        );
        assert_eq!(
            size(4).unwrap_err(),
            "size must be between 8 and 16384 pixels"
        );
        assert_eq!(
            scale(17.0).unwrap_err(),
            "scale must be greater than 0 and at most 16"
        );
        assert_eq!(steps(0).unwrap_err(), "steps must be between 1 and 10000");
        assert_eq!(cfg(101.0).unwrap_err(), "cfg must be between 0 and 100");
        assert!(denoise(f64::NAN).is_err() && cfg(f64::NAN).is_err());
        assert_eq!(denoise(1.0), Ok(1.0));
    }
}
