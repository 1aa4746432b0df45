//! Tiled VAE decode and encode: overlapping tiles run one at a time, blended by a feathered
//! weight mask (each tile's weight ramps linearly across the region it shares with a
//! neighbour), as diffusers' `tiled_decode` and ComfyUI's `tiled_scale` do; the result is the
//! sum of weighted tiles divided by the sum of weights.
//!
//! Up to [`WHOLE_MID_CELLS`] latent cells, only the part between image and latent resolution
//! is tiled (decode's up path, encode's down path) and the mid block, whose attention is
//! global, runs on the whole latent-resolution tensor: closer to a full pass than the
//! references, which run it per tile. Above that its attention, quadratic in the cells,
//! would cost more than the rest of the pass (at 8192 px, 1 M cells: about half an hour of
//! CPU for the tiny model's 64 channels), so the mid block runs in each tile as in the A1111
//! "Tiled VAE" extension, diffusers' `tiled_decode` and ComfyUI's tiled VAE nodes: its
//! attention sees the tile only. GroupNorm takes its statistics over the whole image, so
//! every tile normalises with statistics pooled over all tiles (see [`record_group_stats`])
//! rather than its own. What is left is the overlap blend, the tile-local attention above
//! the bound, and the estimate's error (measurements in the SD plugin's
//! `tests/integration/vae_tiling.rs`).
use std::str::FromStr;

use anyhow::{anyhow, bail, Result};
use tch::{Kind, Tensor};

use crate::vae::norm::{GroupNormStats, GroupStats, Owned, StatsPool};
use crate::vae::{AutoencoderKL, VaePass};

/// When to tile (profile key `vae_tiling`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VaeTilingMode {
    /// Tile when the full pass's memory estimate exceeds the device's free memory.
    #[default]
    Auto,
    On,
    Off,
}

impl FromStr for VaeTilingMode {
    type Err = anyhow::Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "auto" => Ok(Self::Auto),
            "on" => Ok(Self::On),
            "off" => Ok(Self::Off),
            other => bail!("vae_tiling = `{other}` is not a mode — use auto, on or off"),
        }
    }
}

/// Latent cells up to which tiled passes run the mid block on the whole latent: 256×256, a
/// 2048 px image at factor 8, whose global attention costs a fraction of the up path.
pub const WHOLE_MID_CELLS: i64 = 256 * 256;

/// Tiling mode and tile geometry in image pixels (rounded down to whole latent cells).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeTilingOptions {
    pub mode: VaeTilingMode,
    /// Tile side in pixels.
    pub tile_px: i64,
    /// Least overlap between neighbouring tiles in pixels (tiles are spread evenly, so most
    /// overlap more).
    pub overlap_px: i64,
    /// Latent cells up to which the mid block runs whole ([`WHOLE_MID_CELLS`]; tests lower it).
    pub whole_mid_cells: i64,
}

impl Default for VaeTilingOptions {
    /// Auto, 512 px tiles overlapping by 64 px (64×64 latent cells at factor 8).
    fn default() -> Self {
        Self {
            mode: VaeTilingMode::Auto,
            tile_px: 512,
            overlap_px: 64,
            whole_mid_cells: WHOLE_MID_CELLS,
        }
    }
}

impl VaeTilingOptions {
    /// From the profile's `vae_tiling`, `vae_tile_size` and `vae_tile_overlap`. A size of 0
    /// means 512; an overlap of 0 means 64, or a quarter of the tile when that is less.
    pub fn from_profile(mode: &str, tile_px: u32, overlap_px: u32) -> Result<Self> {
        let default = Self::default();
        let tile_px = match tile_px {
            0 => default.tile_px,
            px => px.into(),
        };
        let options = Self {
            mode: mode.parse()?,
            tile_px,
            overlap_px: match overlap_px {
                0 => default.overlap_px.min(tile_px / 4),
                px => px.into(),
            },
            whole_mid_cells: default.whole_mid_cells,
        };
        options.validate()?;
        Ok(options)
    }

    /// Tiles of at least 64 px; overlap at most half a tile, so the stride stays positive.
    pub fn validate(&self) -> Result<()> {
        if self.tile_px < 64 {
            bail!(
                "vae_tile_size = {} is too small — use at least 64 (pixels)",
                self.tile_px
            );
        }
        if self.overlap_px < 0 || 2 * self.overlap_px > self.tile_px {
            bail!(
                "vae_tile_overlap = {} must lie between 0 and half of vae_tile_size ({})",
                self.overlap_px,
                self.tile_px / 2
            );
        }
        Ok(())
    }

    /// `(tile, overlap)` in latent cells for a VAE of spatial factor `f`.
    pub fn latent_geometry(&self, f: i64) -> Result<(i64, i64)> {
        let f = f.max(1);
        let (tile, overlap) = (self.tile_px / f, self.overlap_px / f);
        if tile <= overlap || tile < 1 {
            bail!("vae_tile_size = {} px is too small for this VAE (factor {f}): a tile must span more latent cells than the overlap — use a larger tile", self.tile_px);
        }
        Ok((tile, overlap))
    }
}

/// Whether to tile: `On`/`Off` as asked; `Auto` when the full pass's `estimate` exceeds
/// `free` memory (bytes), and not when the free memory is unknown.
pub fn should_tile(mode: VaeTilingMode, estimate: u64, free: Option<u64>) -> bool {
    match mode {
        VaeTilingMode::On => true,
        VaeTilingMode::Off => false,
        VaeTilingMode::Auto => free.is_some_and(|free| estimate > free),
    }
}

/// Start of each tile along an axis of `len` cells: tiles of `tile` cells, at least
/// `overlap` shared between neighbours, spread evenly from 0 to `len - tile`.
pub fn tile_starts(len: i64, tile: i64, overlap: i64) -> Vec<i64> {
    let stride = tile - overlap;
    if len <= tile || stride <= 0 {
        return vec![0];
    }
    let gaps = (len - tile + stride - 1) / stride;
    (0..=gaps)
        .map(|i| (i * (len - tile) + gaps / 2) / gaps)
        .collect()
}

/// Weight of each cell of a tile of `len` cells that shares `lead` cells with the previous
/// tile and `trail` with the next: linear ramps across the shared regions, 1 elsewhere,
/// never 0 (so every cell has weight).
pub fn feather(len: i64, lead: i64, trail: i64) -> Vec<f32> {
    let ramp = |distance: i64, shared: i64| match shared {
        s if s > 0 => ((distance + 1) as f32 / (s + 1) as f32).min(1.0),
        _ => 1.0,
    };
    (0..len)
        .map(|x| ramp(x, lead).min(ramp(len - 1 - x, trail)))
        .collect()
}

/// A tile's input region `(y, h, x, w)`.
type Tile = (i64, i64, i64, i64);

/// Which layers a tile runs: `pass`'s part between image and latent resolution, and the mid
/// block too when `mid` (a latent over [`VaeTilingOptions::whole_mid_cells`]).
#[derive(Debug, Clone, Copy)]
struct Split {
    pass: VaePass,
    mid: bool,
}

/// One tile along one axis, in latent cells.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: i64,
    len: i64,
    /// Cells shared with the previous and the next tile.
    lead: i64,
    trail: i64,
}

fn spans(len: i64, tile: i64, overlap: i64) -> Vec<Span> {
    let tile = tile.min(len);
    let starts = tile_starts(len, tile, overlap);
    starts
        .iter()
        .enumerate()
        .map(|(i, &start)| Span {
            start,
            len: tile,
            lead: i
                .checked_sub(1)
                .and_then(|p| starts.get(p))
                .map_or(0, |&previous| previous + tile - start),
            trail: starts.get(i + 1).map_or(0, |&next| start + tile - next),
        })
        .collect()
}

/// How many tiles a latent of `latent_h × latent_w` cells is cut into.
pub fn tile_count(latent_h: i64, latent_w: i64, tile: i64, overlap: i64) -> usize {
    spans(latent_h, tile, overlap).len() * spans(latent_w, tile, overlap).len()
}

/// [`AutoencoderKL::run`] tile by tile: `pass` over `input` `[B, C, H, W]` (a scaled latent
/// to decode, an image to encode) in overlapping tiles, blended. Decode gives
/// `[B, 3, H·f, W·f]`; encode `[B, C, H/f, W/f]`, a remainder under one latent cell dropped
/// as in a full pass. The part between image and latent resolution is tiled, the mid block
/// too above `options.whole_mid_cells` latent cells; every tile normalises with the whole
/// input's GroupNorm statistics (pooled over a first run of the tiles, see
/// [`record_group_stats`]).
pub fn run_tiled(
    vae: &AutoencoderKL,
    pass: VaePass,
    input: &Tensor,
    options: &VaeTilingOptions,
) -> Result<Tensor> {
    let f = vae.config().spatial_factor();
    let size = input.size();
    let (latent_h, latent_w) = pass.latent_size(&size, f);
    if size.len() != 4 || latent_h < 1 || latent_w < 1 {
        bail!("a VAE input of shape {size:?} is under one latent cell ({f} px) — nothing to tile");
    }
    let (tile, overlap) = options.latent_geometry(f)?;
    let (rows, cols) = (
        spans(latent_h, tile, overlap),
        spans(latent_w, tile, overlap),
    );
    if rows.len() * cols.len() == 1 {
        return vae.run(pass, input);
    }
    let split = Split {
        pass,
        mid: latent_h * latent_w > options.whole_mid_cells,
    };
    let (tileable, out_scale) = match split {
        Split {
            pass: VaePass::Decode,
            mid: false,
        } => (vae.decode_mid(input)?, f),
        Split {
            pass: VaePass::Decode,
            mid: true,
        } => (vae.decode_in(input), f),
        Split {
            pass: VaePass::Encode,
            ..
        } => (input.shallow_clone(), 1),
    };
    let tiles: Vec<(Tile, (&Span, &Span))> = rows
        .iter()
        .flat_map(|row| cols.iter().map(move |col| (row, col)))
        .map(|(row, col)| {
            let (y, h) = input_range(row, size[2], f, pass);
            let (x, w) = input_range(col, size[3], f, pass);
            ((y, h, x, w), (row, col))
        })
        .collect();
    let stats = record_group_stats(vae, split, &tileable, &tiles)?;
    let mut blend: Option<Blend> = None;
    for &((y, h, x, w), (row, col)) in &tiles {
        let piece = tileable.narrow(2, y, h).narrow(3, x, w);
        let out = run_tileable(vae, split, &piece, &mut GroupNormStats::Use(stats.iter()))?;
        blend
            .get_or_insert_with(|| Blend::new(&out, latent_h * out_scale, latent_w * out_scale))
            .add(&out, row, col, out_scale)?;
    }
    let blended = blend
        .ok_or_else(|| anyhow!("tiling produced no tiles"))?
        .finish()
        .to_kind(input.kind());
    match (pass, split.mid) {
        (VaePass::Decode, _) => Ok(blended),
        (VaePass::Encode, false) => vae.encode_mid(&blended),
        (VaePass::Encode, true) => vae.encode_out(&blended),
    }
}

/// The tiled part of a pass: decode's up path, encode's down path, with the mid block when
/// `split.mid`.
fn run_tileable(
    vae: &AutoencoderKL,
    split: Split,
    x: &Tensor,
    stats: &mut GroupNormStats,
) -> Result<Tensor> {
    match (split.pass, split.mid) {
        (VaePass::Decode, false) => vae.decode_up(x, stats),
        (VaePass::Decode, true) => vae.decode_mid_up(x, stats),
        (VaePass::Encode, false) => vae.encode_down(x, stats),
        (VaePass::Encode, true) => vae.encode_down_mid(x, stats),
    }
}

/// Runs of the tiles that estimate the whole image's GroupNorm statistics before the final
/// one: the first on each tile's own, each later one normalising with the last estimate.
/// Each run corrects roughly one more stage of GroupNorms; measured on the tiny model's
/// structured inputs (`tests/integration/vae_tiling.rs`), decode is within 8/255 after 2 runs, while
/// encode of a colour gradient needs 4 (31 % of the latent std mean error after 2, 12 %
/// after 3, 0.24 % after 4).
fn stats_passes(pass: VaePass) -> usize {
    match pass {
        VaePass::Decode => 2,
        VaePass::Encode => 4,
    }
}

/// GroupNorm statistics of the tiled part of `pass` over the whole of `x`, pooled from a
/// first run of every tile on its own statistics, each tile counting only the cells it owns
/// (nearer to it than to a neighbour). Exact for the first GroupNorm; later ones see inputs
/// each tile normalised on its own, close for all but the most uneven images.
fn record_group_stats(
    vae: &AutoencoderKL,
    split: Split,
    x: &Tensor,
    tiles: &[(Tile, (&Span, &Span))],
) -> Result<Vec<GroupStats>> {
    let mut estimate: Option<Vec<GroupStats>> = None;
    for _ in 0..stats_passes(split.pass) {
        let mut pool = StatsPool::default();
        for &((y, h, x0, w), (row, col)) in tiles {
            let (owned, share) = owned_part(row, col);
            pool.begin(share);
            let mut mode = match &estimate {
                None => GroupNormStats::Record(&mut pool, owned),
                Some(last) => GroupNormStats::Refine(last.iter(), &mut pool, owned),
            };
            let piece = x.narrow(2, y, h).narrow(3, x0, w);
            let _ = run_tileable(vae, split, &piece, &mut mode)?;
            pool.end()?;
        }
        estimate = Some(pool.finish()?);
    }
    estimate.ok_or_else(|| anyhow!("no GroupNorm statistics recorded"))
}

/// The part of tile `row` × `col` nearer to it than to its neighbours, and its cells.
fn owned_part(row: &Span, col: &Span) -> (Owned, f64) {
    let axis = |s: &Span| {
        let len = s.len as f64;
        (s.lead as f64 / 2.0 / len, 1.0 - s.trail as f64 / 2.0 / len)
    };
    let ((top, bottom), (left, right)) = (axis(row), axis(col));
    let cells = (bottom - top) * row.len as f64 * (right - left) * col.len as f64;
    (
        Owned {
            top,
            bottom,
            left,
            right,
        },
        cells,
    )
}

/// `(start, len)` of a tile's input along an axis of `side` input cells. The last encode tile
/// runs to the image edge, so a remainder under one latent cell is seen as in a full pass.
fn input_range(span: &Span, side: i64, f: i64, pass: VaePass) -> (i64, i64) {
    match pass {
        VaePass::Decode => (span.start, span.len),
        VaePass::Encode => {
            let end = match span.start + span.len == side / f {
                true => side,
                false => (span.start + span.len) * f,
            };
            (span.start * f, end - span.start * f)
        }
    }
}

/// The running sum of weighted tiles and of their weights, in fp32.
struct Blend {
    sum: Tensor,
    weights: Tensor,
}

impl Blend {
    /// Zeros of `like`'s batch and channels over `height × width` output cells.
    fn new(like: &Tensor, height: i64, width: i64) -> Self {
        let (s, options) = (like.size(), (Kind::Float, like.device()));
        Self {
            sum: Tensor::zeros([s[0], s[1], height, width], options),
            weights: Tensor::zeros([1, 1, height, width], options),
        }
    }

    /// Adds tile output `out` at latent spans `row` × `col` (`scale` output cells per latent cell).
    fn add(&mut self, out: &Tensor, row: &Span, col: &Span, scale: i64) -> Result<()> {
        let (h, w) = (row.len * scale, col.len * scale);
        let size = out.size();
        if size.len() != 4 || size[2] != h || size[3] != w {
            bail!("a VAE tile came out {size:?}, expected {h}×{w} — tiling does not fit this VAE");
        }
        let weight = feather_mask(row, col, scale, out)?;
        let region = |t: &Tensor| {
            t.narrow(2, row.start * scale, h)
                .narrow(3, col.start * scale, w)
        };
        let _ = region(&self.sum).f_add_(&(out.to_kind(Kind::Float) * &weight))?;
        let _ = region(&self.weights).f_add_(&weight)?;
        Ok(())
    }

    /// Sum of weighted tiles over the sum of weights.
    fn finish(self) -> Tensor {
        self.sum / self.weights
    }
}

/// `[1, 1, h, w]` fp32 weights of one tile, on `like`'s device.
fn feather_mask(row: &Span, col: &Span, scale: i64, like: &Tensor) -> Result<Tensor> {
    let axis = |s: &Span| {
        let w = feather(s.len * scale, s.lead * scale, s.trail * scale);
        Tensor::f_from_slice(&w).map(|t| t.to_device(like.device()))
    };
    let (wy, wx) = (axis(row)?, axis(col)?);
    Ok(wy.view([1, 1, -1, 1]) * wx.view([1, 1, 1, -1]))
}
