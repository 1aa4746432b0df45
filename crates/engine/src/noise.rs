//! Seeded noise, A1111 "CPU" RNG source (README "Semantics"). tch exposes no generator objects, so the
//! process-wide CPU generator is reseeded at the start of each draw sequence: a pass's step
//! noise is an uninterrupted stream from its seed. Images batched into one UNet call each keep
//! their own stream ([`StepNoise::batch`]): the draws of every image are made ahead, one image
//! at a time, from its own reseed.
//!
//! A1111's variation seeds (`rng.ImageRNG.first`, `processing.create_random_tensors`) shape
//! each pass's initial noise ([`image_noise`]): the seed's noise slerped towards the subseed's
//! by `subseed_strength`, drawn at the `seed_resize_from` size and pasted centred into the
//! latent's.
use host_api::tch::{self, Device, Kind, Tensor};

/// A1111's latent-to-pixel factor for `seed_resize_from` (`opt_f`, 8 for every model).
const OPT_F: u32 = 8;

/// The seeds of one image: its seed and its variation seed (A1111's `seeds[i]`, `subseeds[i]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageSeeds {
    pub seed: i64,
    pub subseed: i64,
}

impl ImageSeeds {
    /// An image without a variation seed of its own (the subseed is unused at strength 0).
    pub fn plain(seed: i64) -> Self {
        Self { seed, subseed: 0 }
    }
}

/// A job's variation-seed settings (profile `subseed_strength`, `seed_resize_from_w/h`).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Variation {
    /// 0 = the seed's noise alone, 1 = the subseed's.
    pub strength: f64,
    /// `seed_resize_from_w`, `seed_resize_from_h` in pixels; either 0 = off.
    pub resize_from: (u32, u32),
}

/// How a job's images draw their noise: the eta noise seed delta and the variation seeds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct NoiseSettings {
    pub delta: i64,
    pub variation: Variation,
}

/// `manual_seed(seed); randn(shape)` on the CPU, as float32 (the image's initial noise).
pub fn initial_noise(seed: i64, shape: &[i64]) -> Tensor {
    tch::manual_seed(seed);
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// A1111's `rng.slerp(val, low, high)` over one image's `[C, h, w]` noise, as it is written:
/// the norms and angles are taken along dim 1 (each column of each channel), and nearly
/// parallel noises (mean cosine > 0.9995) are mixed linearly as `low * val + high * (1 - val)`.
pub fn slerp(val: f64, low: &Tensor, high: &Tensor) -> Tensor {
    let low_norm = low / low.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let high_norm = high / high.norm_scalaropt_dim(2, [1i64].as_slice(), true);
    let dot = (low_norm * high_norm).sum_dim_intlist([1i64].as_slice(), false, Kind::Float);
    if f64::try_from(dot.mean(Kind::Float)).unwrap_or(0.0) > 0.9995 {
        return low * val + high * (1.0 - val);
    }
    let omega = dot.acos();
    let so = omega.sin();
    let a = ((&omega * (1.0 - val)).sin() / &so).unsqueeze(1);
    let b = ((&omega * val).sin() / &so).unsqueeze(1);
    a * low + b * high
}

/// One image's initial noise at `shape` (`[C, h, w]`), A1111's `ImageRNG.first` for it.
pub fn image_noise(seeds: ImageSeeds, variation: &Variation, shape: &[i64]) -> Tensor {
    let (from_w, from_h) = variation.resize_from;
    let noise_shape: Vec<i64> = match from_w > 0 && from_h > 0 {
        true => vec![
            shape[0],
            i64::from(from_h / OPT_F),
            i64::from(from_w / OPT_F),
        ],
        false => shape.to_vec(),
    };
    let subnoise = (variation.strength != 0.0).then(|| initial_noise(seeds.subseed, &noise_shape));
    let mut noise = initial_noise(seeds.seed, &noise_shape);
    if let Some(subnoise) = subnoise {
        noise = slerp(variation.strength, &noise, &subnoise);
    }
    if noise_shape.as_slice() == shape {
        return noise;
    }
    // The seed's noise at the target shape, with the (varied) noise pasted centred into it.
    let x = initial_noise(seeds.seed, shape);
    // Python's floor division (a larger "from" size gives a negative offset).
    let dx = (shape[2] - noise_shape[2]).div_euclid(2);
    let dy = (shape[1] - noise_shape[1]).div_euclid(2);
    let w = if dx >= 0 {
        noise_shape[2]
    } else {
        noise_shape[2] + 2 * dx
    };
    let h = if dy >= 0 {
        noise_shape[1]
    } else {
        noise_shape[1] + 2 * dy
    };
    let (tx, ty) = (dx.max(0), dy.max(0));
    let (sx, sy) = ((-dx).max(0), (-dy).max(0));
    if w > 0 && h > 0 {
        x.narrow(1, ty, h)
            .narrow(2, tx, w)
            .copy_(&noise.narrow(1, sy, h).narrow(2, sx, w));
    }
    x
}

/// The initial noise of several images, `[N, C, h, w]`: image i's is [`image_noise`] of
/// `images[i]`.
pub fn batch_noise(images: &[ImageSeeds], variation: &Variation, shape: &[i64]) -> Tensor {
    let each: Vec<Tensor> = images
        .iter()
        .map(|&seeds| image_noise(seeds, variation, shape).unsqueeze(0))
        .collect();
    Tensor::cat(&each, 0)
}

/// The step-noise stream of one pass, A1111's `ImageRNG.next` after `first`: a fresh
/// generator per image seeded with its seed, whose first draw was the pass's initial noise,
/// so the steps take its second draw on; with an eta noise seed delta, a generator seeded
/// with seed + delta from its first draw.
pub enum StepNoise {
    /// One image: draws straight from the reseeded process generator.
    One,
    /// Several images in one latent: image i's k-th draw is the k-th draw after
    /// `manual_seed(seeds[i])` (and the skipped ones), made ahead (regenerated, longer, when a
    /// sampler asks for more).
    Batch {
        seeds: Vec<i64>,
        /// Draws each stream skips first (the initial noise's).
        skip: usize,
        /// Per image, its draws so far made.
        streams: Vec<Vec<Tensor>>,
        /// Draws already handed out.
        used: usize,
        /// Draws to make ahead at first.
        ahead: usize,
    },
}

impl StepNoise {
    /// The streams of the images with `images` (one per image of the latent, in order) for a
    /// pass whose per-image latent is `shape` (`[C, h, w]`); `hint` is how many draws to make
    /// ahead (a pass's step count).
    pub fn new(images: &[ImageSeeds], delta: i64, shape: &[i64], hint: usize) -> Self {
        // Without a delta A1111 keeps the generator that drew the initial noise.
        let skip = usize::from(delta == 0);
        let seeds: Vec<i64> = images.iter().map(|i| i.seed + delta).collect();
        if seeds.len() == 1 {
            tch::manual_seed(seeds[0]);
            for _ in 0..skip {
                drop(Tensor::randn(shape, (Kind::Float, Device::Cpu)));
            }
            return StepNoise::One;
        }
        StepNoise::Batch {
            streams: seeds.iter().map(|_| Vec::new()).collect(),
            seeds,
            skip,
            used: 0,
            ahead: hint,
        }
    }

    pub fn next_like(&mut self, like: &Tensor) -> Tensor {
        let draw = match self {
            StepNoise::One => Tensor::randn(like.size(), (Kind::Float, Device::Cpu)),
            StepNoise::Batch {
                seeds,
                skip,
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
                        for _ in 0..*skip {
                            drop(Tensor::randn(&shape, (Kind::Float, Device::Cpu)));
                        }
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
