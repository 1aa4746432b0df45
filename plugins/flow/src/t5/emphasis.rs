//! Prompt emphasis on T5 as Forge applies it for SD3 and Flux (backend/text_processing/
//! t5_engine.py → emphasis.py `EmphasisOriginal`): each token's hidden state times its
//! weight, then the whole prompt rescaled to its original mean. A1111's own SD3 code computes
//! the weights and drops them; Forge's rule is the one users see.
use tch::{Kind, Tensor};

/// Below this fraction of the mean magnitude the weighted mean counts as zero (a guard Forge
/// lacks: there, dividing by it gives inf/NaN). The SD backend's CLIP emphasis has the same.
const NEGLIGIBLE_MEAN: f64 = 1e-6;

/// `z` [B, L, d] and `weights` [B, L] → `z·w · mean(z)/mean(z·w)`, the means over each
/// prompt's whole [L, d] (padding rows included, as Forge's `z.mean()` for one prompt).
/// All-one weights return `z` unchanged.
pub fn apply_emphasis(z: &Tensor, weights: &Tensor) -> Tensor {
    if bool::try_from(weights.eq(1.0).all()).unwrap_or(false) {
        return z.shallow_clone();
    }
    let dims = [1i64, 2];
    let weighted = z * weights.unsqueeze(-1).to_kind(z.kind());
    let mean = |t: &Tensor| t.mean_dim(&dims[..], true, Kind::Float);
    let (original_mean, new_mean) = (mean(z), mean(&weighted));
    let scale = weighted.abs().mean_dim(&dims[..], true, Kind::Float) * NEGLIGIBLE_MEAN;
    let usable = new_mean.abs().gt_tensor(&scale);
    let ratio = (&original_mean / &new_mean).where_self(&usable, &original_mean.ones_like());
    weighted * ratio.to_kind(z.kind())
}
