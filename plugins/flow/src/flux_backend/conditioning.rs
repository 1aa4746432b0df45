//! Flux's text conditioning, as diffusers' `FluxPipeline.encode_prompt` builds it, read with
//! A1111's prompt syntax: T5's last hidden state over the whole prompt (512 tokens for dev, 256
//! for schnell, with Forge's emphasis) is the token sequence; CLIP-L gives only its pooled
//! vector (`pooler_output`: the final-normed end-of-text token, unprojected) of the prompt's
//! first 77-token chunk, as Forge does. No CLIP sequence, no negative (cfg 1).
use anyhow::{bail, Result};
use hiresfix_model_parts::text::clip::{ClipTextTransformer, TextLayer};
use hiresfix_model_parts::text::tokenizer::{parse_prompt_attention, ClipTokenizer};
use tch::{Device, Tensor};

use crate::common::prompts::EncodedPrompts;
use crate::t5::{T5Encoder, T5Tokenizer};

/// CLIP-L, T5 and what reads prompts for them.
pub struct TextEncoders {
    pub clip_l: ClipTextTransformer,
    pub t5: T5Encoder,
    pub t5_tokenizer: T5Tokenizer,
    pub tokenizer: ClipTokenizer,
    /// T5 tokens per prompt.
    pub max_length: usize,
    /// The transformer's token width (`joint_attention_dim`) and pooled width.
    pub joint_dim: i64,
    pub pooled_dim: i64,
    pub device: Device,
    /// The prompts encoded so far (a hires pass asks again).
    pub encoded: EncodedPrompts,
}

/// One prompt's conditioning: `[1, max_length, joint_dim]` and `[1, pooled_dim]`.
pub struct PromptEmbeds {
    pub context: Tensor,
    pub pooled: Tensor,
}

impl TextEncoders {
    pub fn encode(&self, prompt: &str) -> Result<PromptEmbeds> {
        let (context, pooled) = self.encoded.get_or(prompt.to_string(), || {
            let e = self.encode_anew(prompt)?;
            Ok((e.context, e.pooled))
        })?;
        Ok(PromptEmbeds { context, pooled })
    }

    fn encode_anew(&self, prompt: &str) -> Result<PromptEmbeds> {
        let pooled = tch::no_grad(|| self.pooled(prompt))?;
        let tokens = self
            .t5_tokenizer
            .tokens(&parse_prompt_attention(prompt), self.max_length)?;
        // With `t5 = "cpu"` T5 runs there; its output joins CLIP-L's on the run's device.
        let context = tch::no_grad(|| self.t5.encode(&[tokens]))?.to_device(self.device);
        let width = context.size()[2];
        if width != self.joint_dim {
            bail!(
                "T5 is {width} wide; the transformer takes {}-wide tokens (text encoder and \
                 transformer do not match)",
                self.joint_dim
            );
        }
        Ok(PromptEmbeds { context, pooled })
    }

    /// CLIP-L's pooled vector of the prompt's first chunk `[1, hidden]`.
    fn pooled(&self, prompt: &str) -> Result<Tensor> {
        let chunk = self.tokenizer.chunks(prompt).swap_remove(0);
        let ids = Tensor::from_slice(&chunk.tokens)
            .unsqueeze(0)
            .to_device(self.device);
        let out = self.clip_l.forward(&ids, TextLayer::LastNormed, 1)?;
        let Some(pooled) = out.pooled else {
            bail!("CLIP-L gives no pooled vector");
        };
        let width = pooled.size()[1];
        if width != self.pooled_dim {
            bail!(
                "CLIP-L is {width} wide; the transformer takes a {}-wide pooled vector (text \
                 encoder and transformer do not match)",
                self.pooled_dim
            );
        }
        Ok(pooled)
    }
}
