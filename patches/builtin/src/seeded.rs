//! The random choices of HyperTile and ToMe, drawn from the image's seed so that a rerun is
//! byte-identical and an image batched with others makes its single run's choices.
//!
//! A draw is a hash, not a generator's stream: `draw(seed, sigma, transformer, n)` =
//! `mix(mix(mix(mix(seed) ^ bits(sigma)) ^ transformer) ^ n)` with `mix` splitmix64's
//! finaliser (`z += 0x9E3779B97F4A7C15; z = (z ^ z >> 30) · 0xBF58476D1CE4E5B9;
//! z = (z ^ z >> 27) · 0x94D049BB133111EB; z ^ z >> 31`, wrapping u64), `seed` the image's seed
//! as two's-complement u64, `bits(sigma)` the IEEE-754 bits of the call's sigma (f64), and
//! `transformer` the block's index among the UNet's transformer blocks (forward order). A
//! choice among `k` options is `draw % k`. So every transformer block and every step gets its
//! own choices, and nothing depends on how many calls ran before (ComfyUI's HyperTile reseeds
//! Python's `random` from a counter that keeps growing across images; tomesd draws from one
//! torch generator per block, seeded once per patch). `scripts/make_attention_patch_reference.py`
//! computes the same draws.
use host_api::tch::Tensor;
use host_api::{keys, Error, Options, PatchModel, Result};

fn mix(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Draw `n` of the call at `sigma` in transformer block `transformer` for the image `seed`.
pub fn draw(seed: i64, sigma: f64, transformer: u32, n: u64) -> u64 {
    mix(mix(mix(mix(seed as u64) ^ sigma.to_bits()) ^ u64::from(transformer)) ^ n)
}

/// The images' seeds from the host (host-api 1.4 `seeds`); none when the patch is made for a
/// check (then every row draws with seed 0).
pub fn seeds(model: &PatchModel) -> Result<Vec<i64>> {
    let text = Options(&model.extra).text(keys::SEEDS, "")?;
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| Error(format!("seeds from the host: `{s}` is not a whole number")))
        })
        .collect()
}

/// The rows of a UNet call `(B, …)` grouped by image: `(first row, rows, seed)`. The host's
/// rows are image-major (each image's CFG rows together), so with `B` a multiple of the
/// image count each image has `B / images` rows; otherwise (a backend that runs images one by
/// one) all rows draw with the first seed.
pub fn images(rows: i64, seeds: &[i64]) -> Vec<(i64, i64, i64)> {
    let n = seeds.len() as i64;
    if n > 1 && rows % n == 0 {
        let each = rows / n;
        seeds
            .iter()
            .enumerate()
            .map(|(i, &s)| (i as i64 * each, each, s))
            .collect()
    } else {
        vec![(0, rows, seeds.first().copied().unwrap_or(0))]
    }
}

/// `f` on each image's rows of `x` and `normed`, the results joined in row order.
pub fn per_image(
    x: &Tensor,
    normed: &Tensor,
    seeds: &[i64],
    f: impl Fn(&Tensor, &Tensor, i64) -> Result<Tensor>,
) -> Result<Tensor> {
    let groups = images(x.size()[0], seeds);
    if let [(_, _, seed)] = groups.as_slice() {
        return f(x, normed, *seed);
    }
    let parts = groups
        .iter()
        .map(|&(first, rows, seed)| {
            f(
                &x.narrow(0, first, rows),
                &normed.narrow(0, first, rows),
                seed,
            )
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::f_cat(&parts, 0)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_is_splitmix64() {
        // splitmix64's first output for state 0 (Vigna's reference implementation).
        assert_eq!(mix(0), 0xE220_A839_7B1D_CDAF);
    }

    #[test]
    fn rows_follow_their_image() {
        assert_eq!(images(4, &[7, 9]), vec![(0, 2, 7), (2, 2, 9)]);
        assert_eq!(images(1, &[7, 9]), vec![(0, 1, 7)]);
        assert_eq!(images(2, &[]), vec![(0, 2, 0)]);
    }
}
