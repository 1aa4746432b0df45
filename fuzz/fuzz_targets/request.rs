//! The server's request parsing: a `Content-Type` value through the media-type parser and the
//! admission rule every POST passes, and a body through JSON → `txt2img::request_profile` (an
//! A1111 body as a profile, no server) → the engine's limits. The first line of the input is
//! the header value, the rest the body. The registry is empty (no plugin is loaded under the
//! sanitizer), so a body stops at its sampler's name; what comes before is all exercised.
#![no_main]
use axum::http::{header, HeaderMap, HeaderValue};
use hiresfix_engine::registry::Registry;
use hiresfix_serve::{body, content_type, txt2img};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let (head, rest) = data.split_at(split);
    if let Ok(value) = std::str::from_utf8(head) {
        if let Ok(media) = content_type::parse(value) {
            assert!(!media.kind.is_empty() && !media.subtype.is_empty());
        }
    }
    if let Ok(value) = HeaderValue::from_bytes(head) {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, value);
        for path in [
            "/sdapi/v1/txt2img",
            "/sdapi/v1/interrupt",
            "/hiresfix/v1/generate",
        ] {
            let _ = content_type::admit(path, &headers);
        }
    }
    let Ok(text) = std::str::from_utf8(rest.get(1..).unwrap_or_default()) else {
        return;
    };
    let Ok(request) = body::json_object(text) else {
        return;
    };
    let registry = Registry::default();
    match txt2img::request_profile(&registry, &request) {
        Ok(profile) => {
            let _ = hiresfix_engine::limits::check_profile(&profile);
        }
        Err(e) => assert!(e.status.is_client_error(), "{}: {}", e.status, e.message),
    }
});
