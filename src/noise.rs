//! Seeded noise, A1111 "CPU" RNG source (SPEC §4). tch exposes no generator objects, so the
//! process-wide CPU generator is reseeded at the start of each draw sequence: images and passes
//! run one at a time, so each pass's step noise is an uninterrupted stream from its seed.
use host_api::tch::{self, Device, Kind, Tensor};

/// `manual_seed(seed); randn(shape)` on the CPU, as float32 (the image's initial noise).
pub fn initial_noise(seed: i64, shape: &[i64]) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// The step-noise stream of one pass: a fresh generator seeded with `seed` whose draws are
/// shaped like the latent (its first draw equals the pass's initial noise when `seed` is the
/// image seed, A1111's `ImageRNG`).
pub struct StepNoise;

impl StepNoise {
    pub fn start(seed: i64) -> Self {
        tch::manual_seed(seed);
        StepNoise
    }

    pub fn next_like(&mut self, like: &Tensor) -> Tensor {
        Tensor::randn(like.size(), (Kind::Float, Device::Cpu))
            .to_device(like.device())
            .to_kind(like.kind())
    }
}
