//! PNG text chunks as `hiresfix replay` / `finish` read them (the bounded reader,
//! `png_text.rs`), and the infotext, profile and stored latent inside.
#![no_main]
use std::io::Cursor;

use hiresfix_engine::output::{read_text_chunks_from, PROFILE_CHUNK};
use hiresfix_engine::{infotext, profile::Profile, stored_latent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The stored latent's first lines bound how much of it is inflated: any bytes.
    let _ = stored_latent::declared_text_len(data);
    let Ok(chunks) = read_text_chunks_from(Cursor::new(data), "fuzz.png") else {
        return;
    };
    for (key, text) in &chunks {
        if key == "parameters" {
            let _ = infotext::parse(text);
        } else if key == PROFILE_CHUNK {
            let _ = Profile::parse(text, "fuzz.png");
        } else if key == stored_latent::CHUNK {
            let _ = stored_latent::decode(text, "fuzz.png");
        }
    }
});
