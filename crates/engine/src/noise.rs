//! Seeded noise, A1111 "CPU" RNG source (README "Semantics"). tch exposes no generator objects, so the
//! process-wide CPU generator is reseeded at the start of each draw sequence: a pass's step
//! noise is an uninterrupted stream from its seed. Images batched into one UNet call each keep
//! their own stream ([`StepNoise::batch`]): the draws of every image are made ahead, one image
//! at a time, from its own reseed.
use host_api::tch::{self, Device, Kind, Tensor};

/// `manual_seed(seed); randn(shape)` on the CPU, as float32 (the image's initial noise).
pub fn initial_noise(seed: i64, shape: &[i64]) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// The initial noise of several images, `[N, C, h, w]`: image i's is `initial_noise(seeds[i])`.
pub fn batch_noise(seeds: &[i64], shape: &[i64]) -> Tensor {
    let each: Vec<Tensor> = seeds
        .iter()
        .map(|&seed| initial_noise(seed, shape).unsqueeze(0))
        .collect();
    Tensor::cat(&each, 0)
}

/// The step-noise stream of one pass: a fresh generator seeded with `seed` whose draws are
/// shaped like the latent (its first draw equals the pass's initial noise when `seed` is the
/// image seed, A1111's `ImageRNG`).
pub enum StepNoise {
    /// One image: draws straight from the reseeded process generator.
    One,
    /// Several images in one latent: image i's k-th draw is the k-th draw after
    /// `manual_seed(seeds[i])`, made ahead (regenerated, longer, when a sampler asks for
    /// more).
    Batch {
        seeds: Vec<i64>,
        /// Per image, its draws so far made.
        streams: Vec<Vec<Tensor>>,
        /// Draws already handed out.
        used: usize,
        /// Draws to make ahead at first.
        ahead: usize,
    },
}

impl StepNoise {
    pub fn start(seed: i64) -> Self {
        tch::manual_seed(seed);
        StepNoise::One
    }

    /// Streams for images with `seeds` (one per image of the latent, in order); `hint` is how
    /// many draws to make ahead (a pass's step count).
    pub fn batch(seeds: Vec<i64>, hint: usize) -> Self {
        if seeds.len() == 1 {
            return Self::start(seeds[0]);
        }
        StepNoise::Batch {
            streams: seeds.iter().map(|_| Vec::new()).collect(),
            seeds,
            used: 0,
            ahead: hint,
        }
    }

    pub fn next_like(&mut self, like: &Tensor) -> Tensor {
        let draw = match self {
            StepNoise::One => Tensor::randn(like.size(), (Kind::Float, Device::Cpu)),
            StepNoise::Batch {
                seeds,
                streams,
                used,
                ahead,
            } => {
                let mut shape = like.size();
                shape[0] = 1;
                let stale = streams[0]
                    .first()
                    .is_some_and(|first| first.size() != shape);
                if stale || streams[0].len() <= *used {
                    // A sampler drawing more than the hint (or a third-party one drawing other
                    // shapes) regenerates twice what it used: a few times per pass at most.
                    let count = (*used * 2).max(*ahead).max(16);
                    for (seed, stream) in seeds.iter().zip(streams.iter_mut()) {
                        tch::manual_seed(*seed);
                        stream.clear();
                        stream.extend(
                            (0..count).map(|_| Tensor::randn(&shape, (Kind::Float, Device::Cpu))),
                        );
                    }
                }
                let k = *used;
                *used += 1;
                let each: Vec<&Tensor> = streams.iter().map(|s| &s[k]).collect();
                Tensor::cat(&each, 0)
            }
        };
        draw.to_device(like.device()).to_kind(like.kind())
    }
}
