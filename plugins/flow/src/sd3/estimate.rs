//! `hiresfix check`'s memory table for SD3, from the checkpoint's headers alone. The peak of
//! a pass is
//!
//! ```text
//! runtime + weights + max(transformer call, VAE decode)
//! ```
//!
//! - weights: every parameter of the MMDiT, CLIP-L, CLIP-G, T5 and the VAE at the run's
//!   dtype; a part the checkpoint lacks (a split transformer file's text encoders and VAE,
//!   given by the profile) counts at the published SD 3.5 size ([`PUBLISHED`]); with
//!   `t5 = "cpu"` (the request's `t5` option) on another device T5 is not counted: its
//!   weights are in system memory, not on the device the table is about;
//! - transformer call: [`TOKEN_BUFFERS`] live `tokens × width` buffers per latent of the
//!   batch, tokens = `(h/16)·(w/16)` image + 77 + 256 text (attention runs through SDPA's
//!   flash / memory-efficient kernels: no `tokens²` scores);
//! - VAE decode: full and tiled, `crate::common::estimate` (model-parts' `peak_bytes` and
//!   `tiled_decode_bytes`, as for the SD backend);
//! - runtime: the process before any model (as the SD backend's estimate).
use anyhow::Result;
use hiresfix_model_parts::vae::memory::request_kind;
use hiresfix_model_parts::vae::LatentScale;
use host_api::{MemoryEstimate, MemoryRequest};

use super::inspect::Sd3Headers;
use crate::common::estimate::{assemble, device_parameters, vae16, Call};

/// Live `tokens × width` buffers of one MMDiT block at its peak: the residual stream, its
/// modulated LayerNorm, q, k, v and the attention output (6), beside the MLP's 4×-wide
/// hidden layer and its GELU (8) once the attention buffers are gone — 12 leaves the
/// allocator its slack.
pub const TOKEN_BUFFERS: u64 = 12;
/// Text tokens of a call: 77 CLIP + 256 T5.
pub const TEXT_TOKENS: u64 = 77 + 256;
/// Published parameters of SD 3.5's parts a split file lacks: CLIP-L, CLIP-G, T5-XXL's
/// encoder, the 16-channel VAE (counted from the released files' headers, rounded).
pub const PUBLISHED: [u64; 4] = [123_000_000, 695_000_000, 4_762_000_000, 83_700_000];
/// T5's place in [`PUBLISHED`] and `Sd3Headers::other_parameters`.
const T5: usize = 2;

pub fn estimate(request: &MemoryRequest) -> Result<MemoryEstimate> {
    let headers = Sd3Headers::read(std::path::Path::new(request.checkpoint.as_str()))?;
    let (element, device) = request_kind(request)?;
    let found = (headers.other_parameters(), PUBLISHED);
    let weights = device_parameters(headers.transformer_parameters(), found, T5, request, device)?;
    let vae = headers
        .vae
        .clone()
        .unwrap_or_else(|| vae16(LatentScale::SD3));
    let call = Call {
        width: headers.transformer.hidden_size().max(0) as u64,
        patch: headers.transformer.patch_size,
        text_tokens: TEXT_TOKENS,
        token_buffers: TOKEN_BUFFERS,
    };
    assemble(request, (element, device), weights, &vae, call)
}
