//! Option checks shared by the patches.
use host_api::{Error, Options, Result};

/// A whole number option (`block = 3`).
pub fn whole(options: &Options<'_>, key: &str, default: u32) -> Result<u32> {
    let v = options.number(key, default as f64)?;
    match v >= 0.0 && v.fract() == 0.0 && v <= u32::MAX as f64 {
        true => Ok(v as u32),
        false => Err(Error(format!(
            "option `{key}` must be a whole number ≥ 0, got {}",
            short(v)
        ))),
    }
}

/// A number option within `[lo, hi]`.
pub fn within(options: &Options<'_>, key: &str, default: f64, lo: f64, hi: f64) -> Result<f64> {
    let v = options.number(key, default)?;
    match v.is_finite() && (lo..=hi).contains(&v) {
        true => Ok(v),
        false => Err(Error(format!(
            "option `{key}` must be between {lo} and {hi}, got {}",
            short(v)
        ))),
    }
}

/// A number as an error message writes it: `1e-300`, not three hundred digits.
fn short(v: f64) -> String {
    let plain = v.to_string();
    match plain.len() <= 16 {
        true => plain,
        false => format!("{v:e}"),
    }
}

/// A number as infotext writes it (Python's `str(float)`: `2.0`, `0.35`).
pub fn py_float(v: f64) -> String {
    match v.fract() == 0.0 && v.abs() < 1e15 {
        true => format!("{v:.1}"),
        false => format!("{v}"),
    }
}

/// A flag as infotext writes it (Python's `str(bool)`: `True`, `False`).
pub fn py_bool(v: bool) -> String {
    match v {
        true => "True".to_owned(),
        false => "False".to_owned(),
    }
}
