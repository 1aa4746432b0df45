//! The automatic stage plan (README "Stage plan"): `target = "WxH"` with one pass-1 table
//! becomes a chain of passes — pass 1 composed at the model's native area (or pass 1's own
//! size) with the target's aspect, then ×`stage_factor` per stage while below the target, the
//! last stage exactly the target. A leaf beside [`crate::defaults`]: it only computes sizes;
//! `Profile::fill_native_size` writes them into the profile as passes.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::defaults::{MAX_PASSES, MAX_SIZE, MIN_SIZE};

/// Stage sizes are multiples of this (the VAE's factor, which `plan::pass_sizes` rounds to).
const MULTIPLE: f64 = 8.0;

/// A profile's `target`: the last stage's size, `"4096x2304"`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Target {
    pub width: u32,
    pub height: u32,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl From<Target> for String {
    fn from(t: Target) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for Target {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl FromStr for Target {
    type Err = String;
    /// `WIDTHxHEIGHT` in pixels, each side within a pass's size limits.
    fn from_str(s: &str) -> Result<Self, String> {
        let sides = s.trim().split_once(['x', 'X']).and_then(|(w, h)| {
            Some((w.trim().parse::<u32>().ok()?, h.trim().parse::<u32>().ok()?))
        });
        let Some((width, height)) = sides else {
            return Err(format!(
                "target = \"{s}\": must be WIDTHxHEIGHT in whole pixels, e.g. target = \"4096x2304\""
            ));
        };
        let fits = |v: u32| (MIN_SIZE..=MAX_SIZE).contains(&v);
        if !fits(width) || !fits(height) {
            return Err(format!(
                "target = \"{s}\": each side must be between {MIN_SIZE} and {MAX_SIZE} pixels — use a smaller target"
            ));
        }
        Ok(Target { width, height })
    }
}

fn to_multiple(v: f64) -> u32 {
    ((v / MULTIPLE).round().max(1.0) * MULTIPLE) as u32
}

/// Every stage's size, pass 1's first: pass 1 at `area` pixels (`from` says whose area, for
/// errors) with the target's aspect, sides to the nearest multiple of 8; then ×`factor` per
/// stage while below the target (nearest multiples of 8); the last stage exactly the target.
/// A target already at pass 1's size is one pass of that size.
pub fn stage_sizes(
    area: f64,
    from: &str,
    target: Target,
    factor: f64,
) -> Result<Vec<(u32, u32)>, String> {
    let (tw, th) = (f64::from(target.width), f64::from(target.height));
    let aspect = tw / th;
    let (raw_w, raw_h) = ((area * aspect).sqrt(), (area / aspect).sqrt());
    // Past the target by more than rounding: the plan would have to shrink.
    if raw_w > tw + MULTIPLE / 2.0 || raw_h > th + MULTIPLE / 2.0 {
        return Err(format!(
            "target = \"{target}\" is smaller than pass 1 ({:.0}x{:.0}, {from} with the target's aspect) — raise target or give pass 1 a smaller width",
            raw_w, raw_h
        ));
    }
    let first = (
        to_multiple(raw_w).min(target.width),
        to_multiple(raw_h).min(target.height),
    );
    let ratio = (tw / f64::from(first.0)).max(th / f64::from(first.1));
    // Upscaling stages: the smallest count whose last factor is at most `factor`.
    let ups = match ratio <= 1.0 {
        true => 0,
        false => (ratio.ln() / factor.ln() - 1e-9).ceil().max(1.0) as usize,
    };
    if ups + 1 > MAX_PASSES {
        return Err(format!(
            "target = \"{target}\" takes {} stages from {}x{} at ×{factor} each (at most {MAX_PASSES} passes) — raise stage_factor",
            ups + 1,
            first.0,
            first.1
        ));
    }
    if ups == 0 {
        return Ok(vec![(target.width, target.height)]);
    }
    let mut sizes = vec![first];
    for k in 1..ups {
        let s = factor.powi(k as i32);
        sizes.push((
            to_multiple(f64::from(first.0) * s),
            to_multiple(f64::from(first.1) * s),
        ));
    }
    sizes.push((target.width, target.height));
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn sd15_to_4096x2304_doubles_from_the_native_area() {
        // 512² px with 16:9 is 682.7x384: 680x384, then ×2 twice, then the target (×1.5).
        let sizes = stage_sizes(512.0 * 512.0, "the native", t("4096x2304"), 2.0).unwrap();
        assert_eq!(
            sizes,
            vec![(680, 384), (1360, 768), (2720, 1536), (4096, 2304)]
        );
    }

    #[test]
    fn a_target_at_an_exact_power_of_the_factor_has_no_extra_stage() {
        let sizes = stage_sizes(512.0 * 512.0, "the native", t("2048x2048"), 2.0).unwrap();
        assert_eq!(sizes, vec![(512, 512), (1024, 1024), (2048, 2048)]);
        let sizes = stage_sizes(512.0 * 512.0, "the native", t("512x512"), 2.0).unwrap();
        assert_eq!(sizes, vec![(512, 512)]);
        let sizes = stage_sizes(64.0 * 64.0, "pass 1's", t("256x144"), 2.0).unwrap();
        assert_eq!(sizes, vec![(88, 48), (176, 96), (256, 144)]);
        let sizes = stage_sizes(1024.0 * 1024.0, "the native", t("4096x4096"), 4.0).unwrap();
        assert_eq!(sizes, vec![(1024, 1024), (4096, 4096)]);
    }

    #[test]
    fn bad_targets_say_what_to_change() {
        assert_eq!(
            "4096".parse::<Target>().unwrap_err(),
            "target = \"4096\": must be WIDTHxHEIGHT in whole pixels, e.g. target = \"4096x2304\""
        );
        assert!("20000x100"
            .parse::<Target>()
            .unwrap_err()
            .contains("between 8 and 16384"));
        assert_eq!(
            stage_sizes(512.0 * 512.0, "the native 512 px area", t("256x144"), 2.0).unwrap_err(),
            "target = \"256x144\" is smaller than pass 1 (683x384, the native 512 px area with the target's aspect) — raise target or give pass 1 a smaller width"
        );
        assert!(stage_sizes(64.0, "x", t("16384x16384"), 1.1)
            .unwrap_err()
            .contains("raise stage_factor"));
    }
}
