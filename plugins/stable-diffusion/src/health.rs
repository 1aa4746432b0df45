//! Numeric health: NaN or inf anywhere in a result is an error that says where it came from —
//! a parameter of the checkpoint holding NaN/inf (a damaged file), or finite weights whose
//! computation overflowed (half precision) — never an image.
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
