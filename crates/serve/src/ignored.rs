//! A1111 request fields hiresfix accepts but does not honour (yet): each one sent with an
//! effect is named in the response's `info.warnings`, never dropped without a word (the
//! sampler knobs a sampler lacks are named by `sampler_fields`); and a
//! `script_name` is a 422, as A1111 answers a script it does not have (hiresfix has none).
use serde_json::{Map, Value};

use super::error::{ApiError, ApiResult};

/// (field, what hiresfix does instead).
const IGNORED: &[(&str, &str)] = &[
    ("restore_faces", "no face restoration models here"),
    ("styles", "prompt styles are not stored here"),
];

/// Whether `value` asks for nothing: null, false, 0, -1, "", an empty list or object, or
/// A1111's neutral values (`s_noise` 1, `seed_resize_from_*` -1 and 0).
fn neutral(field: &str, value: &Value) -> bool {
    match value {
        Value::Null | Value::Bool(false) => true,
        Value::Number(n) => {
            let v = n.as_f64().unwrap_or(0.0);
            v == 0.0 || v == -1.0 || (field == "s_noise" && v == 1.0)
        }
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(true) => false,
    }
}

/// The warnings for the fields of `body` that ask for something hiresfix does not do.
pub fn warnings(body: &Map<String, Value>) -> Vec<String> {
    IGNORED
        .iter()
        .filter_map(|(field, why)| {
            let value = body.get(*field)?;
            (!neutral(field, value)).then(|| {
                let shown = super::error::cut(&value.to_string(), 40);
                format!("{field} = {shown} was ignored: {why}")
            })
        })
        .collect()
}

/// A named `script_name`: 422, as A1111 answers a script it does not have.
pub fn no_script(body: &Map<String, Value>) -> ApiResult<()> {
    match body.get("script_name") {
        Some(Value::String(name)) if !name.trim().is_empty() => Err(ApiError::field(
            "script_name",
            format!(
                "script `{}` not found — hiresfix has no A1111 scripts (GET /sdapi/v1/scripts lists none); remove script_name",
                super::error::cut(name, 80)
            ),
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_that_ask_for_something_are_named() {
        let body = json!({
            "restore_faces": true, "eta": 0.5, "s_noise": 1.2, "subseed_strength": 0.3,
            "seed_resize_from_h": 512, "styles": ["a"]
        });
        let got = warnings(body.as_object().unwrap());
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(
            got[0].starts_with("restore_faces = true was ignored"),
            "{got:?}"
        );
        assert!(
            got[1].starts_with("styles = [\"a\"] was ignored"),
            "{got:?}"
        );
        assert!(no_script(json!({"script_name": ""}).as_object().unwrap()).is_ok());
        let e = no_script(json!({"script_name": "x/y plot"}).as_object().unwrap()).unwrap_err();
        assert_eq!(
            (e.status.as_u16(), e.field.as_deref()),
            (422, Some("script_name"))
        );
    }
}
