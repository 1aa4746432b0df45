//! A family's text encoders stacked into the UNet's conditioning, as A1111 builds it (sgm's
//! `GeneralConditioner` for SDXL): the prompt in 75-token chunks, each chunk through every
//! encoder with A1111 emphasis, hidden states concatenated along the width, chunks along the
//! tokens; SDXL adds the vector `y` = pooled text ⊕ embedded size ids (the refiner: original
//! size, crop and aesthetic score).
use std::cell::RefCell;

use anyhow::{bail, Result};
use host_api::{EmbeddingSpec, EmbeddingState};
use tch::{Device, Kind, Tensor};

use super::clip::{ClipTextTransformer, TokenFix};
use super::embeddings::{EmbeddingDb, EncoderSlot};
use super::emphasis::apply_emphasis;
use super::tokenizer::{extract_loras, ClipTokenizer, PromptChunk, CHUNK_TOKENS};
use crate::families::sdxl_refiner::AESTHETIC_SCORES;
use crate::families::{EncoderSpec, Family, Pad, Vector};
use crate::unet::timestep_embedding;

/// Chunks of 75 tokens in one prompt: far beyond any prompt that still steers the image.
const MAX_CHUNKS: usize = 64;

/// One text encoder and the family's rules for it.
pub struct TextEncoder {
    pub spec: &'static EncoderSpec,
    pub model: ClipTextTransformer,
}

/// What the UNet is conditioned on for one prompt.
#[derive(Debug)]
pub struct Conditioning {
    /// `[1, 77·k, context_dim]`.
    pub context: Tensor,
    /// `[1, adm_in_channels]` (SDXL), else `None`.
    pub vector: Option<Tensor>,
}

impl Conditioning {
    /// As a tensor bundle for the host: `[context]` or `[context, vector]`.
    pub fn into_tensors(self) -> Vec<Tensor> {
        std::iter::once(self.context).chain(self.vector).collect()
    }

    pub fn from_tensors(tensors: &[Tensor]) -> Result<Self> {
        match tensors {
            [context] => Ok(Self {
                context: context.shallow_clone(),
                vector: None,
            }),
            [context, vector] => Ok(Self {
                context: context.shallow_clone(),
                vector: Some(vector.shallow_clone()),
            }),
            _ => bail!(
                "a conditioning has {} tensors; expected the context and, for SDXL, the vector",
                tensors.len()
            ),
        }
    }
}

/// A prompt and what it conditions besides its text.
#[derive(Debug, Clone, Copy)]
pub struct PromptInput<'a> {
    pub text: &'a str,
    pub negative: bool,
    /// A1111 "Clip skip" (families that honour it).
    pub clip_skip: usize,
    /// The pass's image size in pixels.
    pub width: i64,
    pub height: i64,
}

pub struct Conditioner {
    encoders: Vec<TextEncoder>,
    tokenizer: ClipTokenizer,
    family: &'static Family,
    /// Width of each embedded size id (SDXL: 256), inferred from `label_emb`'s input width.
    size_embed_dim: Option<i64>,
    /// The textual-inversion embeddings prompts are read with.
    embeddings: RefCell<EmbeddingDb>,
    device: Device,
    kind: Kind,
}

impl Conditioner {
    /// `adm_in_channels`: the UNet's vector width, for families with vector conditioning.
    pub fn new(
        encoders: Vec<TextEncoder>,
        family: &'static Family,
        adm_in_channels: Option<i64>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let pooled: i64 = encoders
            .iter()
            .filter_map(|e| e.model.config().projection_dim)
            .sum();
        let ids = family.vector.ids();
        let size_embed_dim = match (family.vector, adm_in_channels) {
            (Vector::None, None) => None,
            (Vector::None, Some(_)) => bail!("the UNet takes vector conditioning but {} has none", family.name),
            (_, Some(adm)) if adm > pooled && (adm - pooled) % ids == 0 && (adm - pooled) / ids % 2 == 0 => {
                Some((adm - pooled) / ids)
            }
            (_, adm) => bail!(
                "the UNet's vector conditioning is {adm:?} wide, which is not the {pooled}-wide pooled text plus {ids} even-width size embeddings"
            ),
        };
        Ok(Self {
            encoders,
            tokenizer: ClipTokenizer::new(),
            family,
            size_embed_dim,
            embeddings: RefCell::default(),
            device,
            kind,
        })
    }

    /// Makes `specs` the embeddings prompts are read with; one state per file.
    pub fn set_embeddings(&self, specs: &[EmbeddingSpec]) -> Vec<EmbeddingState> {
        let slots: Vec<EncoderSlot> = self
            .encoders
            .iter()
            .map(|e| EncoderSlot {
                key: e.spec.embedding_key,
                width: e.model.config().hidden_size,
            })
            .collect();
        let (db, states) = EmbeddingDb::load(specs, &slots, &self.tokenizer);
        *self.embeddings.borrow_mut() = db;
        states
    }

    /// The embeddings (loaded or skipped) `prompts` name, each once, in order of appearance.
    pub fn used_embeddings(&self, prompts: &[&str]) -> Result<Vec<String>> {
        let db = self.embeddings.borrow();
        let mut entries: Vec<usize> = Vec::new();
        for prompt in prompts {
            let (text, _) = extract_loras(prompt).map_err(anyhow::Error::msg)?;
            self.tokenizer.chunks_with(&text, &*db, &mut |e| {
                if !entries.contains(&e) {
                    entries.push(e)
                }
            });
        }
        Ok(entries.into_iter().map(|e| db.name(e).to_owned()).collect())
    }

    pub fn encoders(&self) -> &[TextEncoder] {
        &self.encoders
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.tokenizer
    }

    /// Width of the concatenated hidden states.
    pub fn context_dim(&self) -> i64 {
        self.encoders
            .iter()
            .map(|e| e.model.config().hidden_size)
            .sum()
    }

    /// The conditioning of one prompt; `<lora:…>` tags are removed (applied elsewhere).
    pub fn encode(&self, input: &PromptInput<'_>) -> Result<Conditioning> {
        let (text, _) = extract_loras(input.text).map_err(anyhow::Error::msg)?;
        let chunks = self
            .tokenizer
            .chunks_with(&text, &*self.embeddings.borrow(), &mut |_| {});
        if chunks.len() > MAX_CHUNKS {
            bail!(
                "the prompt is {} chunks of 75 tokens (at most {MAX_CHUNKS}) — shorten it",
                chunks.len()
            );
        }
        let clip_skip = match self.family.clip_skip {
            true => input.clip_skip,
            false => 1,
        };
        let mut hidden = Vec::with_capacity(self.encoders.len());
        let mut pooled = None;
        for (i, encoder) in self.encoders.iter().enumerate() {
            let fixes = self.fixes(&chunks, i);
            let (z, p) = self.encode_chunks(encoder, &chunks, &fixes, clip_skip)?;
            hidden.push(z);
            pooled = pooled.or(p);
        }
        let mut context = Tensor::cat(&hidden, -1);
        if self.family.zero_empty_negative && input.negative && text.is_empty() {
            // A1111 `force_zero_negative_prompt`: the text parts of an empty negative are zeros.
            context = context.zeros_like();
            pooled = pooled.map(|p| p.zeros_like());
        }
        let vector = match self.size_embed_dim {
            None => None,
            Some(dim) => {
                let pooled = pooled.ok_or_else(|| {
                    anyhow::anyhow!("{} needs a pooled text output", self.family.name)
                })?;
                Some(Tensor::cat(&[pooled, self.size_embedding(input, dim)], -1))
            }
        };
        Ok(Conditioning { context, vector })
    }

    /// The embedding vectors of encoder `encoder` the chunks' placeholders take.
    fn fixes(&self, chunks: &[PromptChunk], encoder: usize) -> Vec<TokenFix> {
        let db = self.embeddings.borrow();
        let mut fixes = Vec::new();
        for (row, chunk) in chunks.iter().enumerate() {
            for fix in &chunk.fixes {
                fixes.push(TokenFix {
                    row: row as i64,
                    position: fix.offset as i64 + 1, // after BOS
                    vectors: db.embedding(fix.embedding).rows[encoder].shallow_clone(),
                });
            }
        }
        fixes
    }

    /// `[1, 77·k, hidden]` emphasised, and the pooled output of the first chunk (A1111 takes
    /// `zs[0].pooled`, before emphasis).
    fn encode_chunks(
        &self,
        encoder: &TextEncoder,
        chunks: &[PromptChunk],
        fixes: &[TokenFix],
        clip_skip: usize,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let k = chunks.len() as i64;
        let eos = self.tokenizer.eos();
        let pad = match encoder.spec.pad {
            Pad::Eos => eos,
            Pad::Zero => 0,
        };
        let tokens: Vec<i64> = chunks
            .iter()
            .flat_map(|c| c.tokens_padded_with(pad, eos))
            .collect();
        let weights: Vec<f32> = chunks.iter().flat_map(|c| c.weights.clone()).collect();
        // A1111 takes any number; one past the model's float range only makes NaN later.
        let limit = if self.kind == Kind::Half {
            65504.0
        } else {
            f32::MAX
        };
        if let Some(w) = weights.iter().find(|w| !w.is_finite() || w.abs() > limit) {
            bail!(
                "a prompt weight `(text:{w})` is past what the model's {:?} numbers hold — use weights like (text:1.5)",
                self.kind
            );
        }
        let shape = [k, CHUNK_TOKENS as i64];
        let tokens = Tensor::from_slice(&tokens)
            .reshape(shape)
            .to_device(self.device);
        let weights = Tensor::from_slice(&weights)
            .reshape(shape)
            .to_device(self.device)
            .to_kind(self.kind);
        let out = encoder
            .model
            .forward_with(&tokens, fixes, encoder.spec.layer, clip_skip)?;
        let z = apply_emphasis(&out.hidden, &weights);
        let width = z.size()[2];
        let pooled = out.pooled.map(|p| p.narrow(0, 0, 1));
        Ok((z.reshape([1, k * CHUNK_TOKENS as i64, width]), pooled))
    }

    /// sgm `ConcatTimestepEmbedderND` over the family's ids, each `(height, width)`: A1111
    /// uses the pass's size for both sizes and crops at (0, 0); the refiner's ids are (original
    /// size, crop, aesthetic score) with A1111's default scores (6.0, 2.5 for a negative).
    fn size_embedding(&self, input: &PromptInput<'_>, dim: i64) -> Tensor {
        let (h, w) = (input.height as f32, input.width as f32);
        let ids = match self.family.vector {
            Vector::PooledTextSizesAndAesthetic => {
                let (positive, negative) = AESTHETIC_SCORES;
                let score = if input.negative { negative } else { positive };
                vec![h, w, 0.0, 0.0, score]
            }
            _ => vec![h, w, 0.0, 0.0, h, w],
        };
        let ids = Tensor::from_slice(&ids).to_device(self.device);
        timestep_embedding(&ids, dim)
            .reshape([1, -1])
            .to_kind(self.kind)
    }
}
