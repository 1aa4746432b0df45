//! RRDBNet (ESRGAN, Real-ESRGAN): a first conv, N residual-in-residual dense blocks, a body
//! conv added to the first features, nearest ×2 upsampling convs, an HR conv and a last conv.
//! Scales 1 and 2 (Real-ESRGAN) pixel-unshuffle the input by 4 / 2 first and upsample ×4.
//!
//! Key layouts, both read into one network:
//! - Real-ESRGAN / BasicSR: `conv_first`, `body.{i}.rdb{1,2,3}.conv{1..5}`, `conv_body`,
//!   `conv_up{1,2,...}`, `conv_hr`, `conv_last`;
//! - original ESRGAN: `model.0`, `model.1.sub.{i}.RDB{1,2,3}.conv{1..5}.0`,
//!   `model.1.sub.{N}` (the body conv), then the upsampling convs, the HR conv and the last
//!   conv at increasing `model.{k}` indices.
use host_api::tch::Tensor;
use host_api::{Error, Result};

use super::{lrelu, Conv, Weights};

pub struct Rrdb {
    conv_first: Conv,
    /// Per block, per dense block, conv1..conv5.
    blocks: Vec<[[Conv; 5]; 3]>,
    conv_body: Conv,
    ups: Vec<Conv>,
    conv_hr: Conv,
    conv_last: Conv,
    /// Pixel-unshuffle factor of the input (1: none).
    unshuffle: i64,
    pub scale: i64,
    layout: &'static str,
}

/// Indices `i` of keys `{prefix}{i}{suffix}` present, ascending.
fn indices(w: &Weights, prefix: &str, suffix: &str) -> Vec<usize> {
    super::arch::indices_in(w.keys(), prefix, suffix)
}

fn dense(
    w: &mut Weights,
    block: &str,
    names: [&str; 3],
    conv_suffix: &str,
) -> Result<[[Conv; 5]; 3]> {
    let rdb = |w: &mut Weights, name: &str| -> Result<[Conv; 5]> {
        let conv = |w: &mut Weights, k: usize| {
            Conv::take(w, &format!("{block}.{name}.conv{k}{conv_suffix}"))
        };
        Ok([
            conv(w, 1)?,
            conv(w, 2)?,
            conv(w, 3)?,
            conv(w, 4)?,
            conv(w, 5)?,
        ])
    };
    Ok([rdb(w, names[0])?, rdb(w, names[1])?, rdb(w, names[2])?])
}

impl Rrdb {
    /// Takes the weights of a file [`super::arch::infer`] checked: pixel-unshuffle factor
    /// `unshuffle`, scale `scale`.
    pub fn from_weights(w: &mut Weights, unshuffle: i64, scale: i64) -> Result<Self> {
        let mut net = match w.contains_key("conv_first.weight") {
            true => Self::basicsr(w)?,
            false => Self::original(w)?,
        };
        net.unshuffle = unshuffle;
        net.scale = scale;
        Ok(net)
    }

    fn basicsr(w: &mut Weights) -> Result<Self> {
        let n = indices(w, "body.", ".rdb1.conv1.weight");
        let blocks = n
            .iter()
            .map(|i| dense(w, &format!("body.{i}"), ["rdb1", "rdb2", "rdb3"], ""))
            .collect::<Result<Vec<_>>>()?;
        let ups = indices(w, "conv_up", ".weight")
            .iter()
            .map(|i| Conv::take(w, &format!("conv_up{i}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_first: Conv::take(w, "conv_first")?,
            blocks,
            conv_body: Conv::take(w, "conv_body")?,
            ups,
            conv_hr: Conv::take(w, "conv_hr")?,
            conv_last: Conv::take(w, "conv_last")?,
            unshuffle: 1,
            scale: 1,
            layout: "Real-ESRGAN layout",
        })
    }

    fn original(w: &mut Weights) -> Result<Self> {
        let n = indices(w, "model.1.sub.", ".RDB1.conv1.0.weight");
        let blocks = n
            .iter()
            .map(|i| {
                dense(
                    w,
                    &format!("model.1.sub.{i}"),
                    ["RDB1", "RDB2", "RDB3"],
                    ".0",
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let conv_body = Conv::take(w, &format!("model.1.sub.{}", n.len()))?;
        let conv_first = Conv::take(w, "model.0")?;
        // After the trunk: the upsampling convs, then the HR conv and the last conv.
        let tail = indices(w, "model.", ".weight");
        let tail: Vec<usize> = tail.into_iter().filter(|i| *i >= 2).collect();
        if tail.len() < 2 {
            return Err(Error::new("ESRGAN layout without its HR and last convs"));
        }
        let mut convs = tail
            .iter()
            .map(|i| Conv::take(w, &format!("model.{i}")))
            .collect::<Result<Vec<_>>>()?;
        let missing = || Error::new("ESRGAN layout without its HR and last convs");
        let conv_last = convs.pop().ok_or_else(missing)?;
        let conv_hr = convs.pop().ok_or_else(missing)?;
        Ok(Self {
            conv_first,
            blocks,
            conv_body,
            ups: convs,
            conv_hr,
            conv_last,
            unshuffle: 1,
            scale: 1,
            layout: "ESRGAN layout",
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "RRDBNet ({}), {}x, {}, {} features",
            self.layout,
            self.scale,
            super::count(self.blocks.len(), "block"),
            self.conv_first.out_channels()
        )
    }

    pub(super) fn convs_mut(&mut self) -> impl Iterator<Item = &mut Conv> {
        std::iter::once(&mut self.conv_first)
            .chain(self.blocks.iter_mut().flatten().flatten())
            .chain(std::iter::once(&mut self.conv_body))
            .chain(self.ups.iter_mut())
            .chain([&mut self.conv_hr, &mut self.conv_last])
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.size4()?;
        let f = self.unshuffle;
        let x = match f {
            1 => x.shallow_clone(),
            // Reflect-padded to a multiple of the unshuffle factor (bottom/right), as
            // Real-ESRGAN does; the output is cropped back.
            f => {
                let (ph, pw) = ((f - h % f) % f, (f - w % f) % f);
                let padded = match ph + pw {
                    0 => x.shallow_clone(),
                    _ => x.f_reflection_pad2d([0, pw, 0, ph])?,
                };
                padded.f_pixel_unshuffle(f)?
            }
        };
        let feat = self.conv_first.forward(&x)?;
        let mut body = feat.shallow_clone();
        for block in &self.blocks {
            let mut out = body.shallow_clone();
            for rdb in block {
                out = dense_forward(rdb, &out)?;
            }
            body = out * 0.2 + &body;
        }
        let mut feat = feat + self.conv_body.forward(&body)?;
        for up in &self.ups {
            let s = feat.size();
            let big = feat.f_upsample_nearest2d([s[2] * 2, s[3] * 2], None, None)?;
            feat = lrelu(&up.forward(&big)?)?;
        }
        let out = self
            .conv_last
            .forward(&lrelu(&self.conv_hr.forward(&feat)?)?)?;
        Ok(out
            .f_narrow(2, 0, h * self.scale)?
            .f_narrow(3, 0, w * self.scale)?)
    }
}

/// One residual dense block: each conv sees the input and every earlier output.
fn dense_forward(convs: &[Conv; 5], x: &Tensor) -> Result<Tensor> {
    let mut features = vec![x.shallow_clone()];
    for conv in &convs[..4] {
        let input = Tensor::f_cat(&features, 1)?;
        features.push(lrelu(&conv.forward(&input)?)?);
    }
    let x5 = convs[4].forward(&Tensor::f_cat(&features, 1)?)?;
    Ok(x5 * 0.2 + x)
}
