//! PNG text chunks as `hiresfix replay` reads them, and the infotext and profile inside.
#![no_main]
use std::io::Cursor;

use hiresfix_engine::output::{read_text_chunks_from, PROFILE_CHUNK};
use hiresfix_engine::{infotext, profile::Profile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(chunks) = read_text_chunks_from(Cursor::new(data), "fuzz.png") else {
        return;
    };
    for (key, text) in &chunks {
        if key == "parameters" {
            let _ = infotext::parse(text);
        } else if key == PROFILE_CHUNK {
            let _ = Profile::parse(text, "fuzz.png");
        }
    }
});
