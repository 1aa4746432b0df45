//! Prompts as AUTOMATIC1111 reads them: emphasis syntax (modules/prompt_parser.py
//! `parse_prompt_attention`), 75-token chunks with comma backtracking and `BREAK`
//! (modules/sd_hijack_clip.py `tokenize_line`), and `<lora:name:w>` tags
//! (modules/extra_networks.py, parsed in `host_api::prompt`). BPE is OpenAI CLIP's, via
//! `instant-clip-tokenizer`.
pub use host_api::prompt::{extract_loras, LoraTag};
use instant_clip_tokenizer::{Token, Tokenizer};

/// Tokens per chunk between BOS and EOS.
pub const CHUNK_LENGTH: usize = 75;
/// A chunk's full length: BOS + 75 + EOS.
pub const CHUNK_TOKENS: usize = CHUNK_LENGTH + 2;
/// A1111 `comma_padding_backtrack`: how far back a comma may move a chunk break.
const COMMA_BACKTRACK: usize = 20;
const ROUND_MULTIPLIER: f64 = 1.1;
const SQUARE_MULTIPLIER: f64 = 1.0 / 1.1;

/// One 77-token CLIP input with a per-token emphasis weight: BOS, up to 75 prompt tokens,
/// EOS, then EOS as padding (A1111 `tokenize_line`).
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    pub tokens: Vec<i64>,
    pub weights: Vec<f32>,
}

impl PromptChunk {
    /// The tokens with everything after the first end-of-text replaced by `pad` (OpenCLIP
    /// encoders pad with 0, as A1111's `process_tokens` does when pad and end differ).
    pub fn tokens_padded_with(&self, pad: i64, eos: i64) -> Vec<i64> {
        let end = self
            .tokens
            .iter()
            .position(|t| *t == eos)
            .map_or(self.tokens.len(), |i| i + 1);
        let mut tokens = self.tokens.clone();
        tokens[end..].iter_mut().for_each(|t| *t = pad);
        tokens
    }
}

/// One piece of parsed prompt text and its emphasis; `("BREAK", -1.0)` marks a forced chunk break.
pub type Weighted = (String, f64);

/// A1111 `parse_prompt_attention`: `(x)` ×1.1, `[x]` ÷1.1, `(x:1.3)`, escapes `\( \) \[ \] \\`,
/// unbalanced brackets closed at the end, runs of equal weight merged.
pub fn parse_prompt_attention(text: &str) -> Vec<Weighted> {
    let mut res: Vec<Weighted> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<Weighted>, start: usize, by: f64| {
        res[start..].iter_mut().for_each(|r| r.1 *= by)
    };
    let mut rest = text;
    while !rest.is_empty() {
        let (token, len) = next_attention_token(rest);
        let matched = &rest[..len];
        rest = &rest[len..];
        match token {
            AttentionToken::Escaped(s) => res.push((s.to_string(), 1.0)),
            AttentionToken::Open('(') => round.push(res.len()),
            AttentionToken::Open(_) => square.push(res.len()),
            AttentionToken::Weight(w) if !round.is_empty() => {
                let start = round.pop().unwrap_or_default();
                multiply(&mut res, start, w);
            }
            AttentionToken::Close(')') if !round.is_empty() => {
                let start = round.pop().unwrap_or_default();
                multiply(&mut res, start, ROUND_MULTIPLIER);
            }
            AttentionToken::Close(']') if !square.is_empty() => {
                let start = square.pop().unwrap_or_default();
                multiply(&mut res, start, SQUARE_MULTIPLIER);
            }
            _ => {
                for (i, part) in split_break(matched).into_iter().enumerate() {
                    if i > 0 {
                        res.push(("BREAK".into(), -1.0));
                    }
                    res.push((part, 1.0));
                }
            }
        }
    }
    for start in round {
        multiply(&mut res, start, ROUND_MULTIPLIER);
    }
    for start in square {
        multiply(&mut res, start, SQUARE_MULTIPLIER);
    }
    if res.is_empty() {
        res.push((String::new(), 1.0));
    }
    let mut merged: Vec<Weighted> = Vec::with_capacity(res.len());
    for (text, weight) in res {
        match merged.last_mut() {
            Some(last) if last.1 == weight => last.0.push_str(&text),
            _ => merged.push((text, weight)),
        }
    }
    merged
}

enum AttentionToken<'a> {
    /// `\(` and friends (and a lone `\`), standing for the text after the backslash.
    Escaped(&'a str),
    Open(char),
    Close(char),
    /// `:1.3)`
    Weight(f64),
    Text,
}

/// The next token of A1111's `re_attention` and its byte length.
fn next_attention_token(s: &str) -> (AttentionToken<'_>, usize) {
    let mut chars = s.chars();
    let first = chars.next().unwrap_or_default();
    match first {
        '\\' => match chars.next() {
            Some(c @ ('(' | ')' | '[' | ']' | '\\')) => {
                (AttentionToken::Escaped(&s[1..1 + c.len_utf8()]), 2)
            }
            _ => (AttentionToken::Escaped(""), 1),
        },
        '(' | '[' => (AttentionToken::Open(first), 1),
        ')' | ']' => (AttentionToken::Close(first), 1),
        ':' => match weight_suffix(s) {
            Some((w, len)) => (AttentionToken::Weight(w), len),
            None => (AttentionToken::Text, 1),
        },
        _ => {
            let len = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            (AttentionToken::Text, len)
        }
    }
}

/// `:\s*([+-]?[.\d]+)\s*\)` at the start of `s`: the weight and the match length.
fn weight_suffix(s: &str) -> Option<(f64, usize)> {
    let after_colon = &s[1..];
    let body = after_colon.trim_start();
    let sign = usize::from(body.starts_with(['+', '-']));
    let digits = body[sign..]
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len() - sign);
    if digits == 0 {
        return None;
    }
    let number = &body[..sign + digits];
    let tail = body[sign + digits..].trim_start();
    let tail = tail.strip_prefix(')')?;
    let weight = number.parse::<f64>().ok()?;
    Some((weight, s.len() - tail.len()))
}

/// Python `re.split(r"\s*\bBREAK\b\s*", text)`.
fn split_break(text: &str) -> Vec<String> {
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut parts = Vec::new();
    let mut part_start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("BREAK") {
        let at = search + found;
        let end = at + "BREAK".len();
        let before_ok = text[..at].chars().next_back().is_none_or(|c| !is_word(c));
        let after_ok = text[end..].chars().next().is_none_or(|c| !is_word(c));
        if before_ok && after_ok {
            let left = text[part_start..at]
                .trim_end_matches(char::is_whitespace)
                .len()
                + part_start;
            let right = end
                + (text[end..].len() - text[end..].trim_start_matches(char::is_whitespace).len());
            parts.push(text[part_start..left].to_string());
            part_start = right;
            search = right;
        } else {
            search = end;
        }
    }
    parts.push(text[part_start..].to_string());
    parts
}

/// CLIP BPE tokenizer with A1111 chunking. OpenAI CLIP and OpenCLIP share the vocabulary.
pub struct ClipTokenizer {
    bpe: Tokenizer,
    bos: i64,
    eos: i64,
    comma: i64,
}

impl Default for ClipTokenizer {
    fn default() -> Self {
        Self::new()
    }
}

impl ClipTokenizer {
    /// OpenAI's vocabulary. Building it takes a moment: reuse it.
    pub fn new() -> Self {
        let bpe = Tokenizer::new();
        let id = |t: Token| i64::from(t.to_u16());
        let mut comma = Vec::new();
        bpe.encode(",", &mut comma);
        let comma = comma.first().map(|t| id(*t)).unwrap_or(-1);
        Self {
            bos: id(bpe.start_of_text()),
            eos: id(bpe.end_of_text()),
            comma,
            bpe,
        }
    }

    /// The end-of-text id.
    pub fn eos(&self) -> i64 {
        self.eos
    }

    /// BPE ids of `text`, no BOS/EOS.
    pub fn encode(&self, text: &str) -> Vec<i64> {
        let mut tokens = Vec::new();
        self.bpe.encode(text, &mut tokens);
        tokens.into_iter().map(|t| i64::from(t.to_u16())).collect()
    }

    /// A1111 `tokenize_line`: the prompt's chunks, each BOS + 75 tokens (padded) + EOS, at
    /// least one. `prompt` must already be free of `<lora:…>` tags.
    pub fn chunks(&self, prompt: &str) -> Vec<PromptChunk> {
        let mut builder = ChunkBuilder {
            chunks: Vec::new(),
            tokens: Vec::new(),
            weights: Vec::new(),
            last_comma: None,
        };
        for (text, weight) in parse_prompt_attention(prompt) {
            if text == "BREAK" && weight == -1.0 {
                builder.finish_chunk(self);
                continue;
            }
            for token in self.encode(&text) {
                builder.push(self, token, weight as f32);
            }
        }
        if !builder.tokens.is_empty() || builder.chunks.is_empty() {
            builder.finish_chunk(self);
        }
        builder.chunks
    }

    /// The chunk of an empty prompt: BOS, EOS, padding.
    pub fn empty_chunk(&self) -> PromptChunk {
        let mut chunks = self.chunks("");
        chunks.swap_remove(0)
    }
}

struct ChunkBuilder {
    chunks: Vec<PromptChunk>,
    tokens: Vec<i64>,
    weights: Vec<f32>,
    /// Position of the last comma in the open chunk.
    last_comma: Option<usize>,
}

impl ChunkBuilder {
    fn push(&mut self, tok: &ClipTokenizer, token: i64, weight: f32) {
        if token == tok.comma {
            self.last_comma = Some(self.tokens.len());
        } else if let Some(comma) = self
            .last_comma
            .filter(|c| self.tokens.len() == CHUNK_LENGTH && CHUNK_LENGTH - c <= COMMA_BACKTRACK)
        {
            // A full chunk with a recent comma: move the words after the comma to the next chunk.
            let moved_tokens = self.tokens.split_off(comma + 1);
            let moved_weights = self.weights.split_off(comma + 1);
            self.finish_chunk(tok);
            self.tokens = moved_tokens;
            self.weights = moved_weights;
        }
        if self.tokens.len() == CHUNK_LENGTH {
            self.finish_chunk(tok);
        }
        self.tokens.push(token);
        self.weights.push(weight);
    }

    fn finish_chunk(&mut self, tok: &ClipTokenizer) {
        let pad = CHUNK_LENGTH - self.tokens.len();
        let mut tokens = Vec::with_capacity(CHUNK_TOKENS);
        tokens.push(tok.bos);
        tokens.append(&mut self.tokens);
        tokens.extend(std::iter::repeat_n(tok.eos, pad + 1));
        let mut weights = Vec::with_capacity(CHUNK_TOKENS);
        weights.push(1.0);
        weights.append(&mut self.weights);
        weights.extend(std::iter::repeat_n(1.0, pad + 1));
        self.chunks.push(PromptChunk { tokens, weights });
        self.last_comma = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> Vec<(String, f64)> {
        parse_prompt_attention(text)
    }

    fn close(a: &[(String, f64)], b: &[(&str, f64)]) -> bool {
        a.len() == b.len()
            && a.iter()
                .zip(b)
                .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-12)
    }

    // Expected values are what A1111's `parse_prompt_attention` returns for these inputs.
    #[test]
    fn parse_matches_a1111_prompt_parser() {
        assert!(close(&parsed("normal text"), &[("normal text", 1.0)]));
        assert!(close(
            &parsed("an (important) word"),
            &[("an ", 1.0), ("important", 1.1), (" word", 1.0)]
        ));
        assert!(close(&parsed("(unbalanced"), &[("unbalanced", 1.1)]));
        assert!(close(&parsed("\\(literal\\]"), &[("(literal]", 1.0)]));
        assert!(close(
            &parsed("(unnecessary)(parens)"),
            &[("unnecessaryparens", 1.1)]
        ));
        assert!(close(
            &parsed("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))))."),
            &[
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.0),
            ]
        ));
        assert!(close(&parsed("a \\\\ b \\( c"), &[("a \\ b ( c", 1.0)]));
        assert!(close(&parsed("(a:1.2"), &[("a:1.2", 1.1)]));
        assert!(close(&parsed("x:1.2) y"), &[("x:1.2) y", 1.0)]));
        assert!(close(&parsed("((a), b:0.5)"), &[("a", 0.55), (", b", 0.5)]));
    }

    #[test]
    fn break_splits_only_whole_words() {
        assert!(close(
            &parsed("a BREAK b"),
            &[("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]
        ));
        assert!(close(&parsed("aBREAK b"), &[("aBREAK b", 1.0)]));
    }
}
