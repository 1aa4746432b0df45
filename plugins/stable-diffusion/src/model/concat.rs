//! Image conditioning for UNets that take channels after the latent's (an inpainting
//! checkpoint: the mask and the masked image's latent, ldm's `c_concat`): kept as the host
//! set it, and joined to each denoiser call's latent so that the batching of
//! `model/batch.rs` repeats it with the latent, per image and per conditioning.
//!
//! As ldm's `hybrid` conditioning under k-diffusion's `CompVisDenoiser` (A1111): the UNet
//! gets `cat([x * c_in, c_concat])` — the latent scaled, the conditioning as given.
use std::cell::RefCell;

use anyhow::{bail, Result};
use tch::Tensor;

/// The image conditioning the host set (`Backend::set_concat`), for a UNet taking
/// `channels` of it.
pub(crate) struct Concat {
    channels: i64,
    set: RefCell<Option<Tensor>>,
}

impl Concat {
    pub fn new(channels: i64) -> Self {
        Self {
            channels,
            set: RefCell::new(None),
        }
    }

    /// Makes `concat` (`[B, channels, h, w]`) the conditioning of the following calls;
    /// `None` clears it. Refused in one line when the model takes none or the shape is
    /// wrong; the spatial size is checked against each call's latent.
    pub fn set(&self, concat: Option<&Tensor>) -> Result<()> {
        let Some(concat) = concat else {
            *self.set.borrow_mut() = None;
            return Ok(());
        };
        let size = concat.size();
        if self.channels == 0 {
            bail!("image conditioning ({size:?}) given to a model that takes none — only an inpainting checkpoint (9 input channels) takes a mask and masked image");
        }
        let fits = size.len() == 4 && size[1] == self.channels && !size.contains(&0);
        if !fits || !concat.is_floating_point() {
            bail!(
                "image conditioning has shape {size:?} ({:?}); an inpainting checkpoint takes a floating-point [batch, {}, height, width] (the mask, then the masked image's latent)",
                concat.kind(),
                self.channels
            );
        }
        *self.set.borrow_mut() = Some(concat.detach());
        Ok(())
    }

    /// `x` `[B, C, h, w]` with the conditioning's channels after its own (each image's
    /// conditioning, or the one given for all); `x` itself for a model that takes none.
    /// `checkpoint` names the model in the errors.
    pub fn join(&self, x: &Tensor, checkpoint: &str) -> Result<Tensor> {
        if self.channels == 0 {
            return Ok(x.shallow_clone());
        }
        let set = self.set.borrow();
        let Some(concat) = set.as_ref() else {
            bail!("{checkpoint}: an inpainting checkpoint needs an init image and a mask (image conditioning); none was given — use it for img2img inpainting or give it the txt2img conditioning");
        };
        let (xs, cs) = (x.size(), concat.size());
        if xs.len() != 4 || xs[2..] != cs[2..] || !(cs[0] == xs[0] || cs[0] == 1) {
            bail!(
                "image conditioning has shape {cs:?} but the latent is {xs:?} — set it for this pass's size and batch ({} or 1 images, {}×{} cells)",
                xs.first().copied().unwrap_or(0),
                xs.get(2).copied().unwrap_or(0),
                xs.get(3).copied().unwrap_or(0)
            );
        }
        let concat = concat
            .to_device(x.device())
            .to_kind(x.kind())
            .expand([xs[0], cs[1], cs[2], cs[3]], false);
        Ok(Tensor::f_cat(&[x, &concat], 1)?)
    }

    /// Splits joined rows into the latent and the conditioning (`None` for a model that
    /// takes none).
    pub fn split(&self, joined: &Tensor) -> (Tensor, Option<Tensor>) {
        match self.channels {
            0 => (joined.shallow_clone(), None),
            c => {
                let latent = joined.size()[1] - c;
                (
                    joined.narrow(1, 0, latent),
                    Some(joined.narrow(1, latent, c)),
                )
            }
        }
    }

    /// Forgets the conditioning (the UNet was released).
    pub fn clear(&self) {
        *self.set.borrow_mut() = None;
    }
}
