//! Prompt text: A1111 emphasis, `<lora:…>` tags, 75-token chunks, OpenCLIP padding.
#![no_main]
use std::sync::OnceLock;

use hiresfix_sd::text::tokenizer::{
    extract_loras, parse_prompt_attention, ClipTokenizer, CHUNK_TOKENS,
};
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(ClipTokenizer::new)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_prompt_attention(text);
    let Ok((cleaned, _loras)) = extract_loras(text) else {
        return;
    };
    let tok = tokenizer();
    let chunks = tok.chunks(&cleaned);
    assert!(!chunks.is_empty(), "a prompt gives at least one chunk");
    for chunk in &chunks {
        assert_eq!(chunk.tokens.len(), CHUNK_TOKENS);
        assert_eq!(chunk.weights.len(), CHUNK_TOKENS);
        let padded = chunk.tokens_padded_with(0, tok.eos());
        assert_eq!(padded.len(), CHUNK_TOKENS);
    }
});
