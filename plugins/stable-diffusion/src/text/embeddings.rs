//! Textual-inversion embeddings as A1111 reads them (modules/textual_inversion/
//! textual_inversion.py `create_embedding_from_data`, `EmbeddingDatabase`): a file of one tensor
//! (`emb_params`, a diffusers concept, or a converted `string_to_param` `*`) for a one-encoder
//! family, `clip_l` + `clip_g` for SDXL; its name is the file's stem, and a prompt token
//! sequence equal to the name's tokens stands for its vectors (`find_embedding_at_position`).
use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Result};
use host_api::{EmbeddingSpec, EmbeddingState};
use tch::{Kind, Tensor};

use crate::checkpoint::safetensors::SafetensorsFile;
use crate::health;

use super::tokenizer::{ClipTokenizer, NameAt, Names, CHUNK_LENGTH};

/// What one text encoder takes: its key in SDXL-style files and its width.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSlot {
    pub key: &'static str,
    pub width: i64,
}

/// A loaded embedding: `[vectors, width]` float32 CPU rows per encoder, in the model's
/// encoder order.
pub struct Embedding {
    pub name: String,
    pub vectors: usize,
    pub rows: Vec<Tensor>,
}

/// An embedding's name as tokens, and whether it loaded (a skipped one is still recognised,
/// so that a prompt naming it gets a warning; its words stay text).
struct Entry {
    ids: Vec<i64>,
    loaded: Option<usize>,
    name: String,
}

/// The model's set: loaded embeddings and every name's tokens, looked up by first token.
#[derive(Default)]
pub struct EmbeddingDb {
    loaded: Vec<Embedding>,
    entries: Vec<Entry>,
    /// First token → entries, longest name first (A1111's `ids_lookup`).
    by_first: HashMap<i64, Vec<usize>>,
}

impl EmbeddingDb {
    /// Reads every file of `specs` for a model whose encoders are `slots`: one state each.
    pub fn load(
        specs: &[EmbeddingSpec],
        slots: &[EncoderSlot],
        tokenizer: &ClipTokenizer,
    ) -> (Self, Vec<EmbeddingState>) {
        let mut db = Self::default();
        let mut states = Vec::with_capacity(specs.len());
        for spec in specs {
            let name = spec.name.as_str();
            let ids = tokenizer.encode(name);
            if ids.is_empty() || db.entries.iter().any(|e| e.name == name) {
                continue; // an earlier folder's file of the same name wins
            }
            let (embedding, state) = read(Path::new(spec.path.as_str()), name, slots);
            let loaded = embedding.map(|e| {
                db.loaded.push(e);
                db.loaded.len() - 1
            });
            states.push(state);
            db.entries.push(Entry {
                ids: ids.clone(),
                loaded,
                name: name.to_owned(),
            });
            let index = db.entries.len() - 1;
            let list = db.by_first.entry(ids[0]).or_default();
            list.push(index);
            let entries = &db.entries;
            list.sort_by_key(|i| std::cmp::Reverse(entries[*i].ids.len()));
        }
        (db, states)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn embedding(&self, index: usize) -> &Embedding {
        &self.loaded[index]
    }

    pub fn name(&self, entry: usize) -> &str {
        &self.entries[entry].name
    }
}

impl Names for EmbeddingDb {
    /// The embedding whose name starts at `tokens[at]`, if any (the longest name first, as
    /// A1111's `find_embedding_at_position`).
    fn find_at(&self, tokens: &[i64], at: usize) -> Option<NameAt> {
        let candidates = self.by_first.get(tokens.get(at)?)?;
        candidates.iter().find_map(|&i| {
            let entry = &self.entries[i];
            let end = at + entry.ids.len();
            (tokens.get(at..end) == Some(&entry.ids[..])).then(|| NameAt {
                tokens: entry.ids.len(),
                entry: i,
                loaded: entry.loaded.map(|e| (e, self.loaded[e].vectors)),
            })
        })
    }
}

/// One file as an embedding for `slots`: loaded, or skipped with the reason (naming the file)
/// and what the file says of itself.
fn read(path: &Path, name: &str, slots: &[EncoderSlot]) -> (Option<Embedding>, EmbeddingState) {
    let mut state = EmbeddingState::skipped(name, "");
    let fitted = open(path).and_then(|file| {
        describe_file(&file, &mut state);
        fit(&file, path, slots)
    });
    match fitted {
        Ok(rows) => {
            state.loaded = true;
            let vectors = rows[0].size()[0] as usize;
            let embedding = Embedding {
                name: name.to_owned(),
                vectors,
                rows,
            };
            (Some(embedding), state)
        }
        Err(e) => {
            state.note = e.to_string().into();
            (None, state)
        }
    }
}

fn open(path: &Path) -> Result<SafetensorsFile> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if ext != "safetensors" {
        let shown = path.display();
        bail!("{shown}: a pickle (.{ext}) file is not read, nothing in it runs — convert it with `hiresfix convert {shown}`");
    }
    SafetensorsFile::open(path)
}

/// A1111's facts of a file: vectors (rows of its first tensor), shape (the widths of its
/// tensors summed), and `step`, `sd_checkpoint`, `sd_checkpoint_name` when its metadata has them.
fn describe_file(file: &SafetensorsFile, state: &mut EmbeddingState) {
    let shapes: Vec<&Vec<i64>> = file.entries().values().map(|e| &e.shape).collect();
    let vectors = shapes
        .first()
        .map_or(0, |s| if s.len() == 1 { 1 } else { s[0] });
    state.vectors = u32::try_from(vectors).unwrap_or(0);
    let width: i64 = shapes.iter().filter_map(|s| s.last()).sum();
    state.shape = u32::try_from(width).unwrap_or(0);
    let meta = file.metadata();
    let text = |key: &str| meta.get(key).cloned().unwrap_or_default();
    state.step = meta.get("step").and_then(|s| s.parse().ok()).unwrap_or(-1);
    state.sd_checkpoint = text("sd_checkpoint").into();
    state.sd_checkpoint_name = text("sd_checkpoint_name").into();
}

/// The file's vectors for each of `slots`, or why they do not fit this model.
fn fit(file: &SafetensorsFile, path: &Path, slots: &[EncoderSlot]) -> Result<Vec<Tensor>> {
    let shown = path.display();
    let keys: Vec<&String> = file.entries().keys().collect();
    let tensor = |key: &str| -> Result<Tensor> {
        let t = file.read(key)?.to_kind(Kind::Float);
        if !health::is_finite(&t) {
            bail!(
                "{shown}: tensor `{key}` holds NaN or inf — the file is damaged; download it again"
            );
        }
        Ok(match t.dim() {
            1 => t.unsqueeze(0),
            2 => t,
            _ => bail!(
                "{shown}: tensor `{key}` is {:?}, not [vectors, width]",
                t.size()
            ),
        })
    };
    let encoders = describe(slots);
    let rows: Vec<Tensor> = match keys.as_slice() {
        [one] => {
            let t = tensor(one)?;
            let width = t.size()[1];
            match slots {
                [slot] if slot.width == width => vec![t],
                _ => bail!("{shown}: a {width}-wide embedding of one text encoder, but this model's text encoders are {encoders} — use the embedding made for this model's family"),
            }
        }
        _ if slots.len() > 1 && keys.len() == slots.len() => slots
            .iter()
            .map(|slot| {
                let t = match file.entries().contains_key(slot.key) {
                    true => tensor(slot.key)?,
                    false => bail!("{shown}: no `{}` tensor, which this model's text encoders ({encoders}) need", slot.key),
                };
                match t.size()[1] == slot.width {
                    true => Ok(t),
                    false => bail!("{shown}: `{}` is {} wide, but this model's text encoders are {encoders} — use the embedding made for this model's family", slot.key, t.size()[1]),
                }
            })
            .collect::<Result<_>>()?,
        _ => {
            let list: Vec<&str> = keys.iter().take(4).map(|k| k.as_str()).collect();
            bail!("{shown}: holds tensors {} — an embedding is one tensor, or one per text encoder ({encoders}); use the embedding made for this model's family", list.join(", "))
        }
    };
    let vectors = rows[0].size()[0];
    if rows.iter().any(|r| r.size()[0] != vectors) {
        bail!("{shown}: its text encoders' tensors hold different numbers of vectors");
    }
    if vectors == 0 || vectors as usize > CHUNK_LENGTH {
        bail!("{shown}: {vectors} vectors, but one must fit a {CHUNK_LENGTH}-token chunk");
    }
    Ok(rows)
}

/// e.g. "`clip_l` 768 + `clip_g` 1280 wide" or "768 wide".
fn describe(slots: &[EncoderSlot]) -> String {
    match slots {
        [one] => format!("{} wide", one.width),
        many => {
            let parts: Vec<String> = many
                .iter()
                .map(|s| format!("`{}` {}", s.key, s.width))
                .collect();
            format!("{} wide", parts.join(" + "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, tensors: &[(&str, Tensor)]) -> EmbeddingSpec {
        let path = dir.join(format!("{name}.safetensors"));
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (*k, t)).collect();
        Tensor::write_safetensors(&refs, &path).unwrap();
        EmbeddingSpec {
            name: name.into(),
            path: path.to_string_lossy().as_ref().into(),
        }
    }

    #[test]
    fn a_one_encoder_embedding_on_sdxl_is_skipped_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let opts = (Kind::Float, tch::Device::Cpu);
        let sd1 = write(
            dir.path(),
            "easyneg",
            &[("emb_params", Tensor::ones([2, 32], opts))],
        );
        let xl = write(
            dir.path(),
            "negxl",
            &[
                ("clip_l", Tensor::ones([3, 16], opts)),
                ("clip_g", Tensor::ones([3, 16], opts)),
            ],
        );
        let slots = [
            EncoderSlot {
                key: "clip_l",
                width: 16,
            },
            EncoderSlot {
                key: "clip_g",
                width: 16,
            },
        ];
        let tok = ClipTokenizer::new();
        let (db, states) = EmbeddingDb::load(&[sd1, xl], &slots, &tok);
        assert!(!states[0].loaded);
        assert_eq!((states[0].vectors, states[0].shape), (2, 32));
        assert!(states[0]
            .note
            .contains("a 32-wide embedding of one text encoder"));
        assert!(states[0].note.contains("`clip_l` 16 + `clip_g` 16 wide"));
        assert!(states[1].loaded);
        assert_eq!((states[1].vectors, states[1].shape), (3, 32));
        let tokens = tok.encode("a negxl easyneg");
        let found = db.find_at(&tokens, 1).unwrap();
        assert_eq!(found.loaded.map(|(_, vectors)| vectors), Some(3));
        let skipped = db.find_at(&tokens, 1 + found.tokens).unwrap();
        assert!(skipped.loaded.is_none());
        assert_eq!(db.name(skipped.entry), "easyneg");
    }
}
