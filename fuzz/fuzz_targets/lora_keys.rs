//! LoRA key-and-shape inference without tensor data: arbitrary key names and shapes grouped
//! by layer and checked against the weight each layer changes. Errors are expected; panics,
//! overflows and huge allocations are bugs.
//!
//! Input: lines `key d0 d1 …`; a line `@ d0 d1 …` sets the shape of the model weight every
//! layer changes (default [320, 768]); layers whose name starts with `skip` match no weight.
#![no_main]
use hiresfix_sd::lora::shapes::check_file;
use libfuzzer_sys::fuzz_target;

fn dims(words: std::str::SplitWhitespace<'_>) -> Vec<i64> {
    words.filter_map(|w| w.parse().ok()).take(8).collect()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut target = vec![320, 768];
    let mut entries = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some("@") => target = dims(words),
            Some(key) => entries.push((key.to_owned(), dims(words))),
            None => {}
        }
    }
    let result = check_file(entries, |layer| {
        (!layer.starts_with("skip")).then(|| ("model.weight".to_owned(), target.clone()))
    });
    if let Err(e) = result {
        assert!(!e.is_empty() && !e.contains('\n'), "one line: {e}");
    }
});
