//! Mixture of Diffusers' weights (the extension's `gaussian_weights`, from albarji's
//! mixdiff/tiling.py) and merge (`MixtureOfDiffusers.apply_model_hijack`): each tile's
//! prediction times its Gaussian over the sum of the Gaussians at the cell.
//!
//! The extension merges the UNet's eps; this merges the denoised prediction
//! `c_skip·x + c_out·eps`, the same sum since the weights at a cell sum to 1 and `c_skip`,
//! `c_out` are one number per call.
use host_api::tch::{Device, Kind, Tensor};

/// The `[tile_h, tile_w]` Gaussian, as the extension writes it: variance 0.01 of the tile's
/// width for both axes, x centred on `(tile_w - 1) / 2` and y on `tile_h / 2`; float64 made
/// float32.
pub fn gaussian_weights(tile_w: i64, tile_h: i64) -> Tensor {
    let var = 0.01;
    let width = tile_w as f64;
    let f = |x: f64, mid: f64| {
        (-(x - mid) * (x - mid) / (width * width) / (2.0 * var)).exp()
            / (2.0 * std::f64::consts::PI * var).sqrt()
    };
    let xs: Vec<f64> = (0..tile_w)
        .map(|x| f(x as f64, (width - 1.0) / 2.0))
        .collect();
    let ys: Vec<f64> = (0..tile_h)
        .map(|y| f(y as f64, tile_h as f64 / 2.0))
        .collect();
    let outer: Vec<f64> = ys
        .iter()
        .flat_map(|y| xs.iter().map(move |x| y * x))
        .collect();
    Tensor::from_slice(&outer)
        .view([tile_h, tile_w])
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
}

/// A tile's share of the merge: `part × gaussian × (1 / sum)` at its cells.
pub fn weighted(part: &Tensor, gaussian: &Tensor, sum: &Tensor) -> Tensor {
    part * (gaussian * sum.reciprocal())
}
