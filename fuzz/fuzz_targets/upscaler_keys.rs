//! Super-resolution architecture inference without tensor data: arbitrary (key, shape) lists
//! to RRDBNet / SRVGGNetCompact, scale and counts. Errors are expected; panics, overflows and
//! huge allocations are bugs, and an accepted file has a scale of 1 to 16.
//!
//! Input: lines `key d0 d1 …`.
#![no_main]
use hiresfix_upscalers_pixel::models::arch::{infer, Shapes};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut shapes = Shapes::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if let Some(key) = words.next() {
            let dims = words.filter_map(|w| w.parse().ok()).take(8).collect();
            shapes.insert(key.to_owned(), dims);
        }
    }
    match infer(&shapes) {
        Ok(arch) => assert!((1..=16).contains(&arch.scale()), "{arch:?}"),
        Err(e) => assert!(!e.is_empty() && !e.contains('\n'), "one line: {e}"),
    }
});
