//! Request values bounded before anything works on them: prompts by the engine's prompt limit
//! (checked on the byte length first, so a 4 MB prompt costs nothing), other text by
//! [`MAX_NAME_CHARS`], `/options` by [`MAX_OPTIONS`] keys of [`MAX_OPTION_BYTES`] each, and
//! flags read as A1111 (pydantic) reads a bool.
use serde_json::Value;

use super::error::{cut, ApiError, ApiResult};
use hiresfix_engine::limits::{MAX_EMPHASIS_DEPTH, MAX_PROMPT_CHARS};

/// Characters in a request's name-like text field (sampler, upscaler, model, VAE).
pub const MAX_NAME_CHARS: usize = 1024;
/// Options a server keeps (`POST /sdapi/v1/options`), its own included: A1111 1.10's 324
/// defaults (`a1111_options.json`) leave room for a client's and its extensions' keys.
pub const MAX_OPTIONS: usize = 1024;
/// Bytes of all options kept, keys and values as JSON.
pub const MAX_OPTIONS_BYTES: usize = 1024 * 1024;
/// Bytes of one option's value, as JSON.
pub const MAX_OPTION_BYTES: usize = 64 * 1024;

/// A text `field` of at most `max` characters (a 422 naming the field and the limit).
pub fn bounded_text(field: &str, text: &str, max: usize) -> ApiResult<()> {
    // A UTF-8 character is at most 4 bytes: past 4 × max bytes nothing needs counting.
    let over = match text.len() > 4 * max {
        true => Some(format!("over {max} characters ({} bytes)", text.len())),
        false => {
            let chars = text.chars().count();
            (chars > max).then(|| format!("{chars} characters long (at most {max})"))
        }
    };
    match over {
        Some(what) => Err(ApiError::field(
            field,
            format!("{field} is {what} — shorten it"),
        )),
        None => Ok(()),
    }
}

/// A prompt field under the engine's prompt limit, its brackets nested at most
/// [`MAX_EMPHASIS_DEPTH`] deep.
pub fn bounded_prompt(field: &str, prompt: &str) -> ApiResult<()> {
    bounded_text(field, prompt, MAX_PROMPT_CHARS)?;
    let depth = hiresfix_engine::limits::emphasis_depth(prompt);
    if depth > MAX_EMPHASIS_DEPTH {
        return Err(ApiError::field(
            field,
            format!("{field} nests brackets {depth} deep (at most {MAX_EMPHASIS_DEPTH}) — each ( ) multiplies the weight by 1.1; write (text:1.5) instead"),
        ));
    }
    Ok(())
}

/// A flag as A1111's API reads a bool (pydantic): true for true, 1, "1", "true", "t", "yes",
/// "y", "on"; false for false, 0, "0", "false", "f", "no", "n", "off" (any case); anything
/// else is a 422 naming the field.
pub fn bool_field(field: &str, value: &Value) -> ApiResult<bool> {
    let read = match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_f64() {
            Some(1.0) => Some(true),
            Some(0.0) => Some(false),
            _ => None,
        },
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "true" | "t" | "yes" | "y" | "on" => Some(true),
            "0" | "false" | "f" | "no" | "n" | "off" => Some(false),
            _ => None,
        },
        _ => None,
    };
    read.ok_or_else(|| {
        ApiError::field(
            field,
            format!(
                "{field} must be true or false (or 1/0, \"yes\"/\"no\", \"on\"/\"off\"), not {}",
                cut(&value.to_string(), 80)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flags_read_as_a1111_reads_them() {
        for yes in [
            json!(true),
            json!(1),
            json!(1.0),
            json!("1"),
            json!("TRUE"),
            json!("on"),
            json!("y"),
        ] {
            assert!(bool_field("enable_hr", &yes).unwrap(), "{yes}");
        }
        for no in [
            json!(false),
            json!(0),
            json!("0"),
            json!("False"),
            json!("off"),
            json!("n"),
        ] {
            assert!(!bool_field("enable_hr", &no).unwrap(), "{no}");
        }
        for bad in [
            json!(2),
            json!(0.5),
            json!("maybe"),
            json!(" true"),
            json!([]),
            json!({}),
        ] {
            let e = bool_field("enable_hr", &bad).unwrap_err();
            assert_eq!(
                (e.status.as_u16(), e.field.as_deref()),
                (422, Some("enable_hr"))
            );
        }
    }

    #[test]
    fn text_is_bounded_before_it_is_counted() {
        assert!(bounded_prompt("prompt", &"a".repeat(MAX_PROMPT_CHARS)).is_ok());
        let e = bounded_prompt("prompt", &"a".repeat(MAX_PROMPT_CHARS + 1)).unwrap_err();
        let limit = format!("at most {MAX_PROMPT_CHARS})");
        assert!(e.message.contains(&limit), "{}", e.message);
        let e = bounded_prompt("prompt", &"a".repeat(4 << 20)).unwrap_err();
        let over = format!("prompt is over {MAX_PROMPT_CHARS} characters");
        assert!(e.message.starts_with(&over), "{}", e.message);
        let deep = format!("{}a{}", "(".repeat(9000), ")".repeat(9000));
        let e = bounded_prompt("prompt", &deep).unwrap_err();
        assert!(e.message.contains("9000 deep"), "{}", e.message);
        assert!(bounded_prompt("p", &format!("{}a", "(".repeat(MAX_EMPHASIS_DEPTH))).is_ok());
        assert!(bounded_prompt("p", &"\\(".repeat(500)).is_ok());
        // Four-byte characters count once each.
        assert!(bounded_text("x", &"🦀".repeat(10), 10).is_ok());
    }
}
