//! Tiled inference for super-resolution models: tiles of `tile` input pixels overlapping by
//! `overlap`, batched through the model, blended with feathered weights so no seam shows.
//!
//! Tile origins along an axis of `n` pixels: 0, `tile − overlap`, ... while a tile would end
//! before `n`, and the last tile ends exactly at `n` (one tile of `n` when `n ≤ tile`). Along
//! an edge that borders another tile, over its `o = overlap · scale` output pixels, a tile's
//! weight is 0 for the outermost `m = o / 4` (they see the tile's zero padding, not the
//! image), then ramps as `(i − m + 0.5) / r` (`r = o − 2m`) to 1; so neighbours blend over
//! the middle half of their overlap. Weights of two edges and of rows × columns multiply. The
//! result is the weighted sum of the tiles divided by the sum of the weights; with `overlap /
//! 4` at least the model's receptive radius, tiles equal the whole-image run.
use host_api::tch::Tensor;
use host_api::{Error, Result};

use super::Network;

/// How a model runs over an image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tiling {
    /// Tile side in input pixels.
    pub tile: i64,
    /// Overlap of neighbouring tiles in input pixels.
    pub overlap: i64,
    /// Tiles per model call.
    pub batch: usize,
}

/// Tile origins along an axis of `n` pixels, and the tile length.
pub fn origins(n: i64, tile: i64, overlap: i64) -> (Vec<i64>, i64) {
    if n <= tile {
        return (vec![0], n);
    }
    let step = (tile - overlap).max(1);
    let mut out = Vec::new();
    let mut at = 0;
    while at + tile < n {
        out.push(at);
        at += step;
    }
    out.push(n - tile);
    out.dedup();
    (out, tile)
}

/// One axis's output weights for the tile at `origin` (see the module docs).
fn ramp(origin: i64, len: i64, n: i64, scale: i64, overlap: i64) -> Vec<f32> {
    let (len_out, o) = (len * scale, overlap * scale);
    let (m, r) = (o / 4, o - 2 * (o / 4));
    // Weight at `i` pixels from an edge that borders another tile.
    let edge = |i: i64| {
        match i < m {
            true => 0.0,
            false => ((i - m) as f32 + 0.5) / r as f32,
        }
        .min(1.0f32)
    };
    let (low, high) = (origin > 0, origin + len < n);
    (0..len_out)
        .map(|i| {
            let mut w = 1.0f32;
            if low && i < o {
                w *= edge(i);
            }
            if high && len_out - 1 - i < o {
                w *= edge(len_out - 1 - i);
            }
            w
        })
        .collect()
}

/// Runs `net` over `x` (`[1, C, H, W]`, pixels in [0, 1]) tile by tile.
pub fn run(net: &Network, x: &Tensor, tiling: Tiling) -> Result<Tensor> {
    let (b, c, h, w) = x.size4()?;
    if b != 1 {
        return Err(Error::new("tiled upscaling runs one image at a time"));
    }
    let s = net.scale();
    let (ys, th) = origins(h, tiling.tile, tiling.overlap);
    let (xs, tw) = origins(w, tiling.tile, tiling.overlap);
    let sum = Tensor::f_zeros([1, c, h * s, w * s], (x.kind(), x.device()))?;
    let weight = Tensor::f_zeros([1, 1, h * s, w * s], (x.kind(), x.device()))?;
    let tiles: Vec<(i64, i64)> = ys
        .iter()
        .flat_map(|y| xs.iter().map(move |x| (*y, *x)))
        .collect();
    for chunk in tiles.chunks(tiling.batch.max(1)) {
        let inputs: Vec<Tensor> = chunk
            .iter()
            .map(|(y, x0)| x.narrow(2, *y, th).narrow(3, *x0, tw))
            .collect();
        let out = net.forward(&Tensor::f_cat(&inputs, 0)?)?;
        let expected = [chunk.len() as i64, c, th * s, tw * s];
        if out.size() != expected {
            return Err(Error::new(format!(
                "the model returned {:?} for tiles of {th}x{tw} (expected {expected:?})",
                out.size()
            )));
        }
        for (i, (y, x0)) in chunk.iter().enumerate() {
            let wy = Tensor::from_slice(&ramp(*y, th, h, s, tiling.overlap)).to_device(x.device());
            let wx = Tensor::from_slice(&ramp(*x0, tw, w, s, tiling.overlap)).to_device(x.device());
            let tile_w = (wy.view([-1, 1]) * wx.view([1, -1]))
                .view([1, 1, th * s, tw * s])
                .to_kind(x.kind());
            let region = |t: &Tensor| t.narrow(2, y * s, th * s).narrow(3, x0 * s, tw * s);
            let _ = region(&sum).f_add_(&(out.narrow(0, i as i64, 1) * &tile_w))?;
            let _ = region(&weight).f_add_(&tile_w)?;
        }
    }
    Ok(sum / weight)
}

/// Bytes one tile of `tile` input pixels needs in the model, roughly: the widest features at
/// input size plus the upsampled ones, fp32.
fn tile_bytes(tile: i64, scale: i64) -> i64 {
    const FEATURES: i64 = 64;
    4 * tile * tile * (FEATURES * 6 + FEATURES * scale * scale * 2)
}

/// The largest tile (and batch) whose working memory fits in half of `free` bytes; A1111's
/// 192 px when `free` is unknown (0).
pub fn choose(height: i64, width: i64, scale: i64, free: u64) -> Tiling {
    const SIDES: [i64; 8] = [1024, 768, 512, 384, 256, 192, 128, 64];
    let overlap = 32;
    if free == 0 {
        return Tiling {
            tile: 192,
            overlap,
            batch: 1,
        };
    }
    let budget = (free / 2) as i64;
    let longest = height.max(width);
    let tile = SIDES
        .iter()
        .copied()
        .find(|t| tile_bytes((*t).min(longest), scale) <= budget)
        .unwrap_or(64);
    let per_tile = tile_bytes(tile.min(longest), scale).max(1);
    Tiling {
        tile,
        overlap,
        batch: (budget / per_tile).clamp(1, 8) as usize,
    }
}

/// Runs with `tiling`, halving the tile (down to 64 px) after an out-of-memory error.
pub fn run_with_retry(net: &Network, x: &Tensor, mut tiling: Tiling) -> Result<Tensor> {
    loop {
        match run(net, x, tiling) {
            Err(e) if e.0.to_lowercase().contains("out of memory") && tiling.tile > 64 => {
                tiling.tile /= 2;
                tiling.batch = 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_cover_the_axis_and_the_last_tile_ends_at_the_border() {
        assert_eq!(origins(24, 12, 4), (vec![0, 8, 12], 12));
        assert_eq!(origins(20, 12, 4), (vec![0, 8], 12));
        assert_eq!(origins(10, 12, 4), (vec![0], 10));
    }

    #[test]
    fn ramps_only_on_edges_that_meet_another_tile_after_a_dead_margin() {
        assert_eq!(ramp(0, 3, 3, 1, 4), vec![1.0, 1.0, 1.0]);
        // o = 4: m = 1 dead pixel, then (i - 1 + 0.5) / 2.
        assert_eq!(ramp(0, 6, 12, 1, 4), vec![1.0, 1.0, 1.0, 0.75, 0.25, 0.0]);
        assert_eq!(ramp(6, 6, 12, 1, 4), vec![0.0, 0.25, 0.75, 1.0, 1.0, 1.0]);
    }
}
