//! Numeric health: NaN or inf anywhere in a result is an error that says where it came from —
//! a LoRA or merge that made a weight NaN/inf (named first, with its weight), a parameter of
//! the checkpoint holding NaN/inf (a damaged file), or finite weights whose computation
//! overflowed (half precision) — never an image. LoRAs and merges are checked as they are
//! applied, so the later blame is the last resort.
use std::collections::HashMap;

use tch::{Kind, Tensor};

/// Whether every element of `t` is finite (an empty tensor is).
pub fn is_finite(t: &Tensor) -> bool {
    !t.is_floating_point() || bool::try_from(t.isfinite().all()).unwrap_or(false)
}

/// The first parameter (by name) under `prefix` holding NaN or inf.
pub fn first_nonfinite(vars: &HashMap<String, Tensor>, prefix: &str) -> Option<String> {
    let mut names: Vec<&String> = vars.keys().filter(|k| k.starts_with(prefix)).collect();
    names.sort();
    names.into_iter().find(|k| !is_finite(&vars[*k])).cloned()
}

/// What was done to the checkpoint's weights, for blame.
#[derive(Debug, Default)]
pub struct Applied {
    /// The LoRA set applied, described ("LoRA `a.safetensors` (weight 0.8)").
    pub loras: Option<String>,
    /// Whether the non-finite weight is one the LoRA set changed.
    pub lora_changed: bool,
    /// The merge the model was loaded as ("a.safetensors:0.5 + b.safetensors:0.5").
    pub merge: Option<String>,
}

/// A dtype as profiles name it (`fp32`, `fp16`, `bf16`).
pub fn dtype(kind: Kind) -> String {
    match kind {
        Kind::Float => "fp32".into(),
        Kind::Half => "fp16".into(),
        Kind::BFloat16 => "bf16".into(),
        Kind::Float8e4m3fn => "fp8_e4m3fn".into(),
        Kind::Float8e5m2 => "fp8_e5m2".into(),
        other => format!("{other:?}"),
    }
}

/// `x` short: plain decimals between 1e-4 and 1e6, else scientific (`1e308`, `NaN`, `inf`).
pub fn number(x: f64) -> String {
    match x.abs() {
        a if a == 0.0 || (1e-4..1e6).contains(&a) => format!("{x}"),
        _ if !x.is_finite() => format!("{x}"),
        _ => format!("{x:e}"),
    }
}

/// The cause of a non-finite result given what was applied: the LoRA set or the merge first
/// when it changed the bad weight, then the checkpoint.
pub fn cause_in(bad_weight: Option<String>, kind: Kind, applied: &Applied) -> String {
    match (bad_weight, &applied.loras, &applied.merge) {
        (Some(name), Some(loras), _) if applied.lora_changed => format!(
            "{loras} makes `{name}` NaN or inf — lower its weight or re-download the LoRA"
        ),
        (Some(name), _, Some(merge)) => format!(
            "the merge ({merge}) makes `{name}` NaN or inf — use merge weights near 0..1, or re-download the inputs"
        ),
        (None, Some(loras), _) => format!("{} (with {loras} applied: a lower LoRA weight may help)", cause(None, kind)),
        (bad, _, _) => cause(bad, kind),
    }
}

/// The cause of a non-finite result, for the end of an error message.
pub fn cause(bad_weight: Option<String>, kind: Kind) -> String {
    match (bad_weight, kind) {
        (Some(name), _) => format!(
            "the checkpoint's tensor `{name}` holds NaN or inf: the file is damaged — re-download it"
        ),
        (None, Kind::Half | Kind::BFloat16) => format!(
            "the weights are finite, so the computation overflowed in {} — try dtype = \"fp32\"",
            if kind == Kind::Half { "fp16 (try \"bf16\")" } else { "bf16" }
        ),
        (None, _) => "the weights are finite — the inputs or settings drive the model out of range".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_short_and_blame_goes_to_the_lora_first() {
        assert_eq!(number(1e308), "1e308");
        assert_eq!(number(0.8), "0.8");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(-2.5e-300), "-2.5e-300");
        let applied = Applied {
            loras: Some("LoRA `a.safetensors` (weight 1e308)".into()),
            lora_changed: true,
            merge: None,
        };
        let text = cause_in(Some("w".into()), Kind::Float, &applied);
        assert!(
            text.starts_with("LoRA `a.safetensors` (weight 1e308) makes `w`"),
            "{text}"
        );
        let plain = cause_in(Some("w".into()), Kind::Float, &Applied::default());
        assert!(plain.contains("the checkpoint's tensor `w`"), "{plain}");
        let merged = Applied {
            merge: Some("a:1e300 + b:1".into()),
            ..Applied::default()
        };
        assert!(cause_in(Some("w".into()), Kind::Float, &merged)
            .starts_with("the merge (a:1e300 + b:1)"));
    }
}
