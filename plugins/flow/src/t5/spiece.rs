//! A SentencePiece `spiece.model` (what T5 folders ship beside, or instead of, tokenizer.json)
//! turned into the tokenizer.json transformers 5 builds from it (convert_slow_tokenizer's
//! `SpmConverter` and models/t5/tokenization_t5.py): every piece with its score, then the
//! `<extra_id_N>` sentinels (N descending, score 0, special), the model's `Precompiled`
//! normalizer. The file is a protobuf `ModelProto`; only the fields used are read.
use anyhow::{bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

/// `ModelProto` field numbers (sentencepiece_model.proto).
const PIECES: u64 = 1;
const NORMALIZER_SPEC: u64 = 3;
/// `SentencePiece` fields and the `UNKNOWN` piece type.
const PIECE_TEXT: u64 = 1;
const PIECE_SCORE: u64 = 2;
const PIECE_TYPE: u64 = 3;
const TYPE_UNKNOWN: u64 = 2;
/// `NormalizerSpec.precompiled_charsmap`.
const PRECOMPILED_CHARSMAP: u64 = 2;

/// The tokenizer.json (as a JSON value) of the SentencePiece model `bytes` with `extra_ids`
/// sentinels (tokenizer_config.json's `extra_ids`; T5 has 100).
pub fn tokenizer_json(bytes: &[u8], extra_ids: usize) -> Result<Value> {
    let mut vocab = Vec::new();
    let mut unk_id = None;
    let mut charsmap: &[u8] = &[];
    for field in Fields(bytes) {
        match field? {
            (PIECES, Wire::Bytes(piece)) => {
                let (text, score, kind) = read_piece(piece)?;
                if kind == TYPE_UNKNOWN {
                    unk_id.get_or_insert(vocab.len());
                }
                vocab.push(json!([text, score]));
            }
            (NORMALIZER_SPEC, Wire::Bytes(spec)) => {
                for field in Fields(spec) {
                    if let (PRECOMPILED_CHARSMAP, Wire::Bytes(map)) = field? {
                        charsmap = map;
                    }
                }
            }
            _ => {}
        }
    }
    if vocab.is_empty() {
        bail!("no SentencePiece pieces in it");
    }
    let mut added: Vec<Value> = Vec::new();
    for (id, piece) in vocab.iter().enumerate().take(3) {
        if let Some(text @ ("<pad>" | "</s>" | "<unk>")) = piece[0].as_str() {
            added.push(special(id, text));
        }
    }
    for n in (0..extra_ids).rev() {
        let text = format!("<extra_id_{n}>");
        added.push(special(vocab.len(), &text));
        vocab.push(json!([text, 0.0]));
    }
    let normalizer = match charsmap.is_empty() {
        true => Value::Null,
        false => json!({
            "type": "Precompiled",
            "precompiled_charsmap": base64::engine::general_purpose::STANDARD.encode(charsmap),
        }),
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": "</s>", "type_id": 0}}],
            "special_tokens": {"</s>": {"id": "</s>", "ids": [1], "tokens": ["</s>"]}},
        },
        "decoder": null,
        "model": {
            "type": "Unigram",
            "unk_id": unk_id.unwrap_or(2),
            "vocab": vocab,
            "byte_fallback": false,
        },
    }))
}

fn special(id: usize, text: &str) -> Value {
    json!({"id": id, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
           "normalized": false, "special": true})
}

/// A `SentencePiece` message: its text, score and type (NORMAL = 1 when absent).
fn read_piece(bytes: &[u8]) -> Result<(String, f64, u64)> {
    let (mut text, mut score, mut kind) = (None, 0.0, 1);
    for field in Fields(bytes) {
        match field? {
            (PIECE_TEXT, Wire::Bytes(b)) => {
                text = Some(String::from_utf8(b.to_vec()).context("a piece is not UTF-8")?)
            }
            (PIECE_SCORE, Wire::Fixed32(bits)) => score = f64::from(f32::from_bits(bits)),
            (PIECE_TYPE, Wire::Varint(v)) => kind = v,
            _ => {}
        }
    }
    Ok((text.context("a piece without text")?, score, kind))
}

/// A protobuf field's value by wire type.
enum Wire<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// The fields of one protobuf message, in order.
struct Fields<'a>(&'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Result<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = self.0.split_first().context("truncated protobuf varint")?;
            self.0 = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        bail!("protobuf varint longer than 64 bits")
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.0.len() {
            bail!("truncated protobuf field");
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn field(&mut self) -> Result<(u64, Wire<'a>)> {
        let key = self.varint()?;
        let wire = match key & 7 {
            0 => Wire::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Wire::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?)?;
                Wire::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Wire::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => bail!("unsupported protobuf wire type {other}"),
        };
        Ok((key >> 3, wire))
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u64, Wire<'a>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let item = self.field();
        if item.is_err() {
            self.0 = &[];
        }
        Some(item)
    }
}
