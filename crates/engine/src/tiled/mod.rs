//! Tiled diffusion (a pass's `tiled = { ... }`): the pass's denoiser runs the model over
//! overlapping tiles of the latent and merges their predictions, so the sampler still sees one
//! whole-latent denoiser and every sampler works unchanged. The tiles, their order, their
//! batching and the merge weights are those of the A1111 extension
//! pkuliyi2015/multidiffusion-upscaler-for-automatic1111 (`split_bboxes`, `init_grid_bbox`):
//! [`multidiffusion`] averages the tiles' predictions, [`mixture`] (Mixture of Diffusers)
//! weights them with a Gaussian. Each tile batch is one model call with the pass's sigma and
//! conditioning (CFG rows batched as without tiles); the backend's interface is unchanged.
use host_api::tch::{Kind, Tensor};
use host_api::ModelBox;
use serde::{Deserialize, Serialize};

mod infotext;
pub mod mixture;
pub mod multidiffusion;
pub mod setting;

/// A pass's `tiled` table, in latent cells.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Tiled {
    #[serde(default)]
    pub method: Method,
    #[serde(default = "default_tile")]
    pub tile: u32,
    #[serde(default = "default_overlap")]
    pub overlap: u32,
    #[serde(default = "default_batch")]
    pub batch: u32,
}

/// How overlapping tiles are merged.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// Bar-Tal et al. 2023: the mean of the tiles' predictions.
    #[default]
    MultiDiffusion,
    /// Jiménez 2023 (Mixture of Diffusers): Gaussian-weighted tiles.
    Mixture,
}

/// The extension's defaults (its "Latent tile width/height", "overlap" and "batch size").
pub const TILE: u32 = 96;
pub const OVERLAP: u32 = 48;
pub const BATCH: u32 = 4;
/// The smallest tile: 64 px for an 8× VAE (the UNet's three downsamplings need 8 cells).
pub const MIN_TILE: u32 = 8;

pub(crate) fn default_tile() -> u32 {
    TILE
}
pub(crate) fn default_overlap() -> u32 {
    OVERLAP
}
pub(crate) fn default_batch() -> u32 {
    BATCH
}

impl Default for Tiled {
    fn default() -> Self {
        Tiled {
            method: Method::default(),
            tile: TILE,
            overlap: OVERLAP,
            batch: BATCH,
        }
    }
}

impl Tiled {
    /// The profile's range rule for the table.
    pub fn checked(self) -> Result<Self, String> {
        if self.tile < MIN_TILE {
            return Err(format!(
                "tiled.tile must be at least {MIN_TILE} latent cells ({} px), e.g. tile = {TILE}",
                MIN_TILE * 8
            ));
        }
        if self.overlap >= self.tile {
            return Err(format!(
                "tiled.overlap ({}) must be less than tiled.tile ({}), e.g. tile = {TILE}, overlap = {OVERLAP}",
                self.overlap, self.tile
            ));
        }
        if self.batch == 0 {
            return Err(
                "tiled.batch must be at least 1 (tiles per model call), e.g. batch = 4".into(),
            );
        }
        Ok(self)
    }
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::MultiDiffusion => "multidiffusion",
            Method::Mixture => "mixture",
        }
    }
}

/// As the profile writes it (an inline table).
impl std::fmt::Display for Tiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{ method = \"{}\", tile = {}, overlap = {}, batch = {} }}",
            self.method.as_str(),
            self.tile,
            self.overlap,
            self.batch
        )
    }
}

/// One tile: its top-left cell.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tile {
    pub x: i64,
    pub y: i64,
}

/// A pass's tiles over an `h × w` latent and their batches (no tensors: the memory estimate
/// asks for it at many sizes).
pub struct Grid {
    pub tile_w: i64,
    pub tile_h: i64,
    pub tiles: Vec<Tile>,
    /// Tiles per model call, in order.
    pub batches: Vec<usize>,
    /// Cells a tile may reach past the right (bottom) edge, wrapping to the left (top):
    /// seamless output (`tiling = true`) on a side longer than the tile; 0 otherwise.
    pub wrap_w: i64,
    pub wrap_h: i64,
}

impl Grid {
    pub fn new(settings: &Tiled, h: i64, w: i64) -> Self {
        Self::wrapping(settings, h, w, false)
    }

    /// The tiles of a seamless pass when `wrap`: on a side longer than the tile they lie on
    /// a circle — `ceil(side / (tile − overlap))` tiles, starting `⌊i · side / count⌋`, the
    /// last reaching past the edge into the first — so every seam between tiles, the
    /// image's own wrap-around included, is blended alike.
    pub fn wrapping(settings: &Tiled, h: i64, w: i64, wrap: bool) -> Self {
        let tile = i64::from(settings.tile);
        let (tile_w, tile_h) = (tile.min(w), tile.min(h));
        // init_grid_bbox: the overlap leaves at least 4 cells of each tile its own.
        let overlap = i64::from(settings.overlap).min(tile - 4).max(0);
        let (wrap_w, wrap_h) = match wrap {
            true => (
                if tile_w < w { tile_w } else { 0 },
                if tile_h < h { tile_h } else { 0 },
            ),
            false => (0, 0),
        };
        let tiles = split((w, wrap_w > 0), (h, wrap_h > 0), tile_w, tile_h, overlap);
        let n = tiles.len();
        let calls = n.div_ceil(settings.batch as usize);
        let per_call = n.div_ceil(calls);
        let batches = (0..n)
            .step_by(per_call)
            .map(|start| per_call.min(n - start))
            .collect();
        Grid {
            tile_w,
            tile_h,
            tiles,
            batches,
            wrap_w,
            wrap_h,
        }
    }

    /// What `check` prints: the method, the tiles and the calls.
    pub fn describe(&self, settings: &Tiled) -> String {
        let calls = self.batches.len();
        format!(
            "{} (overlap {}): {} tile{} of {}x{} latent cells, {calls} model call{} a step of at most {} tile{}",
            settings.method.as_str(),
            settings.overlap,
            self.tiles.len(),
            plural(self.tiles.len()),
            self.tile_w,
            self.tile_h,
            plural(calls),
            self.per_call(),
            plural(self.per_call()),
        )
    }

    /// The most tiles one model call takes.
    pub fn per_call(&self) -> usize {
        self.batches.first().copied().unwrap_or(1)
    }
}

/// A pass's tiles over an `h × w` latent, their batches and merge weights.
pub struct Tiler {
    method: Method,
    pub grid: Grid,
    /// Per tile cell (Mixture: the Gaussian; MultiDiffusion: none, every cell 1).
    tile_weights: Option<Tensor>,
    /// The sum of the tiles' weights at each cell `[1, 1, h, w]` (float32).
    weights: Tensor,
    whole: bool,
}

impl Tiler {
    pub fn new(settings: &Tiled, h: i64, w: i64) -> Self {
        Self::wrapping(settings, h, w, false)
    }

    /// A seamless pass's tiler (`wrap`): see [`Grid::wrapping`].
    pub fn wrapping(settings: &Tiled, h: i64, w: i64, wrap: bool) -> Self {
        let grid = Grid::wrapping(settings, h, w, wrap);
        let (tile_w, tile_h) = (grid.tile_w, grid.tile_h);
        let tile_weights = match settings.method {
            Method::MultiDiffusion => None,
            Method::Mixture => Some(mixture::gaussian_weights(tile_w, tile_h)),
        };
        let (ph, pw) = (grid.wrap_h, grid.wrap_w);
        let cpu = (Kind::Float, host_api::tch::Device::Cpu);
        let weights = Tensor::zeros([1, 1, h + ph, w + pw], cpu);
        for t in &grid.tiles {
            let mut cells = weights.narrow(2, t.y, tile_h).narrow(3, t.x, tile_w);
            match &tile_weights {
                Some(g) => cells += g,
                None => cells += 1.0,
            }
        }
        let weights = fold(&weights, h, w, (ph, pw));
        Tiler {
            method: settings.method,
            whole: grid.tiles.len() == 1 && tile_w == w && tile_h == h,
            grid,
            tile_weights,
            weights,
        }
    }

    /// The model's denoised prediction of `x` `[B, C, h, w]` for each conditioning, from the
    /// tiles. One tile covering the latent is the untiled call itself.
    pub fn denoise(
        &self,
        model: &ModelBox,
        x: &Tensor,
        sigma: f64,
        conds: &[&[Tensor]],
    ) -> host_api::Result<Vec<Tensor>> {
        self.denoise_with(x, |xs| model.denoise(xs, sigma, conds))
    }

    /// [`Self::denoise`] with the model call given: `call(tiles)` returns one prediction per
    /// conditioning for the batch of tiles `[n·B, C, tile_h, tile_w]` (the benchmark calls a
    /// bare UNet this way).
    pub fn denoise_with<E>(
        &self,
        x: &Tensor,
        mut call: impl FnMut(&Tensor) -> Result<Vec<Tensor>, E>,
    ) -> Result<Vec<Tensor>, E> {
        if self.whole {
            return call(x);
        }
        let rows = x.size()[0];
        let size = x.size();
        let (h, w) = (size[2], size[3]);
        let wraps = (self.grid.wrap_h, self.grid.wrap_w);
        // A seamless pass's tiles read (and are summed) past the edges: the latent and the
        // cells' total weights padded with what they wrap to.
        let x = &unfold(x, wraps);
        let weights = self.weights.to_device(x.device()).to_kind(x.kind());
        let padded_weights = unfold(&weights, wraps);
        let tile_weights = self
            .tile_weights
            .as_ref()
            .map(|g| g.to_device(x.device()).to_kind(x.kind()));
        let mut sums: Vec<Tensor> = Vec::new();
        let mut start = 0;
        for &n in &self.grid.batches {
            let tiles = &self.grid.tiles[start..start + n];
            start += n;
            let xs: Vec<Tensor> = tiles.iter().map(|t| self.cells(x, t)).collect();
            let outs = call(&Tensor::cat(&xs, 0))?;
            if sums.is_empty() {
                sums = outs.iter().map(|_| x.zeros_like()).collect();
            }
            for (sum, out) in sums.iter().zip(&outs) {
                for (i, t) in tiles.iter().enumerate() {
                    let mut cells = self.cells(sum, t);
                    let part = out.narrow(0, i as i64 * rows, rows);
                    match &tile_weights {
                        Some(g) => {
                            cells += mixture::weighted(&part, g, &self.cells(&padded_weights, t))
                        }
                        None => cells += part,
                    }
                }
            }
        }
        Ok(sums
            .into_iter()
            .map(|sum| fold(&sum, h, w, wraps))
            .map(|sum| match self.method {
                Method::MultiDiffusion => multidiffusion::average(&sum, &weights),
                Method::Mixture => sum,
            })
            .collect())
    }

    /// Tile `t`'s cells of `x` (a view).
    fn cells(&self, x: &Tensor, t: &Tile) -> Tensor {
        x.narrow(2, t.y, self.grid.tile_h)
            .narrow(3, t.x, self.grid.tile_w)
    }
}

fn plural(n: usize) -> &'static str {
    match n {
        1 => "",
        _ => "s",
    }
}

/// `x` `[B, C, h, w]` with `ph` rows and `pw` columns of what they wrap to appended (the first
/// rows and columns), as a seamless pass's tiles read it.
fn unfold(x: &Tensor, (ph, pw): (i64, i64)) -> Tensor {
    match ph > 0 || pw > 0 {
        true => x.pad([0, pw, 0, ph], "circular", None),
        false => x.shallow_clone(),
    }
}

/// The inverse sum of [`unfold`]: what landed on the appended rows and columns is added to
/// the cells they wrap to, and the result is `[B, C, h, w]`.
fn fold(x: &Tensor, h: i64, w: i64, (ph, pw): (i64, i64)) -> Tensor {
    if ph == 0 && pw == 0 {
        return x.shallow_clone();
    }
    let x = x.copy();
    if pw > 0 {
        let mut first = x.narrow(3, 0, pw);
        first += x.narrow(3, w, pw);
    }
    let x = x.narrow(3, 0, w);
    if ph > 0 {
        let mut first = x.narrow(2, 0, ph);
        first += x.narrow(2, h, ph);
    }
    x.narrow(2, 0, h).contiguous()
}

/// The extension's `split_bboxes`: as few columns (rows) as overlap at least `overlap` cells,
/// spread evenly with their start truncated, the last flush with the edge; row-major. A side
/// that wraps (`(side, true)`) has its tiles on a circle instead ([`Grid::wrapping`]).
fn split(
    (w, wrap_w): (i64, bool),
    (h, wrap_h): (i64, bool),
    tile_w: i64,
    tile_h: i64,
    overlap: i64,
) -> Vec<Tile> {
    let starts = |size: i64, tile: i64, wrap: bool| -> Vec<i64> {
        if wrap {
            let count = (size + (tile - overlap) - 1) / (tile - overlap);
            return (0..count).map(|i| i * size / count).collect();
        }
        let count = match tile < size {
            true => (size - overlap + (tile - overlap) - 1) / (tile - overlap),
            false => 1,
        };
        let step = match count > 1 {
            true => (size - tile) as f64 / (count - 1) as f64,
            false => 0.0,
        };
        (0..count)
            .map(|i| ((i as f64 * step) as i64).min(size - tile))
            .collect()
    };
    let (xs, ys) = (starts(w, tile_w, wrap_w), starts(h, tile_h, wrap_h));
    ys.iter()
        .flat_map(|&y| xs.iter().map(move |&x| Tile { x, y }))
        .collect()
}

/// The message for a tiled pass on a 9-channel inpainting checkpoint (its image conditioning
/// is not tiled yet).
pub fn inpainting_refusal(pass: usize) -> String {
    format!("pass {pass}: `tiled` cannot run a 9-channel inpainting checkpoint yet (its image conditioning is not tiled); remove `tiled` from this pass or use a regular checkpoint")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiler(tile: u32, overlap: u32, batch: u32, h: i64, w: i64) -> Grid {
        let t = Tiled {
            method: Method::MultiDiffusion,
            tile,
            overlap,
            batch,
        };
        Grid::new(&t, h, w)
    }

    #[test]
    fn tiles_are_the_extensions() {
        // 48 × 40 cells, tile 20, overlap 8: 4 columns 28/3 apart (truncated), 3 rows.
        let t = tiler(20, 8, 5, 40, 48);
        let xs: Vec<i64> = t.tiles.iter().take(4).map(|t| t.x).collect();
        let ys: Vec<i64> = t.tiles.iter().step_by(4).map(|t| t.y).collect();
        assert_eq!(xs, [0, 9, 18, 28]);
        assert_eq!(ys, [0, 10, 20]);
        // 12 tiles at most 5 a call: 3 calls of 4.
        assert_eq!(t.batches, [4, 4, 4]);
        // A latent smaller than the tile: one tile of the latent's size.
        let one = tiler(96, 48, 4, 40, 48);
        assert_eq!((one.tiles.len(), one.tile_w, one.tile_h), (1, 48, 40));
        assert_eq!(one.per_call(), 1);
    }

    #[test]
    fn wrapping_tiles_lie_on_a_circle_and_merge_back_exactly() {
        let t = Tiled {
            method: Method::MultiDiffusion,
            tile: 20,
            overlap: 8,
            batch: 5,
        };
        // 48 cells, steps of at most 12: 4 columns 12 apart, the last reaching 8 past the edge;
        // 16 rows fit one tile: no wrap there.
        let g = Grid::wrapping(&t, 16, 48, true);
        let xs: Vec<i64> = g.tiles.iter().map(|t| t.x).collect();
        assert_eq!(xs, [0, 12, 24, 36]);
        assert_eq!((g.wrap_w, g.wrap_h, g.tile_h), (20, 0, 16));
        // A model that returns its input: every cell is a mean of copies of itself, wrapped
        // cells included (both methods), bit for bit up to the weights' rounding.
        for method in [Method::MultiDiffusion, Method::Mixture] {
            let t = Tiled { method, ..t };
            let tiler = Tiler::wrapping(&t, 40, 48, true);
            let x = Tensor::randn([2, 4, 40, 48], (Kind::Float, host_api::tch::Device::Cpu));
            let out = tiler
                .denoise_with(&x, |tiles| Ok::<_, ()>(vec![tiles.shallow_clone()]))
                .unwrap();
            let err = f64::try_from((&out[0] - &x).abs().max()).unwrap();
            assert!(err < 1e-5, "{method:?}: {err}");
        }
    }

    /// On a circle of evenly spaced tiles, rolling the latent by the tiles' step rolls the
    /// merged prediction by it, for a model that mixes neighbouring cells (circularly within
    /// its tile, as a seamless UNet's convolutions do); tiles that stop at the edge do not.
    #[test]
    fn wrapping_tiles_commute_with_a_roll() {
        let t = Tiled {
            method: Method::MultiDiffusion,
            tile: 20,
            overlap: 8,
            batch: 3,
        };
        let model = |tiles: &Tensor| {
            let mixed = tiles * 0.5 + tiles.roll([1], [3]) * 0.3 + tiles.roll([-2], [2]) * 0.2;
            Ok::<_, ()>(vec![mixed])
        };
        let x = Tensor::randn([1, 4, 48, 48], (Kind::Float, host_api::tch::Device::Cpu));
        let rolled = x.roll([12, 12], [2, 3]);
        let apart = |wrap: bool| {
            let tiler = Tiler::wrapping(&t, 48, 48, wrap);
            let a = tiler.denoise_with(&x, model).unwrap().remove(0);
            let b = tiler.denoise_with(&rolled, model).unwrap().remove(0);
            f64::try_from((a.roll([12, 12], [2, 3]) - b).abs().max()).unwrap()
        };
        let (wrapped, edged) = (apart(true), apart(false));
        assert!(wrapped < 1e-5, "{wrapped}");
        assert!(edged > 0.1, "{edged}");
    }

    #[test]
    fn bad_values_are_named() {
        let bad = |tile, overlap, batch| {
            Tiled {
                method: Method::Mixture,
                tile,
                overlap,
                batch,
            }
            .checked()
            .unwrap_err()
        };
        assert!(bad(4, 0, 1).contains("tiled.tile must be at least 8"));
        assert!(bad(32, 32, 1).contains("tiled.overlap (32) must be less than tiled.tile (32)"));
        assert!(bad(32, 8, 0).contains("tiled.batch must be at least 1"));
    }
}
