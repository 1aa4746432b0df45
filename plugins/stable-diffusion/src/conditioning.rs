//! Prompt chunks → text conditioning with A1111's "Original" emphasis
//! (modules/sd_emphasis.py `EmphasisOriginal`): scale each token's embedding by its weight,
//! then restore the chunk's mean.
use anyhow::Result;
use tch::{Device, Kind, Tensor};

use crate::clip::ClipTextTransformer;
use crate::tokenizer::{PromptChunk, CHUNK_TOKENS};

/// `z` `[k, 77, hidden]` and `weights` `[k, 77]` → emphasised `z`, each chunk keeping its mean.
pub fn apply_emphasis(z: &Tensor, weights: &Tensor) -> Tensor {
    let original_mean = z.mean_dim(&[1i64, 2][..], true, z.kind());
    let weighted = z * weights.unsqueeze(-1).to_kind(z.kind());
    let new_mean = weighted.mean_dim(&[1i64, 2][..], true, z.kind());
    weighted * (original_mean / new_mean)
}

/// Encodes `chunks` with `clip` and joins them along the token axis: `[1, 77·k, hidden]`.
pub fn encode_chunks(
    clip: &ClipTextTransformer,
    chunks: &[PromptChunk],
    clip_skip: usize,
    device: Device,
    kind: Kind,
) -> Result<Tensor> {
    let k = chunks.len() as i64;
    let tokens: Vec<i64> = chunks
        .iter()
        .flat_map(|c| c.tokens.iter().copied())
        .collect();
    let weights: Vec<f32> = chunks
        .iter()
        .flat_map(|c| c.weights.iter().copied())
        .collect();
    let tokens = Tensor::from_slice(&tokens)
        .reshape([k, CHUNK_TOKENS as i64])
        .to_device(device);
    let weights = Tensor::from_slice(&weights)
        .reshape([k, CHUNK_TOKENS as i64])
        .to_device(device)
        .to_kind(kind);
    let z = apply_emphasis(&clip.forward(&tokens, clip_skip)?, &weights);
    let hidden = z.size()[2];
    Ok(z.reshape([1, k * CHUNK_TOKENS as i64, hidden]))
}

/// Pads every prompt's chunk list with `empty` chunks to the longest, so that cond and
/// uncond batch together (A1111 `pad_cond_uncond`, which appends the empty prompt's chunk).
pub fn pad_chunk_lists(lists: &mut [Vec<PromptChunk>], empty: &PromptChunk) {
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    for list in lists.iter_mut() {
        list.resize(longest, empty.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emphasis_keeps_each_chunk_mean() {
        let z = Tensor::randn([2, 77, 8], (Kind::Float, Device::Cpu)) + 0.5;
        let mut w = vec![1.0f32; 2 * 77];
        w[3] = 1.5;
        w[80] = 0.5;
        let out = apply_emphasis(&z, &Tensor::from_slice(&w).reshape([2, 77]));
        let before = z.mean_dim(&[1i64, 2][..], false, Kind::Float);
        let after = out.mean_dim(&[1i64, 2][..], false, Kind::Float);
        assert!(f64::try_from((before - after).abs().max()).unwrap() < 1e-6);
        // An emphasised token grows relative to its neighbours.
        let ratio =
            f64::try_from(out.get(0).get(3).sum(Kind::Float) / z.get(0).get(3).sum(Kind::Float))
                .unwrap();
        assert!(ratio > 1.4 && ratio < 1.6, "{ratio}");
    }
}
