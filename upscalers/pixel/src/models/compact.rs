//! SRVGGNetCompact (Real-ESRGAN's realesr-general-x4v3, realesr-animevideov3): a plain stack
//! of 3×3 convs with PReLU, a last conv to `out · scale²` channels, pixel shuffle, plus the
//! nearest-upsampled input. Keys `body.{k}`: convs at even k, PReLU weights at odd k.
use host_api::tch::{Device, Kind, Tensor};
use host_api::{Error, Result};

use super::{Conv, Weights};

pub struct Compact {
    convs: Vec<Conv>,
    prelus: Vec<Tensor>,
    pub scale: i64,
}

impl Compact {
    /// Takes the weights of a file [`super::arch::infer`] checked, of scale `scale`.
    pub fn from_weights(w: &mut Weights, scale: i64) -> Result<Self> {
        let mut convs = Vec::new();
        let mut prelus = Vec::new();
        let mut k = 0;
        while w.contains_key(&format!("body.{k}.weight")) {
            convs.push(Conv::take(w, &format!("body.{k}"))?);
            match w.remove(&format!("body.{}.weight", k + 1)) {
                Some(p) if p.dim() == 1 => prelus.push(p),
                Some(p) => {
                    return Err(Error::new(format!(
                    "body.{}.weight has shape {:?}: SRVGGNetCompact alternates convs and PReLUs",
                    k + 1,
                    p.size()
                )))
                }
                None => break,
            }
            k += 2;
        }
        if convs.len() < 2 || prelus.len() != convs.len() - 1 {
            return Err(Error::new(
                "SRVGGNetCompact needs convs with a PReLU after each but the last",
            ));
        }
        Ok(Self {
            convs,
            prelus,
            scale,
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "SRVGGNetCompact, {}x, {}, {} features",
            self.scale,
            super::count(self.convs.len() - 2, "conv"),
            self.convs[0].out_channels()
        )
    }

    pub(super) fn to(&mut self, device: Device, kind: Kind) -> Result<()> {
        self.convs.iter_mut().try_for_each(|c| c.to(device, kind))?;
        for p in &mut self.prelus {
            *p = p.f_to_device(device)?.f_to_kind(kind)?;
        }
        Ok(())
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.shallow_clone();
        for (conv, prelu) in self.convs.iter().zip(&self.prelus) {
            h = conv.forward(&h)?.f_prelu(prelu)?;
        }
        let last = self
            .convs
            .last()
            .ok_or_else(|| Error::new("SRVGGNetCompact without convs"))?;
        let out = last.forward(&h)?.f_pixel_shuffle(self.scale)?;
        let s = x.size();
        let base = x.f_upsample_nearest2d([s[2] * self.scale, s[3] * self.scale], None, None)?;
        Ok(out + base)
    }
}
