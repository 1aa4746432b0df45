//! Limits checked before anything heavy, by `check` and `generate` alike: a profile inside every
//! field's range can still ask for a schedule of millions of steps, an image of 2^32 pixels
//! or a seed past i64. Each is one line with the limit and the fix.
use anyhow::{bail, Result};

use crate::errors::num;
use crate::profile::Profile;

/// Passes in one job.
pub const MAX_PASSES: usize = crate::defaults::MAX_PASSES;
/// Steps in a pass's full schedule: `int(steps / denoise)`.
pub const MAX_SCHEDULE_STEPS: usize = 10_000;
/// Pixels along either side of any pass (a profile's largest size).
pub const MAX_SIDE: f64 = crate::defaults::MAX_SIZE as f64;
/// Images in one batch.
pub const MAX_BATCH: u32 = 10_000;
/// Characters in one prompt (about 60 chunks of 75 tokens).
pub const MAX_PROMPT_CHARS: usize = 20_000;
/// Jobs one job file expands to (the cartesian products of its tables, counted before any is
/// built: each job's shard comes from its resolved profile).
pub const MAX_JOBS: u64 = 100_000;
/// Cells of one `grid` (columns × rows), counted before any is built: each is an image, and
/// the contact sheet holds them all.
pub const MAX_GRID_CELLS: u64 = 1_000;
/// Brackets nested in a prompt: each `(` multiplies its text's weight by 1.1, and 1.1^931
/// is past f32 (A1111 has no limit; a weight of 1.1^100 ≈ 13,781 is already noise).
pub const MAX_EMPHASIS_DEPTH: usize = 100;
/// Different prompts one prompt's editing and alternation (`[a:b:0.5]`, `[a|b]`) make over a
/// pass: each is encoded once (A1111 encodes one per schedule step, without a bound).
pub const MAX_SCHEDULE_PROMPTS: usize = 64;
/// LoRAs applied in one pass (profile entries and prompt tags together).
pub const MAX_LORAS: usize = 64;

/// What can be checked on the profile alone.
pub fn check_profile(profile: &Profile) -> Result<()> {
    let passes = profile.passes.len();
    if passes > MAX_PASSES {
        bail!(
            "{passes} passes (at most {MAX_PASSES}) — each pass upscales; use fewer, larger steps"
        );
    }
    if profile.batch > MAX_BATCH {
        bail!(
            "batch = {} (at most {MAX_BATCH}) — run several jobs",
            profile.batch
        );
    }
    if profile
        .seed
        .checked_add(i64::from(profile.batch) - 1)
        .is_none()
    {
        bail!(
            "seed {} + batch {} overflows the seed range — use a smaller seed",
            profile.seed,
            profile.batch
        );
    }
    let prompts = [("prompt", &profile.prompt), ("negative", &profile.negative)];
    let per_pass = profile.passes.iter().enumerate().flat_map(|(i, p)| {
        [
            ("prompt", p.prompt.as_ref()),
            ("negative", p.negative.as_ref()),
        ]
        .into_iter()
        .filter_map(move |(k, v)| Some((i + 1, k, v?)))
    });
    for (where_, text) in prompts
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .chain(per_pass.map(|(n, k, v)| (format!("pass {n} {k}"), v)))
    {
        let chars = text.chars().count();
        if chars > MAX_PROMPT_CHARS {
            bail!("{where_} is {chars} characters long (at most {MAX_PROMPT_CHARS}) — shorten it");
        }
        let depth = emphasis_depth(text);
        if depth > MAX_EMPHASIS_DEPTH {
            bail!("{where_} nests brackets {depth} deep (at most {MAX_EMPHASIS_DEPTH}) — each ( ) multiplies the weight by 1.1; write (text:1.5) instead");
        }
    }
    Ok(())
}

/// The deepest nesting of A1111's emphasis brackets `( )` and `[ ]` (escaped ones skipped,
/// unclosed ones counted).
pub fn emphasis_depth(prompt: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = prompt.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '(' | '[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The length of a pass's full schedule, checked: a tiny `denoise` multiplies it.
pub fn schedule_steps(pass: usize, steps: usize, denoise: f64) -> Result<usize> {
    if denoise == 0.0 {
        return Ok(0); // upscale only: no schedule
    }
    let total = if denoise < 1.0 {
        steps as f64 / denoise
    } else {
        steps as f64
    };
    if !total.is_finite() || total > MAX_SCHEDULE_STEPS as f64 {
        let least = steps as f64 / MAX_SCHEDULE_STEPS as f64;
        bail!(
            "pass {pass}: denoise {} with {steps} steps builds a schedule of {} steps (at most {MAX_SCHEDULE_STEPS}) — raise denoise to at least {} or lower steps",
            num(denoise),
            num(total.round()),
            num(least)
        );
    }
    Ok(total as usize)
}

/// A pass's size in pixels, checked before it is rounded into integers.
pub fn side(pass: usize, width: f64, height: f64) -> Result<()> {
    let ok = |v: f64| v.is_finite() && v <= MAX_SIDE;
    if !ok(width) || !ok(height) {
        bail!(
            "pass {pass}: {width:.0}x{height:.0} px is over the {MAX_SIDE} px limit — use fewer or smaller upscale passes"
        );
    }
    Ok(())
}
