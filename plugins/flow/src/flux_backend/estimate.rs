//! `hiresfix check`'s memory table for Flux, from the checkpoint's headers alone. The peak of
//! a pass is
//!
//! ```text
//! runtime + weights + max(transformer call, VAE decode)
//! ```
//!
//! - weights: every parameter of the transformer, CLIP-L, T5-XXL's encoder and the VAE at the
//!   run's dtype; a part the checkpoint lacks (a transformer file's text encoders and `ae`,
//!   given by the profile) counts at the published size ([`PUBLISHED`]); with `t5 = "cpu"`
//!   (the request's `t5` option) on another device T5 is not counted: its weights are in
//!   system memory, not on the device the table is about (as SD3's estimate); with
//!   `weight_dtype = "fp8_e4m3fn"` the transformer's weights count one byte each;
//! - transformer call: [`TOKEN_BUFFERS`] live `tokens × width` buffers per latent of the batch,
//!   tokens = `(h/16)·(w/16)` packed image tokens + the T5 tokens (512 dev, 256 schnell);
//!   attention runs through SDPA's flash / memory-efficient kernels (no `tokens²` scores);
//! - VAE decode: full and tiled as the SD3 backend's (`crate::common::estimate`);
//! - runtime: the process before any model.
//!
//! Not yet measured against a real-size run (no GPU run of the 12 B model here).
use anyhow::Result;
use hiresfix_model_parts::vae::memory::request_kind;
use hiresfix_model_parts::vae::LatentScale;
use host_api::{MemoryEstimate, MemoryRequest};

use super::inspect::FluxHeaders;
use crate::common::estimate::{assemble, device_parameters, vae16, Call};
use crate::flux::Variant;
use crate::t5::{FLUX_DEV_MAX_LENGTH, FLUX_SCHNELL_MAX_LENGTH};

/// Live `tokens × width` buffers of one transformer call at its peak: the residual stream and
/// its modulated norm (2), a single-stream block's attention (q, k, v and their normed, roped
/// copies) or its 4×-wide MLP input and GELU (8), the attention output (1) and the
/// concatenation `linear2` reads (5) — 16, rounded up to 20 for the allocator's slack and the
/// model's own buffers. Measured on real-size blocks (BENCHMARKS.md, the block benchmark):
/// 0.66 GiB (double) and 0.80 GiB (single) beside the weights at 1024 px, against 1.05 GiB
/// for these 20 in fp32.
pub const TOKEN_BUFFERS: u64 = 20;
/// Published parameters of the parts a transformer file lacks: CLIP-L, T5-XXL's encoder, the
/// `ae` (counted from the released files' headers, rounded).
pub const PUBLISHED: [u64; 3] = [123_000_000, 4_762_000_000, 83_700_000];
/// T5's place in [`PUBLISHED`] and `FluxHeaders::other_parameters`.
const T5: usize = 1;

pub fn estimate(request: &MemoryRequest) -> Result<MemoryEstimate> {
    let headers = FluxHeaders::read(std::path::Path::new(request.checkpoint.as_str()))?;
    let (element, device) = request_kind(request)?;
    let found = (headers.other_parameters(), PUBLISHED);
    // `weight_dtype = "fp8_e4m3fn"`: the transformer's linear weights (all but a few
    // thousandths of its parameters) take one byte each, counted as that many elements.
    let transformer = match crate::common::load::fp8_weights(&request.options)? {
        true => headers.transformer_parameters().div_ceil(element.max(1)),
        false => headers.transformer_parameters(),
    };
    let weights = device_parameters(transformer, found, T5, request, device)?;
    let vae = headers
        .vae
        .clone()
        .unwrap_or_else(|| vae16(LatentScale::FLUX));
    let text_tokens = match headers.variant {
        Variant::Dev => FLUX_DEV_MAX_LENGTH,
        Variant::Schnell => FLUX_SCHNELL_MAX_LENGTH,
    } as u64;
    let call = Call {
        width: headers.transformer.hidden_size().max(0) as u64,
        patch: 2,
        text_tokens,
        token_buffers: TOKEN_BUFFERS,
    };
    assemble(request, (element, device), weights, &vae, call)
}
