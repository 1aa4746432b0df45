//! Live previews: while a pass samples, a cheap image of its current denoised prediction
//! (the prompt's, A1111's default `live_preview_content`) every N steps. The caller asks for
//! one through [`Observer::preview_wanted`] and receives it in [`Observer::preview`] (the
//! server's `/progress` and native stream, the command line's `--preview FILE`).
//!
//! Two methods, as ComfyUI's `latent_preview.get_previewer`: a TAESD decoder ([`taesd`])
//! when the folders of the profile's `vae_approx_dirs` hold the family's file
//! (`taesd_decoder.safetensors` for SD 1.x/2.x, `taesdxl_decoder.safetensors` for SDXL —
//! ComfyUI's `taesd_decoder_name`, A1111's `models/VAE-approx` names), else the latent-to-RGB
//! factors ([`latent_rgb`], one pixel per latent cell). A TAESD preview is at most
//! [`MAX_TAESD_SIDE`] px on its longer side (ComfyUI's `--preview-size` default): a larger
//! latent is area-averaged down first, so a preview costs the same at any image size.
use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use host_api::tch::{Device, Kind, Tensor};

use crate::observer::Observer;
use crate::png_pixels::Rgb8;

pub mod latent_rgb;
pub mod taesd;

use taesd::Taesd;

/// The longest side of a TAESD preview, px.
pub const MAX_TAESD_SIDE: i64 = 512;

/// The TAESD decoder file of a family (without `.safetensors`), as ComfyUI names it.
pub fn decoder_name(family: &str) -> Option<&'static str> {
    let f = family.to_ascii_lowercase();
    match f.as_str() {
        _ if f.starts_with("sdxl") => Some("taesdxl_decoder"),
        _ if f.starts_with("sd1") || f.starts_with("sd2") => Some("taesd_decoder"),
        _ => None,
    }
}

/// The family's TAESD decoder file in `dirs`, the first folder that has one.
pub fn find_decoder(dirs: &[PathBuf], family: &str) -> Option<PathBuf> {
    let name = format!("{}.safetensors", decoder_name(family)?);
    dirs.iter().map(|d| d.join(&name)).find(|p| p.is_file())
}

/// The profile's `vae_approx_dirs`, relative ones against the profile's folder.
pub fn dirs(listed: &[PathBuf], base_dir: &Path) -> Vec<PathBuf> {
    listed
        .iter()
        .map(|d| match d.is_absolute() {
            true => d.clone(),
            false => base_dir.join(d),
        })
        .collect()
}

/// The previews of one pass: its model's family and where a TAESD decoder may be; the
/// decoder is looked for and loaded at the first preview wanted (never when none is).
pub struct PassPreview<'a> {
    family: &'a str,
    dirs: &'a [PathBuf],
    taesd: OnceCell<Option<Taesd>>,
}

impl<'a> PassPreview<'a> {
    pub fn new(family: &'a str, dirs: &'a [PathBuf]) -> Self {
        Self {
            family,
            dirs,
            taesd: OnceCell::new(),
        }
    }

    fn taesd(&self, device: Device) -> Option<&Taesd> {
        self.taesd
            .get_or_init(|| {
                let path = find_decoder(self.dirs, self.family)?;
                match Taesd::load(&path, device) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        log::warn!("{e:#}; live previews use the latent-to-RGB factors instead");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// The preview of the first image of `latent` (`[B, C, h, w]`, scaled as the sampler runs
    /// it); `None` for a family with neither a decoder nor factors.
    pub fn image(&self, latent: &Tensor) -> Option<Rgb8> {
        let latent = latent.narrow(0, 0, 1);
        let rgb = match self.taesd(latent.device()) {
            Some(t) if latent.size()[1] == 4 => t.decode(&fit(&latent)).squeeze_dim(0),
            _ => latent_rgb::latent_to_rgb(&latent, latent_rgb::factors(self.family)?)?,
        };
        to_rgb8(&rgb)
    }

    /// After step `step`: the preview of `denoised` when the observer wants one then.
    pub fn offer(&self, observer: &dyn Observer, step: usize, denoised: Option<&Tensor>) {
        let Some(denoised) = denoised else {
            return;
        };
        if !observer.preview_wanted(step) {
            return;
        }
        if let Some(image) = host_api::tch::no_grad(|| self.image(denoised)) {
            observer.preview(&image);
        }
    }
}

/// `latent` area-averaged so that TAESD's 8× output fits [`MAX_TAESD_SIDE`].
fn fit(latent: &Tensor) -> Tensor {
    let s = latent.size();
    let (h, w) = (s[2], s[3]);
    let longest = 8 * h.max(w);
    if longest <= MAX_TAESD_SIDE {
        return latent.shallow_clone();
    }
    let k = (longest + MAX_TAESD_SIDE - 1) / MAX_TAESD_SIDE;
    let size = [(h + k - 1) / k, (w + k - 1) / k];
    latent.to_kind(Kind::Float).adaptive_avg_pool2d(size)
}

/// A preview as a PNG without text chunks (what `/progress`, the native stream and
/// `--preview` hand on).
pub fn png(image: &Rgb8) -> anyhow::Result<Vec<u8>> {
    crate::output::encode_png(image.width, image.height, &image.pixels, "", "", None)
}

/// `[3, h, w]` in -1..1 to RGB8 as ComfyUI's `preview_to_image`: clamped, `(x + 1) * 127.5`,
/// rounded.
pub fn to_rgb8(rgb: &Tensor) -> Option<Rgb8> {
    let size = rgb.size();
    let [3, h, w] = size.as_slice() else {
        return None;
    };
    let bytes = ((rgb
        .to_device(Device::Cpu)
        .to_kind(Kind::Float)
        .clamp(-1.0, 1.0)
        + 1.0)
        * 127.5)
        .round()
        .to_kind(Kind::Uint8)
        .permute([1, 2, 0])
        .contiguous();
    Some(Rgb8 {
        width: *w as u32,
        height: *h as u32,
        pixels: Vec::<u8>::try_from(bytes.flatten(0, -1)).ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/live_preview")
    }

    #[test]
    fn latent_to_rgb_without_a_decoder_one_pixel_per_cell() {
        let latent =
            Tensor::from_slice(&[0.0f32, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]).view([1, 4, 1, 2]);
        let image = PassPreview::new("sd1", &[]).image(&latent).unwrap();
        assert_eq!((image.width, image.height), (2, 1));
        // ComfyUI's rounding of (x + 1) * 127.5: zeros → 128; channel 3 of SD15 → -0.2120 …
        let px = |v: f64| ((v + 1.0) * 127.5).round() as u8;
        assert_eq!(
            image.pixels,
            [128, 128, 128, px(-0.2120), px(-0.2616), px(-0.7177)]
        );
        assert!(PassPreview::new("sd3", &[]).image(&latent).is_none());
    }

    #[test]
    fn the_familys_taesd_decoder_in_the_folders_is_used_and_capped_in_size() {
        let dirs = [PathBuf::from("/nonexistent"), data()];
        assert_eq!(
            find_decoder(&dirs, "sd1"),
            Some(data().join("taesd_decoder.safetensors"))
        );
        // No taesdxl_decoder there: SDXL falls back to its factors.
        assert_eq!(find_decoder(&dirs, "sdxl"), None);
        let latent = Tensor::randn([2, 4, 8, 12], (Kind::Float, Device::Cpu));
        let image = PassPreview::new("sd1", &dirs).image(&latent).unwrap();
        assert_eq!((image.width, image.height), (96, 64));
        // 128 × 96 cells would be 1024 × 768 px: averaged to 64 × 48 cells, 512 × 384 px.
        let big = Tensor::randn([1, 4, 96, 128], (Kind::Float, Device::Cpu));
        let image = PassPreview::new("sd1", &dirs).image(&big).unwrap();
        assert_eq!((image.width, image.height), (512, 384));
        let image = PassPreview::new("sdxl", &dirs).image(&latent).unwrap();
        assert_eq!((image.width, image.height), (12, 8));
    }
}
