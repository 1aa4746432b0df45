//! SD3's text conditioning, as diffusers' `StableDiffusion3Pipeline.encode_prompt` builds it,
//! read with A1111's prompt syntax: CLIP-L's and CLIP-G's penultimate hidden states (A1111
//! "Clip skip" counts back from there) side by side, zero-padded to the transformer's token
//! width, then T5's 256 tokens on the sequence axis; pooled = CLIP-L's end-of-text vector |
//! CLIP-G's projected one. CLIP prompts go in 75-token chunks (each chunk's 77 tokens follow
//! the previous, the pooled vector is the first chunk's, as A1111 does for SDXL) with A1111
//! emphasis; T5 reads the whole prompt (no chunking) with Forge's emphasis. Without T5 its
//! tokens are zeros, as diffusers' when `text_encoder_3` is None.
use anyhow::{bail, Result};
use hiresfix_model_parts::text::clip::{ClipConfig, ClipTextTransformer, TextLayer};
use hiresfix_model_parts::text::emphasis::apply_emphasis;
use hiresfix_model_parts::text::tokenizer::{parse_prompt_attention, ClipTokenizer};
use tch::{Device, Kind, Tensor};

use crate::common::prompts::EncodedPrompts;
use crate::t5::{T5Encoder, T5Tokenizer, SD3_MAX_LENGTH};

/// OpenCLIP pads with token 0 after the end-of-text (A1111 `id_pad`, diffusers'
/// tokenizer_2 `!`).
const OPEN_CLIP_PAD: i64 = 0;

/// The three text encoders and what reads prompts for them.
pub struct TextEncoders {
    pub clip_l: ClipTextTransformer,
    pub clip_g: ClipTextTransformer,
    pub t5: Option<(T5Encoder, T5Tokenizer)>,
    pub tokenizer: ClipTokenizer,
    /// The transformer's token width (`joint_attention_dim`).
    pub joint_dim: i64,
    pub device: Device,
    /// The prompts encoded so far (a hires pass asks again).
    pub encoded: EncodedPrompts,
}

/// One prompt's conditioning: `[1, 77·chunks + 256, joint_dim]` and `[1, pooled]`.
pub struct PromptEmbeds {
    pub context: Tensor,
    pub pooled: Tensor,
}

impl TextEncoders {
    pub fn encode(&self, prompt: &str, clip_skip: usize) -> Result<PromptEmbeds> {
        let key = format!("{clip_skip}\u{0}{prompt}");
        let (context, pooled) = self.encoded.get_or(key, || {
            let (clip, pooled) = tch::no_grad(|| self.encode_clip(prompt, clip_skip))?;
            let t5 = tch::no_grad(|| self.encode_t5(prompt))?;
            Ok((Tensor::cat(&[&clip, &t5.to_kind(clip.kind())], 1), pooled))
        })?;
        Ok(PromptEmbeds { context, pooled })
    }

    /// `CLIP-L (n layers, w) + OpenCLIP bigG (…) + T5 (…)` or `… + T5 absent`.
    pub fn describe(&self) -> String {
        let clip = |name: &str, c: &ClipConfig| {
            format!("{name} ({} layers, {})", c.num_layers, c.hidden_size)
        };
        let t5 = match &self.t5 {
            Some((e, _)) => format!(
                "T5 ({} layers, {})",
                e.config().num_layers,
                e.config().d_model
            ),
            None => "T5 absent".to_string(),
        };
        format!(
            "{} + {} + {t5}",
            clip("CLIP-L", self.clip_l.config()),
            clip("OpenCLIP bigG", self.clip_g.config())
        )
    }

    /// `[1, 77·chunks, joint_dim]` and the pooled `[1, L + G]`.
    fn encode_clip(&self, prompt: &str, clip_skip: usize) -> Result<(Tensor, Tensor)> {
        let chunks = self.tokenizer.chunks(prompt);
        let eos = self.tokenizer.eos();
        let rows = chunks.len() as i64;
        let width = chunks[0].tokens.len() as i64;
        let ids = |pad: Option<i64>| {
            let flat: Vec<i64> = chunks
                .iter()
                .flat_map(|c| match pad {
                    None => c.tokens.clone(),
                    Some(p) => c.tokens_padded_with(p, eos),
                })
                .collect();
            Tensor::from_slice(&flat)
                .view([rows, width])
                .to_device(self.device)
        };
        let weights: Vec<f32> = chunks.iter().flat_map(|c| c.weights.clone()).collect();
        let weights = Tensor::from_slice(&weights)
            .view([rows, width])
            .to_device(self.device);
        let l = self
            .clip_l
            .forward(&ids(None), TextLayer::Penultimate, clip_skip)?;
        let g =
            self.clip_g
                .forward(&ids(Some(OPEN_CLIP_PAD)), TextLayer::Penultimate, clip_skip)?;
        let z = Tensor::cat(
            &[
                apply_emphasis(&l.hidden, &weights),
                apply_emphasis(&g.hidden, &weights),
            ],
            -1,
        );
        let clip_width = z.size()[2];
        if clip_width > self.joint_dim {
            bail!(
                "CLIP-L + CLIP-G are {clip_width} wide, more than the transformer's {} token width",
                self.joint_dim
            );
        }
        let z = z
            .constant_pad_nd([0, self.joint_dim - clip_width])
            .reshape([1, rows * width, self.joint_dim]);
        let (Some(pl), Some(pg)) = (l.pooled, g.pooled) else {
            bail!("the CLIP text encoders give no pooled vector (text_projection missing)");
        };
        let pooled = Tensor::cat(&[pl.narrow(0, 0, 1), pg.narrow(0, 0, 1)], -1);
        Ok((z, pooled))
    }

    /// `[1, 256, joint_dim]`: T5's last hidden state with emphasis, or zeros without T5.
    fn encode_t5(&self, prompt: &str) -> Result<Tensor> {
        let Some((encoder, tokenizer)) = &self.t5 else {
            let shape = [1, SD3_MAX_LENGTH as i64, self.joint_dim];
            return Ok(Tensor::zeros(shape, (Kind::Float, self.device)));
        };
        let tokens = tokenizer.tokens(&parse_prompt_attention(prompt), SD3_MAX_LENGTH)?;
        // With `t5 = "cpu"` T5 runs there; its output joins CLIP's on the run's device.
        let z = encoder.encode(&[tokens])?.to_device(self.device);
        let width = z.size()[2];
        if width != self.joint_dim {
            bail!(
                "T5 is {width} wide; the transformer takes {}-wide tokens (text encoder and \
                 transformer do not match)",
                self.joint_dim
            );
        }
        Ok(z)
    }
}
