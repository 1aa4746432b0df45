//! Stochastic rounding to fp8 E4M3, for a LoRA merged into fp8 weights: round to nearest
//! would drop every change smaller than half a step (an E4M3 step is 1/8 to 1/16 of the value),
//! which is most of a LoRA's; rounding up or down with the probability of the distance keeps
//! the change on average. ComfyUI does the same (`comfy/float.py`
//! `manual_stochastic_round_to_float8`, seeded by the weight's key); the random numbers here
//! come from a counter hash of the element index and a seed, not from libtorch's global
//! generator, so merging never moves the images' noise.
use tch::{Kind, Tensor};

/// Elements per piece (the rounding's temporaries are a few of its size).
const PIECE: i64 = 1 << 22;

/// A seed from `key` (FNV-1a), so that a weight rounds the same in every run.
pub fn seed_of(key: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    (h >> 33) as i64
}

/// Uniform numbers in [0, 1), one per index `start..start + n`, from a 32-bit integer hash.
fn uniform(start: i64, n: i64, seed: i64, device: tch::Device) -> Tensor {
    let mask = 0xFFFF_FFFFi64;
    let i =
        (Tensor::arange_start(start, start + n, (Kind::Int64, device)) + seed).bitwise_and(mask);
    let mix = |x: &Tensor| {
        let x = x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(16));
        (x * 0x045d_9f3b_i64).bitwise_and(mask)
    };
    let x = mix(&mix(&(i * 0x9e37_79b1_i64).bitwise_and(mask)));
    let x = x.bitwise_xor_tensor(&x.bitwise_right_shift_tensor_scalar(16));
    x.to_kind(Kind::Float) / 4_294_967_296.0
}

/// `x` (any float dtype) in fp8 E4M3, each value rounded down or up to its two neighbours on
/// the fp8 grid with probabilities by distance (values on the grid stay exact), clamped to
/// ±448. The same `seed` gives the same result.
pub fn stochastic_e4m3(x: &Tensor, seed: i64) -> Tensor {
    let out = Tensor::empty(x.size(), (Kind::Float8e4m3fn, x.device()));
    let flat_in = x.reshape([-1]);
    let flat_out = out.reshape([-1]);
    let n = flat_in.size()[0];
    let mut start = 0;
    while start < n {
        let len = PIECE.min(n - start);
        let v = flat_in.narrow(0, start, len).to_kind(Kind::Float);
        // The step at |v|: 2^(e − 3) for e = ⌊log2 |v|⌋ in E4M3's normal range; below it the
        // subnormal step 2^-9 (log2(0) = −inf lands there too).
        let a = v.abs();
        let e = a.log2().floor().clamp(-6.0, 8.0);
        let step = (e - 3.0).exp2();
        let r = uniform(start, len, seed, x.device());
        // On the magnitude, the sign put back (as ComfyUI): −x rounds as x does.
        let q = ((&a / &step) + r).floor() * &step * v.sign();
        let mut dst = flat_out.narrow(0, start, len);
        dst.copy_(&q.clamp(-448.0, 448.0));
        start += len;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_values_stay_and_others_round_without_bias() {
        // On the grid: exact.
        let grid = Tensor::from_slice(&[0.0f32, 1.0, -1.125, 448.0, 0.001953125, 3.5]);
        let back = stochastic_e4m3(&grid, 7).to_kind(Kind::Float);
        assert!(back.equal(&grid), "{back}");
        // 1.01 lies between 1.0 and 1.125: nearest gives 1.0 always; stochastic gives 1.125
        // with probability 0.08, so the mean stays 1.01.
        let x = Tensor::full([200_000], 1.01, (Kind::Float, tch::Device::Cpu));
        let y = stochastic_e4m3(&x, 1).to_kind(Kind::Float);
        let mean = f64::try_from(y.mean(Kind::Double)).unwrap();
        assert!((mean - 1.01).abs() < 5e-4, "{mean}");
        let ups = f64::try_from(y.eq(1.125).to_kind(Kind::Double).mean(Kind::Double)).unwrap();
        assert!((ups - 0.08).abs() < 5e-3, "{ups}");
        // Negative values the same way; beyond the range clamped.
        let neg = stochastic_e4m3(&(-&x), 1).to_kind(Kind::Float);
        assert!(neg.equal(&(-&y)));
        let big = stochastic_e4m3(&Tensor::from_slice(&[1000.0f32, -1000.0]), 0);
        assert!(big
            .to_kind(Kind::Float)
            .equal(&Tensor::from_slice(&[448.0f32, -448.0])));
        // The same seed, the same rounding; another seed, another.
        assert!(stochastic_e4m3(&x, 1).to_kind(Kind::Float).equal(&y));
        assert!(!stochastic_e4m3(&x, 2).to_kind(Kind::Float).equal(&y));
    }
}
