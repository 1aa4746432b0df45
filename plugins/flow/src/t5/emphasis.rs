//! Prompt emphasis on T5 as Forge applies it for SD3 and Flux (backend/text_processing/
//! t5_engine.py → emphasis.py `EmphasisOriginal`): each token's hidden state times its
//! weight, then the whole prompt rescaled to its original mean. A1111's own SD3 code computes
//! the weights and drops them; Forge's rule is the one users see.
use tch::Tensor;

/// `z` [B, L, d] and `weights` [B, L] → `z·w · mean(z)/mean(z·w)`, the means over each
/// prompt's whole [L, d] (padding rows included, as Forge's `z.mean()` for one prompt): the
/// CLIP rule of `hiresfix_model_parts::text::emphasis` with the prompt as its chunk (with its
/// guard: a negligible weighted mean keeps the plain weighting, where Forge would divide by
/// ~0). All-one weights return `z` unchanged.
pub fn apply_emphasis(z: &Tensor, weights: &Tensor) -> Tensor {
    if bool::try_from(weights.eq(1.0).all()).unwrap_or(false) {
        return z.shallow_clone();
    }
    hiresfix_model_parts::text::emphasis::apply_emphasis(z, weights)
}
