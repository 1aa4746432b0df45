//! T5's SentencePiece-Unigram tokenizer read from a `tokenizer.json` (or a `spiece.model`) by
//! the `tokenizers` crate, with prompts laid out as A1111's SD3 code does
//! (modules/models/sd3/sd3_cond.py `Sd3T5.tokenize_line`: each emphasis fragment tokenized on
//! its own, BREAK dropped, `</s>`, `<pad>` up to the length; no 75-token chunks) and truncated
//! as diffusers truncates (`max_sequence_length` ids, the last kept for `</s>`). A prompt
//! without emphasis gets exactly diffusers' `tokenizer(prompt, padding="max_length",
//! truncation=True)` ids.
use super::spiece;
use anyhow::{anyhow, bail, Context, Result};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The `[model]` key naming a T5 `tokenizer.json` or `spiece.model` (or a folder holding one).
pub const TOKENIZER_KEY: &str = "t5_tokenizer";
/// diffusers StableDiffusion3Pipeline `max_sequence_length` default.
pub const SD3_MAX_LENGTH: usize = 256;
/// FluxPipeline `max_sequence_length` for dev (schnell's model card uses 256).
pub const FLUX_DEV_MAX_LENGTH: usize = 512;
pub const FLUX_SCHNELL_MAX_LENGTH: usize = 256;

/// A prompt's T5 input: ids and one emphasis weight per id.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Tokens {
    pub ids: Vec<i64>,
    pub weights: Vec<f32>,
}

/// A T5 v1.1 tokenizer (`<pad>` 0, `</s>` 1 in Google's files).
pub struct T5Tokenizer {
    inner: tokenizers::Tokenizer,
    eos: i64,
    pad: i64,
}

impl T5Tokenizer {
    /// Reads a `tokenizer.json`, or a SentencePiece `spiece.model` (with `extra_ids` from a
    /// tokenizer_config.json beside it, else 100), as transformers 5 reads them
    /// ([`as_transformers_reads_it`], [`spiece::tokenizer_json`]); refuses a tokenizer
    /// without T5's `</s>` and `<pad>`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let shown = path.display();
        let mut spec = match path.extension().is_some_and(|e| e == "model") {
            true => {
                let bytes = std::fs::read(path)
                    .with_context(|| format!("{shown}: cannot read the T5 spiece.model"))?;
                spiece::tokenizer_json(&bytes, extra_ids(path))
                    .with_context(|| format!("{shown}: not a SentencePiece model"))?
            }
            false => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("{shown}: cannot read the T5 tokenizer.json"))?;
                serde_json::from_str(&text)
                    .with_context(|| format!("{shown}: not a tokenizer.json (not JSON)"))?
            }
        };
        if spec["model"]["type"] != "Unigram" {
            bail!("{shown}: not a T5 tokenizer (its model is not SentencePiece Unigram)");
        }
        as_transformers_reads_it(&mut spec);
        let inner = tokenizers::Tokenizer::from_str(&spec.to_string())
            .map_err(|e| anyhow!("{shown}: not a readable T5 tokenizer ({e})"))?;
        let id = |token: &str| {
            inner
                .token_to_id(token)
                .map(i64::from)
                .with_context(|| format!("{shown}: no `{token}` token: not a T5 tokenizer.json"))
        };
        Ok(Self {
            eos: id("</s>")?,
            pad: id("<pad>")?,
            inner,
        })
    }

    /// Ids of one fragment, no special tokens (`tokenizer(text, add_special_tokens=False)`).
    pub fn encode_fragment(&self, text: &str) -> Result<Vec<i64>> {
        let encoding = self
            .inner
            .encode(text, false)
            .map_err(|e| anyhow!("T5 tokenizer failed on {text:?}: {e}"))?;
        Ok(encoding.get_ids().iter().map(|&id| i64::from(id)).collect())
    }

    /// A prompt parsed into emphasis fragments (A1111 `parse_prompt_attention`; `("BREAK",
    /// -1)` marks a BREAK, which T5 ignores) → `max_length` ids: the fragments' ids cut to
    /// `max_length - 1`, `</s>`, then `<pad>`.
    pub fn tokens(&self, fragments: &[(String, f64)], max_length: usize) -> Result<T5Tokens> {
        if max_length == 0 {
            bail!("T5 max_sequence_length must be at least 1");
        }
        let (mut ids, mut weights) = (Vec::new(), Vec::new());
        for (text, weight) in fragments {
            if text == "BREAK" && *weight == -1.0 {
                continue;
            }
            let piece = self.encode_fragment(text)?;
            weights.extend(std::iter::repeat_n(*weight as f32, piece.len()));
            ids.extend(piece);
        }
        ids.truncate(max_length - 1);
        weights.truncate(max_length - 1);
        ids.push(self.eos);
        weights.push(1.0);
        let pad = max_length - ids.len();
        ids.extend(std::iter::repeat_n(self.pad, pad));
        weights.extend(std::iter::repeat_n(1.0, pad));
        Ok(T5Tokens { ids, weights })
    }

    /// A prompt without emphasis syntax, as diffusers tokenizes it.
    pub fn plain(&self, prompt: &str, max_length: usize) -> Result<T5Tokens> {
        self.tokens(&[(prompt.to_string(), 1.0)], max_length)
    }

    pub fn eos(&self) -> i64 {
        self.eos
    }

    pub fn pad(&self) -> i64 {
        self.pad
    }
}

/// `extra_ids` of the tokenizer_config.json beside `spiece_model`; T5's 100 without one.
fn extra_ids(spiece_model: &Path) -> usize {
    let config = spiece_model.with_file_name("tokenizer_config.json");
    std::fs::read_to_string(config)
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|json| json["extra_ids"].as_u64())
        .map_or(100, |n| n as usize)
}

/// transformers 5 rebuilds a T5 tokenizer from its file (models/t5/tokenization_t5.py): the
/// file's Unigram pieces, only its SentencePiece `Precompiled` normalizer, and its own
/// WhitespaceSplit + Metaspace pre-tokenizer. Google's file (old format: a `Replace(" {2,}")`
/// normalizer and a Metaspace that also splits) read as it is gives a lone `▁` for trailing
/// whitespace ("best quality, " → …, `,`, `▁`), as transformers 4 did; SentencePiece itself,
/// transformers 5 and this tokenizer drop it.
fn as_transformers_reads_it(spec: &mut serde_json::Value) {
    let normalizer = &spec["normalizer"];
    let precompiled = match normalizer["type"].as_str() {
        Some("Precompiled") => Some(normalizer.clone()),
        Some("Sequence") => normalizer["normalizers"]
            .as_array()
            .and_then(|all| all.iter().find(|n| n["type"] == "Precompiled").cloned()),
        _ => None,
    };
    spec["normalizer"] = precompiled.unwrap_or(serde_json::Value::Null);
    // Truncation and padding are ours (`tokens`), as the callers pass them to transformers.
    spec["truncation"] = serde_json::Value::Null;
    spec["padding"] = serde_json::Value::Null;
    spec["pre_tokenizer"] = serde_json::json!({
        "type": "Sequence",
        "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}
        ]
    });
}

/// Where the T5 tokenizer of `model` is: `configured` (`[model] t5_tokenizer`, a file or a
/// folder with tokenizer.json) first, else a diffusers folder's `tokenizer_3/` (SD3) or
/// `tokenizer_2/` (Flux), each `tokenizer.json` before `spiece.model`. A single file carries
/// no tokenizer: the error names the key to add.
pub fn locate_tokenizer(model: &Path, configured: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = configured {
        let found = match path.is_dir() {
            true => tokenizer_in(path),
            false => path.is_file().then(|| path.to_path_buf()),
        };
        return found.with_context(|| {
            format!(
                "{}: no T5 tokenizer there (`[model] {TOKENIZER_KEY}`): point it at a T5 v1.1 \
                 tokenizer.json or spiece.model, e.g. a diffusers SD3 folder's tokenizer_3/",
                path.display()
            )
        });
    }
    if model.is_dir() {
        if let Some(found) = ["tokenizer_3", "tokenizer_2"]
            .iter()
            .find_map(|sub| tokenizer_in(&model.join(sub)))
        {
            return Ok(found);
        }
    }
    bail!(
        "{}: no T5 tokenizer with this model (a single file carries none): add `[model] \
         {TOKENIZER_KEY} = \"/path/to/tokenizer.json\"` (a T5 v1.1 tokenizer.json or \
         spiece.model, e.g. a diffusers SD3 folder's tokenizer_3/; see README \"T5 text \
         encoder\")",
        model.display()
    )
}

/// A folder's `tokenizer.json`, else its `spiece.model`.
fn tokenizer_in(folder: &Path) -> Option<PathBuf> {
    ["tokenizer.json", "spiece.model"]
        .iter()
        .map(|name| folder.join(name))
        .find(|file| file.is_file())
}
