//! A1111's "Original" emphasis (modules/sd_emphasis.py `EmphasisOriginal`): scale each token's
//! embedding by its weight, then restore the chunk's mean.
use tch::{Kind, Tensor};

/// Below this fraction of the chunk's mean magnitude a mean is taken for zero: restoring it
/// would divide noise by noise (or 0 by 0: NaN). Real CLIP outputs have clearly non-zero means.
const NEGLIGIBLE_MEAN: f64 = 1e-6;

/// `z` `[k, 77, hidden]` and `weights` `[k, 77]` → emphasised `z`, each chunk keeping its mean.
/// A chunk whose emphasised mean is negligible keeps the plain weighting (A1111 would divide
/// by it and produce NaN or garbage; random test models with zero norm biases get there).
pub fn apply_emphasis(z: &Tensor, weights: &Tensor) -> Tensor {
    let dims = [1i64, 2];
    let weighted = z * weights.unsqueeze(-1).to_kind(z.kind());
    let mean = |t: &Tensor| t.mean_dim(&dims[..], true, Kind::Float);
    let (original_mean, new_mean) = (mean(z), mean(&weighted));
    let scale = weighted.abs().mean_dim(&dims[..], true, Kind::Float) * NEGLIGIBLE_MEAN;
    let usable = new_mean.abs().gt_tensor(&scale);
    let ratio = (&original_mean / &new_mean).where_self(&usable, &original_mean.ones_like());
    weighted * ratio.to_kind(z.kind())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

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

    #[test]
    fn a_zero_mean_chunk_is_weighted_not_nan() {
        // Each token's features sum to zero: the chunk mean is exactly 0, as a LayerNorm with
        // zero bias and unit weight gives.
        let z = Tensor::from_slice(&[1.0f32, -1.0, 2.0, -2.0, 0.5, -0.5]).reshape([1, 3, 2]);
        let w = Tensor::from_slice(&[1.0f32, 1.2, 1.0]).reshape([1, 3]);
        let out = apply_emphasis(&z, &w);
        assert!(bool::try_from(out.isfinite().all()).unwrap());
        let expected = Tensor::from_slice(&[1.0f32, -1.0, 2.4, -2.4, 0.5, -0.5]).reshape([1, 3, 2]);
        assert!(f64::try_from((out - expected).abs().max()).unwrap() < 1e-6);
    }

    #[test]
    fn unit_weights_change_nothing() {
        let z = Tensor::randn([1, 77, 8], (Kind::Float, Device::Cpu));
        let out = apply_emphasis(&z, &Tensor::ones([1, 77], (Kind::Float, Device::Cpu)));
        assert!(out.equal(&z));
    }
}
