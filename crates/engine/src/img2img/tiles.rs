//! A1111's tile grid for its "SD upscale" script (`images.split_grid` / `combine_grid`): an
//! image cut into overlapping tiles of the pass size, and the processed tiles blended back
//! along linear ramps over the overlap.
use super::resample::Image8;

/// One tile: its top-left corner in the image, and its pixels.
pub struct Tile {
    pub x: usize,
    pub y: usize,
    pub image: Image8,
}

/// The tiles of an image, row by row.
pub struct Grid {
    pub tile_w: usize,
    pub tile_h: usize,
    pub image_w: usize,
    pub image_h: usize,
    pub overlap: usize,
    pub rows: Vec<Vec<Tile>>,
}

/// `images.split_grid(image, tile_w, tile_h, overlap)`; the image must be at least a tile
/// in each side, and the overlap smaller than a tile.
pub fn split(image: &Image8, tile_w: usize, tile_h: usize, overlap: usize) -> Grid {
    let (w, h) = (image.width, image.height);
    let cols = (w - overlap).div_ceil(tile_w - overlap).max(1);
    let rows = (h - overlap).div_ceil(tile_h - overlap).max(1);
    let dx = if cols > 1 {
        (w - tile_w) as f64 / (cols - 1) as f64
    } else {
        0.0
    };
    let dy = if rows > 1 {
        (h - tile_h) as f64 / (rows - 1) as f64
    } else {
        0.0
    };
    let mut grid = Grid {
        tile_w,
        tile_h,
        image_w: w,
        image_h: h,
        overlap,
        rows: Vec::new(),
    };
    for row in 0..rows {
        let mut y = (row as f64 * dy) as usize;
        if y + tile_h >= h {
            y = h - tile_h;
        }
        let mut tiles = Vec::new();
        for col in 0..cols {
            let mut x = (col as f64 * dx) as usize;
            if x + tile_w >= w {
                x = w - tile_w;
            }
            tiles.push(Tile {
                x,
                y,
                image: image.crop(x, y, x + tile_w, y + tile_h),
            });
        }
        grid.rows.push(tiles);
    }
    grid
}

/// `paste(src, (x, y), mask)` with A1111's ramp mask `uint8(i * 255 / overlap)` along `i`.
fn blend(dst: &mut Image8, src: &Image8, x: usize, y: usize, ramp_on_x: bool, overlap: usize) {
    for sy in 0..src.height {
        for sx in 0..src.width {
            let (tx, ty) = (x + sx, y + sy);
            if tx >= dst.width || ty >= dst.height {
                continue;
            }
            let i = if ramp_on_x { sx } else { sy };
            let m = (i as f32 * 255.0 / overlap as f32) as u32;
            for c in 0..3 {
                let d = &mut dst.data[(ty * dst.width + tx) * 3 + c];
                let s = u32::from(src.at(sx, sy, c));
                // PIL's paste with a mask: (s * m + d * (255 - m)) / 255, rounded.
                *d = ((s * m + u32::from(*d) * (255 - m) + 127) / 255) as u8;
            }
        }
    }
}

/// `images.combine_grid(grid)`: each tile's first `overlap` columns (rows) blended over its
/// left (upper) neighbour, the rest pasted.
pub fn combine(grid: &Grid) -> Image8 {
    let (w, o) = (grid.image_w, grid.overlap);
    let mut out = Image8::new(w, grid.image_h, 3);
    for row in &grid.rows {
        let (y, h) = (row[0].y, grid.tile_h);
        let mut line = Image8::new(w, h, 3);
        for tile in row {
            let tw = tile.image.width;
            if tile.x == 0 || o == 0 {
                line.paste(&tile.image, tile.x as i64, 0);
                continue;
            }
            blend(&mut line, &tile.image.crop(0, 0, o, h), tile.x, 0, true, o);
            line.paste(&tile.image.crop(o, 0, tw, h), (tile.x + o) as i64, 0);
        }
        if y == 0 || o == 0 {
            out.paste(&line, 0, y as i64);
            continue;
        }
        blend(&mut out, &line.crop(0, 0, w, o), 0, y, false, o);
        out.paste(&line.crop(0, o, w, h), 0, (y + o) as i64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_then_combine_of_unchanged_tiles_is_the_image() {
        let mut im = Image8::new(100, 70, 3);
        for (i, v) in im.data.iter_mut().enumerate() {
            *v = (i % 253) as u8;
        }
        let grid = split(&im, 48, 32, 8);
        assert_eq!((grid.rows.len(), grid.rows[0].len()), (3, 3));
        assert_eq!(grid.rows[0][2].x, 100 - 48);
        assert_eq!(grid.rows[2][0].y, 70 - 32);
        let back = combine(&grid);
        let worst = back
            .data
            .iter()
            .zip(&im.data)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert_eq!(worst, 0);
    }

    #[test]
    fn the_overlap_ramps_from_the_left_tile_to_the_right_one() {
        let im = Image8::new(24, 16, 3);
        let mut grid = split(&im, 16, 16, 8);
        assert_eq!(grid.rows[0].len(), 2);
        grid.rows[0][1].image.data.iter_mut().for_each(|v| *v = 255);
        let out = combine(&grid);
        // Right tile at x = 8; its first column has weight 0, its 8th 223 / 255.
        assert_eq!(out.at(8, 3, 0), 0);
        assert_eq!(out.at(15, 3, 0), 223);
        assert_eq!(out.at(16, 3, 0), 255);
    }
}
