//! A1111 `parameters` text as PNG Info and Civitai write it.
#![no_main]
use hiresfix_engine::infotext;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = infotext::parse(text);
    let _ = parsed.get("Seed");
});
