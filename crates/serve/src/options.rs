//! `/sdapi/v1/options`: every key A1111 1.10 returns with its default (`a1111_options.json`,
//! transcribed from `modules/shared_options.py` and the `options_templates` of its built-in
//! extensions — Lora, LDSR, ScuNET, SwinIR, canvas-zoom-and-pan, extra-options-section,
//! hypertile; HTML-only entries, which A1111 does not return, left out), with the keys
//! hiresfix honours kept live and checked when set. The rest are stored and returned.
use serde_json::{Map, Value};

use super::error::{cut, ApiError, ApiResult};
use super::progress::PreviewSettings;

/// The keys hiresfix honours (README "Options"); every other key is stored and returned.
pub const HONOURED: &[&str] = &[
    "sd_model_checkpoint",
    "sd_vae",
    "CLIP_stop_at_last_layers",
    "eta_noise_seed_delta",
    "hires_fix_use_firstpass_conds",
    "live_previews_enable",
    "show_progress_every_n_steps",
    "hires_fix_refiner_pass",
    "show_progress_type",
];

/// A1111 1.10's options with their defaults.
pub fn defaults() -> Map<String, Value> {
    match serde_json::from_str(include_str!("a1111_options.json")) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(), // the file is checked by a test
    }
}

/// An honoured option's value checked (other keys pass as sent); `sd_model_checkpoint` and
/// `sd_vae` are checked by the server state, which knows the files.
pub fn checked(key: &str, value: &Value) -> ApiResult<Value> {
    let bad = |what: &str| {
        Err(ApiError::field(
            key,
            format!("{key}: {} is not {what}", cut(&value.to_string(), 80)),
        ))
    };
    match key {
        "CLIP_stop_at_last_layers" => match value.as_u64() {
            Some(n @ 1..=12) => Ok(Value::from(n)),
            _ => bad("1 to 12"),
        },
        "eta_noise_seed_delta" => match value.as_i64() {
            Some(n) => Ok(Value::from(n)),
            None => bad("a whole number"),
        },
        "show_progress_every_n_steps" => match value.as_i64() {
            Some(n) if n >= -1 => Ok(Value::from(n)),
            _ => bad("a whole number of steps (-1: no previews while sampling)"),
        },
        "hires_fix_refiner_pass" => match value.as_str() {
            Some(v @ ("first pass" | "second pass" | "both passes")) => Ok(Value::from(v)),
            _ => bad("one of \"first pass\", \"second pass\", \"both passes\""),
        },
        // A1111's choices; "Approx NN" and "Full" preview as "TAESD" does here.
        "show_progress_type" => match value.as_str() {
            Some(s @ ("Full" | "Approx NN" | "Approx cheap" | "TAESD")) => Ok(Value::from(s)),
            _ => bad("one of \"Full\", \"Approx NN\", \"Approx cheap\", \"TAESD\""),
        },
        "live_previews_enable" | "hires_fix_use_firstpass_conds" => {
            super::bool_field(key, value).map(Value::Bool)
        }
        _ => Ok(value.clone()),
    }
}

/// The live preview settings the options say.
pub fn previews(options: &Map<String, Value>) -> PreviewSettings {
    let fallback = PreviewSettings::default();
    PreviewSettings {
        enabled: options
            .get("live_previews_enable")
            .and_then(Value::as_bool)
            .unwrap_or(fallback.enabled),
        every: options
            .get("show_progress_every_n_steps")
            .and_then(Value::as_i64)
            .unwrap_or(fallback.every),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_a1111s_within_the_bounds() {
        let d = defaults();
        assert_eq!(d.len(), 324);
        assert!(d.len() < crate::MAX_OPTIONS);
        let bytes: usize = d.iter().map(|(k, v)| k.len() + v.to_string().len()).sum();
        assert!(bytes < crate::bounds::MAX_OPTIONS_BYTES);
        assert_eq!(d["send_seed"], true);
        assert_eq!(d["show_progress_every_n_steps"], 10);
        assert_eq!(d["eta_noise_seed_delta"], 0);
        assert_eq!(d["CLIP_stop_at_last_layers"], 1);
        assert_eq!(d["hires_fix_use_firstpass_conds"], false);
        for key in HONOURED {
            assert!(d.contains_key(*key), "{key}");
        }
        assert_eq!(
            previews(&d),
            PreviewSettings {
                enabled: true,
                every: 10
            }
        );
    }

    #[test]
    fn honoured_values_are_checked() {
        use serde_json::json;
        assert_eq!(
            checked("live_previews_enable", &json!("off")).unwrap(),
            json!(false)
        );
        assert!(checked("show_progress_every_n_steps", &json!(-2)).is_err());
        assert!(checked("eta_noise_seed_delta", &json!(1.5)).is_err());
        assert_eq!(
            checked("hires_fix_use_firstpass_conds", &json!(true)).unwrap(),
            json!(true)
        );
        assert!(checked("hires_fix_use_firstpass_conds", &json!([1])).is_err());
        assert_eq!(checked("anything", &json!([1])).unwrap(), json!([1]));
    }
}
