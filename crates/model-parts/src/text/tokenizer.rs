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
    /// Embeddings whose vectors replace placeholder tokens (A1111 `PromptChunkFix`).
    pub fixes: Vec<Fix>,
}

/// Token sequences that stand for vectors in prompts (textual-inversion embeddings).
pub trait Names {
    /// The name starting at `tokens[at]`, if any.
    fn find_at(&self, tokens: &[i64], at: usize) -> Option<NameAt>;
}

/// A name found in a prompt.
pub struct NameAt {
    /// Prompt tokens the name covers.
    pub tokens: usize,
    /// Which name (for [`ClipTokenizer::chunks_with`]'s `seen`).
    pub entry: usize,
    /// A loaded embedding's index and vector count; `None`: a skipped one, read as text.
    pub loaded: Option<(usize, usize)>,
}

/// No names: every prompt is text.
struct NoNames;

impl Names for NoNames {
    fn find_at(&self, _: &[i64], _: usize) -> Option<NameAt> {
        None
    }
}

/// An embedding's vectors at `offset` prompt tokens after BOS (its placeholders are token 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fix {
    pub offset: usize,
    /// Index of the loaded embedding (the [`Names`]' own numbering).
    pub embedding: usize,
    pub vectors: usize,
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
        self.chunks_with(prompt, &NoNames, &mut |_| {})
    }

    /// [`Self::chunks`] with `names` standing for their vectors (a loaded embedding's
    /// placeholders never straddle a chunk: one that would not fit starts the next, as
    /// A1111's); `seen` hears of every name found, loaded or skipped (its entry index).
    pub fn chunks_with(
        &self,
        prompt: &str,
        names: &dyn Names,
        seen: &mut dyn FnMut(usize),
    ) -> Vec<PromptChunk> {
        let mut builder = ChunkBuilder {
            chunks: Vec::new(),
            tokens: Vec::new(),
            weights: Vec::new(),
            fixes: Vec::new(),
            last_comma: None,
        };
        for (text, weight) in parse_prompt_attention(prompt) {
            if text == "BREAK" && weight == -1.0 {
                builder.finish_chunk(self);
                continue;
            }
            let tokens = self.encode(&text);
            let mut at = 0;
            while at < tokens.len() {
                builder.make_room(self, tokens[at]);
                let found = names.find_at(&tokens, at);
                if let Some(found) = &found {
                    seen(found.entry);
                }
                match found.and_then(|f| Some((f.tokens, f.loaded?))) {
                    Some((covered, (embedding, vectors))) => {
                        builder.embed(self, embedding, vectors, weight as f32);
                        at += covered;
                    }
                    None => {
                        builder.push(tokens[at], weight as f32);
                        at += 1;
                    }
                }
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
    fixes: Vec<Fix>,
    /// Position of the last comma in the open chunk.
    last_comma: Option<usize>,
}

impl ChunkBuilder {
    /// What A1111 does before placing the prompt token `token`: remember a comma, or at a
    /// full chunk move the words after a recent comma to the next chunk; then close a full
    /// chunk.
    fn make_room(&mut self, tok: &ClipTokenizer, token: i64) {
        if token == tok.comma {
            self.last_comma = Some(self.tokens.len());
        } else if let Some(comma) = self
            .last_comma
            .filter(|c| self.tokens.len() == CHUNK_LENGTH && CHUNK_LENGTH - c <= COMMA_BACKTRACK)
        {
            // An embedding's placeholders move with their fix (A1111 leaves the fix behind,
            // which writes the vectors over the old chunk's padding).
            let cut = comma + 1;
            let moved_tokens = self.tokens.split_off(cut);
            let moved_weights = self.weights.split_off(cut);
            let (moved_fixes, kept): (Vec<Fix>, Vec<Fix>) =
                self.fixes.drain(..).partition(|f| f.offset >= cut);
            self.fixes = kept;
            self.finish_chunk(tok);
            self.tokens = moved_tokens;
            self.weights = moved_weights;
            self.fixes = moved_fixes
                .into_iter()
                .map(|f| Fix {
                    offset: f.offset - cut,
                    ..f
                })
                .collect();
        }
        if self.tokens.len() == CHUNK_LENGTH {
            self.finish_chunk(tok);
        }
    }

    fn push(&mut self, token: i64, weight: f32) {
        self.tokens.push(token);
        self.weights.push(weight);
    }

    /// A1111: an embedding that would cross the chunk's end starts the next chunk; its
    /// vectors take `vectors` placeholder tokens (0) with the fragment's weight.
    fn embed(&mut self, tok: &ClipTokenizer, embedding: usize, vectors: usize, weight: f32) {
        if self.tokens.len() + vectors > CHUNK_LENGTH {
            self.finish_chunk(tok);
        }
        self.fixes.push(Fix {
            offset: self.tokens.len(),
            embedding,
            vectors,
        });
        self.tokens.extend(std::iter::repeat_n(0, vectors));
        self.weights.extend(std::iter::repeat_n(weight, vectors));
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
        let fixes = std::mem::take(&mut self.fixes);
        self.chunks.push(PromptChunk {
            tokens,
            weights,
            fixes,
        });
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

    /// One name, `ids`, standing for `vectors` vectors.
    struct OneName(Vec<i64>, usize);

    impl Names for OneName {
        fn find_at(&self, tokens: &[i64], at: usize) -> Option<NameAt> {
            (tokens.get(at..at + self.0.len()) == Some(&self.0[..])).then_some(NameAt {
                tokens: self.0.len(),
                entry: 0,
                loaded: Some((0, self.1)),
            })
        }
    }

    #[test]
    fn an_embedding_after_a_recent_comma_moves_to_the_next_chunk_with_its_vectors() {
        let tok = ClipTokenizer::new();
        let names = OneName(tok.encode("emb"), 2);
        let words = |n| vec!["w"; n].join(" ");
        let chunks = tok.chunks_with(
            &format!("{} , emb {}", words(60), words(20)),
            &names,
            &mut |_| {},
        );
        assert!(chunks[0].fixes.is_empty());
        let moved = Fix {
            offset: 0,
            embedding: 0,
            vectors: 2,
        };
        assert_eq!(chunks[1].fixes, [moved]);
        assert_eq!(chunks[1].tokens[1..3], [0, 0]);
        // One that would cross a chunk's end starts the next chunk (no comma near).
        let chunks = tok.chunks_with(&format!("{} emb", words(74)), &names, &mut |_| {});
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[1].fixes, [moved]);
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
