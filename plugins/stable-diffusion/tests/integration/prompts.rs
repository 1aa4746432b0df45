//! A1111 prompt handling: emphasis, escapes, BREAK and 75-token chunking. Expected ids and
//! weights come from A1111's `tokenize_line` over transformers' `CLIPTokenizer`.
use hiresfix_sd::text::tokenizer::{ClipTokenizer, PromptChunk, CHUNK_TOKENS};

const BOS: i64 = 49406;
const EOS: i64 = 49407;
const CAT: i64 = 2368;

/// The chunk without its EOS padding: BOS, tokens, EOS.
fn trimmed(chunk: &PromptChunk) -> (Vec<i64>, Vec<f32>) {
    assert_eq!(chunk.tokens.len(), CHUNK_TOKENS);
    assert_eq!(chunk.weights.len(), CHUNK_TOKENS);
    let mut n = CHUNK_TOKENS;
    while n > 2 && chunk.tokens[n - 2] == EOS {
        n -= 1;
    }
    assert!(
        chunk.tokens[n..].iter().all(|t| *t == EOS) && chunk.weights[n..].iter().all(|w| *w == 1.0)
    );
    (chunk.tokens[..n].to_vec(), chunk.weights[..n].to_vec())
}

fn chunks(prompt: &str) -> Vec<(Vec<i64>, Vec<f32>)> {
    ClipTokenizer::new()
        .chunks(prompt)
        .iter()
        .map(trimmed)
        .collect()
}

#[test]
fn explicit_weight_applies_to_its_word_only() {
    assert_eq!(
        chunks("a (cat:1.2)"),
        vec![(vec![BOS, 320, CAT, EOS], vec![1.0, 1.0, 1.2, 1.0])]
    );
}

#[test]
fn square_brackets_divide_by_1_1() {
    assert_eq!(
        chunks("a [cat]"),
        vec![(
            vec![BOS, 320, CAT, EOS],
            vec![1.0, 1.0, (1.0f64 / 1.1) as f32, 1.0]
        )]
    );
}

#[test]
fn escaped_brackets_and_backslash_are_plain_text() {
    assert_eq!(
        chunks(r"\(cat\) \\"),
        vec![(vec![BOS, 263, CAT, 264, 315, EOS], vec![1.0; 6])]
    );
}

#[test]
fn nested_and_mixed_emphasis_multiplies() {
    let w = (1.0f64 / 1.1) as f32;
    assert_eq!(
        chunks("(masterpiece), best quality, ((red)) [sky:0.5]"),
        vec![(
            vec![BOS, 12066, 267, 949, 3027, 267, 736, 2390, 281, 271, 269, 276, EOS],
            vec![
                1.0,
                1.1,
                1.0,
                1.0,
                1.0,
                1.0,
                (1.1f64 * 1.1) as f32,
                w,
                w,
                w,
                w,
                w,
                1.0
            ]
        )]
    );
}

#[test]
fn break_starts_a_new_chunk() {
    assert_eq!(
        chunks("a cat BREAK dog"),
        vec![
            (vec![BOS, 320, CAT, EOS], vec![1.0; 4]),
            (vec![BOS, 1929, EOS], vec![1.0; 3])
        ]
    );
}

#[test]
fn long_prompts_split_every_75_tokens() {
    let cats = chunks(&"cat ".repeat(80));
    assert_eq!(cats.len(), 2);
    assert_eq!(cats[0].0.len(), 77);
    assert!(cats[0].0[1..76].iter().all(|t| *t == CAT));
    assert_eq!(cats[1].0, vec![BOS, CAT, CAT, CAT, CAT, CAT, EOS]);
}

#[test]
fn chunk_break_moves_back_to_a_comma_within_20_tokens() {
    let prompt = format!("{}, {}", "a ".repeat(70), "cat ".repeat(10));
    let got = chunks(&prompt);
    let mut first = vec![BOS];
    first.extend(std::iter::repeat_n(320, 70));
    first.extend([267, EOS]);
    let mut second = vec![BOS];
    second.extend(std::iter::repeat_n(CAT, 10));
    second.push(EOS);
    assert_eq!(
        got.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        vec![first, second]
    );
}

#[test]
fn empty_prompt_is_one_chunk_of_bos_then_eos() {
    let tokenizer = ClipTokenizer::new();
    let empty = tokenizer.chunks("");
    assert_eq!(empty.len(), 1);
    assert_eq!(empty[0].tokens[0], BOS);
    assert!(empty[0].tokens[1..].iter().all(|t| *t == EOS));
    assert_eq!(empty[0], tokenizer.empty_chunk());
}
