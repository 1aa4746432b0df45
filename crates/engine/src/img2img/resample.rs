//! Pillow's `Image.resize` for 8-bit images, transcribed (libImaging/Resample.c): separable
//! convolution, horizontal pass then vertical, coefficients normalised and rounded to 22-bit
//! fixed point, each output clipped to 0..=255. A1111 resizes init images with LANCZOS and
//! masks with the default BICUBIC, so this gives its pixels exactly, not approximately.

/// A Pillow resampling filter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Filter {
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
            Filter::Lanczos => 3.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        match self {
            Filter::Bilinear => {
                let x = x.abs();
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Filter::Bicubic => {
                let a = -0.5;
                let x = x.abs();
                if x < 1.0 {
                    ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * a
                } else {
                    0.0
                }
            }
            Filter::Lanczos => {
                if (-3.0..3.0).contains(&x) {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        return 1.0;
    }
    let x = x * std::f64::consts::PI;
    x.sin() / x
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// An 8-bit image: `channels` interleaved samples a pixel, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Image8 {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub data: Vec<u8>,
}

impl Image8 {
    pub fn new(width: usize, height: usize, channels: usize) -> Self {
        Self {
            width,
            height,
            channels,
            data: vec![0; width * height * channels],
        }
    }

    pub fn at(&self, x: usize, y: usize, c: usize) -> u8 {
        self.data[(y * self.width + x) * self.channels + c]
    }

    /// `Image.crop((x1, y1, x2, y2))` inside the image.
    pub fn crop(&self, x1: usize, y1: usize, x2: usize, y2: usize) -> Image8 {
        let mut out = Image8::new(x2 - x1, y2 - y1, self.channels);
        let row = (x2 - x1) * self.channels;
        for y in y1..y2 {
            let from = (y * self.width + x1) * self.channels;
            let to = (y - y1) * row;
            out.data[to..to + row].copy_from_slice(&self.data[from..from + row]);
        }
        out
    }

    /// `Image.paste(other, (x, y))`, clipped to this image.
    pub fn paste(&mut self, other: &Image8, x: i64, y: i64) {
        for oy in 0..other.height as i64 {
            for ox in 0..other.width as i64 {
                let (tx, ty) = (x + ox, y + oy);
                if tx < 0 || ty < 0 || tx >= self.width as i64 || ty >= self.height as i64 {
                    continue;
                }
                for c in 0..self.channels {
                    self.data[(ty as usize * self.width + tx as usize) * self.channels + c] =
                        other.at(ox as usize, oy as usize, c);
                }
            }
        }
    }
}

/// Per output sample: first input index and its fixed-point weights.
struct Coeffs {
    bounds: Vec<(usize, usize)>,
    weights: Vec<Vec<i64>>,
}

fn coeffs(in_size: usize, in0: f64, in1: f64, out_size: usize, filter: Filter) -> Coeffs {
    let scale = (in1 - in0) / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    let mut bounds = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for xx in 0..out_size {
        let center = in0 + (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        // C's (int) truncates toward zero.
        let xmin = ((center - support + 0.5) as i64).max(0) as usize;
        let xmax = ((center + support + 0.5) as i64).min(in_size as i64).max(0) as usize;
        let n = xmax.saturating_sub(xmin);
        let mut k: Vec<f64> = (0..n)
            .map(|x| filter.weight((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let ww: f64 = k.iter().sum();
        if ww != 0.0 {
            k.iter_mut().for_each(|w| *w /= ww);
        }
        let one = (1i64 << PRECISION_BITS) as f64;
        let fixed = k
            .iter()
            .map(|&w| match w < 0.0 {
                true => (-0.5 + w * one) as i64,
                false => (0.5 + w * one) as i64,
            })
            .collect();
        bounds.push((xmin, n));
        weights.push(fixed);
    }
    Coeffs { bounds, weights }
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// `im.resize((width, height), resample=filter, box=(x0, y0, x1, y1))`.
pub fn resize_box(
    im: &Image8,
    width: usize,
    height: usize,
    filter: Filter,
    [x0, y0, x1, y1]: [f64; 4],
) -> Image8 {
    let ch = im.channels;
    let need_h = width != im.width || x0 != 0.0 || x1 != width as f64;
    let need_v = height != im.height || y0 != 0.0 || y1 != height as f64;
    let mut cur = im.clone();
    if need_h {
        let c = coeffs(im.width, x0, x1, width, filter);
        let mut out = Image8::new(width, cur.height, ch);
        for y in 0..cur.height {
            for (xx, ((xmin, n), k)) in c.bounds.iter().zip(&c.weights).enumerate() {
                for band in 0..ch {
                    let mut ss = 1i64 << (PRECISION_BITS - 1);
                    for (x, w) in k.iter().enumerate().take(*n) {
                        ss += i64::from(cur.at(xmin + x, y, band)) * w;
                    }
                    out.data[(y * width + xx) * ch + band] = clip8(ss);
                }
            }
        }
        cur = out;
    }
    if need_v {
        let c = coeffs(im.height, y0, y1, height, filter);
        let mut out = Image8::new(cur.width, height, ch);
        for (yy, ((ymin, n), k)) in c.bounds.iter().zip(&c.weights).enumerate() {
            for x in 0..cur.width {
                for band in 0..ch {
                    let mut ss = 1i64 << (PRECISION_BITS - 1);
                    for (y, w) in k.iter().enumerate().take(*n) {
                        ss += i64::from(cur.at(x, ymin + y, band)) * w;
                    }
                    out.data[(yy * cur.width + x) * ch + band] = clip8(ss);
                }
            }
        }
        cur = out;
    }
    cur
}

/// `im.resize((width, height), resample=filter)`.
pub fn resize(im: &Image8, width: usize, height: usize, filter: Filter) -> Image8 {
    if width == im.width && height == im.height {
        return im.clone();
    }
    let full = [0.0, 0.0, im.width as f64, im.height as f64];
    resize_box(im, width, height, filter, full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_constant_image_stays_constant_and_identity_is_a_copy() {
        let mut im = Image8::new(7, 5, 3);
        im.data.iter_mut().for_each(|v| *v = 200);
        for f in [Filter::Bilinear, Filter::Bicubic, Filter::Lanczos] {
            let out = resize(&im, 13, 3, f);
            assert_eq!((out.width, out.height), (13, 3));
            assert!(out.data.iter().all(|&v| v == 200), "{f:?}");
        }
        assert_eq!(resize(&im, 7, 5, Filter::Lanczos), im);
    }

    #[test]
    fn downscaling_a_two_level_edge_averages_it() {
        // 4 px wide: 0 0 255 255 → 2 px with a box-like (scaled) bilinear: 0 and 255 sides.
        let im = Image8 {
            width: 4,
            height: 1,
            channels: 1,
            data: vec![0, 0, 255, 255],
        };
        let out = resize(&im, 2, 1, Filter::Bilinear);
        assert!(out.data[0] < 64 && out.data[1] > 191, "{:?}", out.data);
        let one = resize(&im, 1, 1, Filter::Bicubic);
        assert!((126..=129).contains(&one.data[0]), "{:?}", one.data);
    }
}
