//! HyperTile (tfernd/HyperTile; ComfyUI `HyperTile`, comfy_extras/nodes_hypertile.py): the
//! self-attention of the shallow transformer blocks runs on tiles — the `h × w` token grid is
//! cut into `nh × nw` tiles folded into the batch, attended tile by tile and put back — so its
//! cost grows with the tile, not the image. The tile counts are random per block and step
//! (divisors of the grid near `tile_size / 8` latent pixels), which hides the seams.
//!
//! As ComfyUI: blocks whose width is `model_channels · 2^d`, `d ≤ max_depth`; latent tile
//! `max(32, tile_size) / 8`, times `2^(C / model_channels - 1)` with `scale_depth`; `nh` and
//! `nw` from `random_divisor(…, swap_size)` of the grid's height and width. Unlike ComfyUI:
//! the choice among the `swap_size` candidates is a draw from the image's seed (see
//! `seeded`); the grid is the block's real `height × width` (ComfyUI recovers it from the
//! token count and the latent's `width / height` with `find_hw_candidates`, which for a
//! non-square latent returns it transposed); and the whole attention input is tiled
//! (queries, keys and values, as tfernd's HyperTile and A1111's extension do; ComfyUI's node
//! rearranges only the queries).
use host_api::tch::Tensor;
use host_api::{AttentionCtx, AttentionFn, Error, Options, Patch, PatchModel, Result};

use crate::options::{py_bool, whole};
use crate::seeded::{draw, per_image, seeds};

pub struct HyperTile {
    tile_size: u32,
    swap_size: u32,
    max_depth: u32,
    scale_depth: bool,
    seeds: Vec<i64>,
}

/// ComfyUI `random_divisor`: `value / d` for one of the `max_options` smallest divisors `d` of
/// `value` that are at least `min(min_value, value)`; `pick` chooses among them.
pub fn random_divisor(value: i64, min_value: i64, max_options: usize, pick: u64) -> i64 {
    let min_value = min_value.min(value);
    let ns: Vec<i64> = (min_value.max(1)..=value)
        .filter(|i| value % i == 0)
        .take(max_options.max(1))
        .map(|i| value / i)
        .collect();
    ns[(pick % ns.len() as u64) as usize]
}

impl HyperTile {
    /// Whether blocks of `channels` width are tiled (ComfyUI's `apply_to`).
    fn applies(&self, channels: i64, model_channels: i64) -> bool {
        (0..=self.max_depth).any(|d| model_channels << d == channels)
    }

    /// `(nh, nw, h, w)` for one image, or None when it is one tile.
    fn tiles(&self, ctx: &AttentionCtx, n: i64, c: i64, seed: i64) -> Option<(i64, i64, i64, i64)> {
        let (h, w) = (i64::from(ctx.height), i64::from(ctx.width));
        if h * w != n {
            return None;
        }
        let mc = i64::from(ctx.model_channels);
        let factor = match self.scale_depth {
            true => 1i64 << (c / mc - 1).clamp(0, 30),
            false => 1,
        };
        let tile = i64::from(self.tile_size.max(32) / 8) * factor;
        let swap = self.swap_size as usize;
        let sigma = ctx.hook.sigma;
        let nh = random_divisor(h, tile, swap, draw(seed, sigma, ctx.transformer, 0));
        let nw = random_divisor(w, tile, swap, draw(seed, sigma, ctx.transformer, 1));
        (nh * nw > 1).then_some((nh, nw, h, w))
    }
}

impl Patch for HyperTile {
    const NAME: &'static str = "hypertile";
    const ALIASES: &'static [&'static str] = &["HyperTile"];
    const OPTIONS: &'static [&'static str] =
        &["tile_size", "swap_size", "max_depth", "scale_depth"];

    fn new(options: Options<'_>, model: &PatchModel) -> Result<Self> {
        let tile_size = whole(&options, "tile_size", 256)?;
        let swap_size = whole(&options, "swap_size", 2)?;
        let max_depth = whole(&options, "max_depth", 0)?;
        // ComfyUI's node's ranges.
        let range = |key: &str, v: u32, lo: u32, hi: u32| match (lo..=hi).contains(&v) {
            true => Ok(()),
            false => Err(Error(format!(
                "option `{key}` must be between {lo} and {hi}, got {v}"
            ))),
        };
        range("tile_size", tile_size, 1, 2048)?;
        range("swap_size", swap_size, 1, 128)?;
        range("max_depth", max_depth, 0, 10)?;
        Ok(Self {
            tile_size,
            swap_size,
            max_depth,
            scale_depth: options.flag("scale_depth", false)?,
            seeds: seeds(model)?,
        })
    }

    fn infotext(&self) -> Vec<(String, String)> {
        // A1111's built-in Hypertile extension's fields (its tile size is ComfyUI's
        // `tile_size`), and ours for `scale_depth`.
        [
            ("Hypertile U-Net", "True".to_owned()),
            ("Hypertile U-Net max depth", self.max_depth.to_string()),
            ("Hypertile U-Net max tile size", self.tile_size.to_string()),
            ("Hypertile U-Net swap size", self.swap_size.to_string()),
            ("Hypertile U-Net scale depth", py_bool(self.scale_depth)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn attention(
        &self,
        ctx: &AttentionCtx,
        x: &Tensor,
        normed: Tensor,
        attention: &AttentionFn<'_>,
    ) -> Result<Tensor> {
        let s = normed.size();
        let (n, c) = (s[1], s[2]);
        // Not this block's width, or tokens an earlier patch of the chain rearranged.
        if !self.applies(c, i64::from(ctx.model_channels)) || s[..2] != x.size()[..2] {
            return attention.run(&normed);
        }
        per_image(x, &normed, &self.seeds, |_, normed, seed| {
            let Some((nh, nw, h, w)) = self.tiles(ctx, n, c, seed) else {
                return attention.run(normed);
            };
            let b = normed.size()[0];
            let (th, tw) = (h / nh, w / nw);
            // "b (nh h nw w) c -> (b nh nw) (h w) c" and back.
            let tiled = normed
                .f_reshape([b, nh, th, nw, tw, c])?
                .f_permute([0, 1, 3, 2, 4, 5])?
                .f_reshape([b * nh * nw, th * tw, c])?;
            let out = attention.run(&tiled)?;
            Ok(out
                .f_reshape([b, nh, nw, th, tw, c])?
                .f_permute([0, 1, 3, 2, 4, 5])?
                .f_reshape([b, n, c])?)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn divisors_and_grids_are_comfyuis() {
        // 64 // d for the divisors d ≥ 32 of 64: [32, 64] -> [2, 1].
        assert_eq!(random_divisor(64, 32, 2, 0), 2);
        assert_eq!(random_divisor(64, 32, 2, 1), 1);
        // min_value above value: value itself, one tile.
        assert_eq!(random_divisor(16, 32, 2, 5), 1);
    }
}
