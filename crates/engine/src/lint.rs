//! The classic ways a hires-fix profile fails, found before anything renders: each finding
//! names the pass and the key, says what goes wrong and what to write instead. `check` prints
//! them; `generate` prints the warnings and stops on errors before loading a model.
use std::fmt;

use host_api::CheckpointInfo;

use crate::infotext::num;
use crate::plan::{PassPlan, PassSize};

/// How far one pass may upscale before latent detail and composition break up.
pub const MAX_UPSCALE: f64 = 2.0;
/// Below this denoise a latent upscaler's blur and grid artefacts survive.
pub const MIN_LATENT_DENOISE: f64 = 0.5;
/// Above this denoise a later pass repaints pass 1's composition.
pub const MAX_LATER_DENOISE: f64 = 0.6;
/// Above this total LoRA weight in a pass, styles fight and images burn.
pub const MAX_LORA_SUM: f64 = 1.5;
/// Pass 1's area against the family's native area, beyond which it composes badly.
pub const NATIVE_AREA_RANGE: (f64, f64) = (0.25, 2.25);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Warning,
    Error,
}

/// One finding: where (pass, key), what, and the fix.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    pub severity: Severity,
    pub pass: usize,
    pub key: &'static str,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        };
        write!(
            f,
            "{level}: pass {} `{}`: {} — {}",
            self.pass, self.key, self.message, self.fix
        )
    }
}

fn warning(pass: usize, key: &'static str, message: String, fix: String) -> Finding {
    Finding {
        severity: Severity::Warning,
        pass,
        key,
        message,
        fix,
    }
}

/// Every finding for the planned passes. `info` describes pass 1's checkpoint.
pub fn lint(plans: &[PassPlan<'_>], sizes: &[PassSize], info: &CheckpointInfo) -> Vec<Finding> {
    let mut found = Vec::new();
    // Deep Shrink exists to compose above the native size: no warning for it.
    let shrinks = plans.first().is_some_and(|p| {
        p.patches
            .iter()
            .any(|patch| patch.entry.decl.name.as_str() == "deep_shrink")
    });
    if !shrinks {
        native_size(sizes, info, &mut found);
    }
    for (i, (plan, size)) in plans.iter().zip(sizes).enumerate() {
        if i > 0 {
            upscale(plan, &sizes[i - 1], size, &mut found);
            denoise(plan, &mut found);
            dropped_negatives(&plans[0], plan, &mut found);
        }
        contradictions(plan, &mut found);
        lora_sum(plan, &mut found);
    }
    found
}

/// Pass 1 far from the family's native size composes badly (SD 1.x at 1024 repeats subjects).
fn native_size(sizes: &[PassSize], info: &CheckpointInfo, found: &mut Vec<Finding>) {
    let Some(first) = sizes.first() else { return };
    if info.default_size == 0 {
        return; // a backend without the tools table, not loaded yet: its native size is unknown
    }
    let native = f64::from(info.default_size);
    let ratio = f64::from(first.width) * f64::from(first.height) / (native * native);
    if ratio < NATIVE_AREA_RANGE.0 || ratio > NATIVE_AREA_RANGE.1 {
        found.push(warning(
            1,
            "width",
            format!(
                "{}x{} is far from {}'s native {native} px: composing there repeats subjects or loses detail",
                first.width, first.height, info.family_name
            ),
            format!("compose near {native}x{native} in pass 1 and reach the final size in later passes"),
        ));
    }
}

/// More than 2× in one pass: the stage split that keeps each step at most 2×.
fn upscale(plan: &PassPlan<'_>, prev: &PassSize, size: &PassSize, found: &mut Vec<Finding>) {
    let factor = (f64::from(size.width) / f64::from(prev.width))
        .max(f64::from(size.height) / f64::from(prev.height));
    if factor <= MAX_UPSCALE + 1e-9 {
        return;
    }
    let mut stages = vec![prev.width];
    while f64::from(size.width) / f64::from(*stages.last().unwrap_or(&size.width))
        > MAX_UPSCALE + 1e-9
    {
        let next = stages.last().unwrap_or(&size.width) * 2;
        stages.push(next);
    }
    stages.push(size.width);
    let split: Vec<String> = stages.iter().map(u32::to_string).collect();
    found.push(warning(
        plan.number,
        "scale",
        format!(
            "upscales {}× in one pass ({}→{} px wide): latent detail smears and the composition drifts",
            num((factor * 100.0).round() / 100.0),
            prev.width,
            size.width
        ),
        format!("split it into passes of at most 2×: {}", split.join("→")),
    ));
}

fn denoise(plan: &PassPlan<'_>, found: &mut Vec<Finding>) {
    let latent = plan
        .upscaler
        .is_some_and(|u| u.decl.name.starts_with("latent"));
    if latent && plan.denoise < MIN_LATENT_DENOISE {
        found.push(warning(
            plan.number,
            "denoise",
            format!("{} after the latent upscaler `{}` keeps its blur and grid artefacts", num(plan.denoise), plan.upscaler.map(|u| u.decl.name.to_string()).unwrap_or_default()),
            "use denoise 0.5–0.6 after a latent upscaler, or a pixel upscaler (pixel-lanczos tolerates 0.2–0.35)".into(),
        ));
    }
    if plan.denoise > MAX_LATER_DENOISE {
        found.push(warning(
            plan.number,
            "denoise",
            format!("{} repaints pass 1's composition", num(plan.denoise)),
            format!("keep later passes at {MAX_LATER_DENOISE} or below (0.3–0.5 refines detail)"),
        ));
    }
}

/// A prompt's comma-separated terms, without emphasis syntax, weights or tags, lower case.
pub fn terms(prompt: &str) -> Vec<String> {
    let text = host_api::prompt::extract_tags(prompt)
        .map(|t| t.text)
        .unwrap_or_else(|_| prompt.to_owned());
    text.split([',', '\n'])
        .filter_map(|term| {
            let bare: String = term.chars().filter(|c| !"()[]{}".contains(*c)).collect();
            let bare = match bare.rsplit_once(':') {
                Some((word, weight)) if weight.trim().parse::<f64>().is_ok() => word.to_owned(),
                _ => bare,
            };
            let bare = bare.replace("BREAK", " ");
            let bare = bare
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .to_lowercase();
            (!bare.is_empty()).then_some(bare)
        })
        .collect()
}

/// Negative terms of pass 1 a later pass's negative no longer has.
fn dropped_negatives(first: &PassPlan<'_>, plan: &PassPlan<'_>, found: &mut Vec<Finding>) {
    let kept = terms(&plan.negative);
    let dropped: Vec<String> = terms(&first.negative)
        .into_iter()
        .filter(|t| !kept.contains(t))
        .collect();
    if !dropped.is_empty() {
        found.push(warning(
            plan.number,
            "negative",
            format!("drops pass 1's negative terms: {}", dropped.join(", ")),
            format!(
                "repeat them in pass {}'s negative (the hires pass brings them back otherwise)",
                plan.number
            ),
        ));
    }
}

/// A term asked for and against in the same pass.
fn contradictions(plan: &PassPlan<'_>, found: &mut Vec<Finding>) {
    let negative = terms(&plan.negative);
    let both: Vec<String> = terms(&plan.prompt)
        .into_iter()
        .filter(|t| negative.contains(t))
        .collect();
    if !both.is_empty() {
        found.push(warning(
            plan.number,
            "prompt",
            format!("asks for and against the same terms: {}", both.join(", ")),
            "remove them from the prompt or from the negative".into(),
        ));
    }
}

fn lora_sum(plan: &PassPlan<'_>, found: &mut Vec<Finding>) {
    let sum: f64 = plan
        .loras
        .iter()
        .map(|l| l.unet.abs().max(l.te.abs()))
        .sum();
    if sum > MAX_LORA_SUM {
        let names: Vec<String> = plan.loras.iter().map(|l| l.tag()).collect();
        found.push(warning(
            plan.number,
            "loras",
            format!(
                "LoRA weights add up to {} ({})",
                num((sum * 100.0).round() / 100.0),
                names.join(" ")
            ),
            format!("keep the sum at {MAX_LORA_SUM} or below: lower the weights"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::terms;

    #[test]
    fn terms_drop_emphasis_weights_and_tags() {
        assert_eq!(
            terms("(blurry:1.2), [lowres], <lora:x:1> Bad  Hands,\nwatermark BREAK text"),
            ["blurry", "lowres", "bad hands", "watermark text"]
        );
    }
}
