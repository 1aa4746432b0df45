//! TAESD / TAESDXL (madebyollin/taesd): a tiny VAE decoder, 8× up from the latent in three
//! nearest-neighbour steps, for previews that look like the final image at a small fraction
//! of the real VAE's cost. diffusers' `AutoencoderTiny` is the reference (`DecoderTiny`; the
//! test below compares with its output on random weights made by
//! `scripts/make_taesd_reference.py`).
//!
//! The layout (`nn.Sequential` indices of madebyollin's `taesd_decoder.safetensors`; diffusers
//! stores the same as `decoder.layers.{index - 1}`, its clamp living in `forward`):
//! 0 clamp `tanh(x / 3) * 3`, 1 conv 3×3, 2 ReLU, 3–5 blocks, 6 upsample ×2, 7 conv (no bias),
//! 8–10 blocks, 11 upsample, 12 conv, 13–15 blocks, 16 upsample, 17 conv, 18 block, 19 conv to
//! RGB; a block is `relu(conv(relu(conv(relu(conv(x))))) + skip(x))`. The output is in 0..1,
//! returned as -1..1 (diffusers' and ComfyUI's `decode`). Channel counts are read from the
//! weights (64 in the released files).
use std::collections::HashMap;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use host_api::tch::{Device, Kind, Tensor};

enum Layer {
    Clamp,
    Conv(Tensor, Option<Tensor>),
    Relu,
    Block([(Tensor, Tensor); 3], Option<Tensor>),
    Upsample,
}

#[derive(Clone, Copy)]
enum Slot {
    Clamp,
    Conv { bias: bool },
    Relu,
    Block,
    Upsample,
}

/// madebyollin's `Decoder()`, index by index.
const LAYOUT: [Slot; 20] = {
    use Slot::*;
    const C: Slot = Conv { bias: true };
    const N: Slot = Conv { bias: false };
    [
        Clamp, C, Relu, Block, Block, Block, Upsample, N, Block, Block, Block, Upsample, N, Block,
        Block, Block, Upsample, N, Block, C,
    ]
};

/// A loaded TAESD decoder.
pub struct Taesd {
    layers: Vec<Layer>,
}

impl Taesd {
    /// Reads a decoder file: madebyollin's layout (`1.weight`, `3.conv.0.weight`, …) or a
    /// diffusers `AutoencoderTiny` file (`decoder.layers.0.weight`, …; the encoder's tensors
    /// are skipped). Weights go to `device` as f32.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        let tensors = Tensor::read_safetensors(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("cannot read TAESD decoder {}", path.display()))?;
        let mut named = HashMap::new();
        for (name, t) in tensors {
            let key = match name.strip_prefix("decoder.layers.") {
                Some(rest) => match rest.split_once('.') {
                    Some((n, tail)) => match n.parse::<usize>() {
                        Ok(n) => format!("{}.{tail}", n + 1),
                        Err(_) => continue,
                    },
                    None => continue,
                },
                None if name.starts_with("encoder.") => continue,
                None => name,
            };
            named.insert(key, t.to_device(device).to_kind(Kind::Float));
        }
        Self::from_tensors(named).with_context(|| {
            format!(
                "{} is not a TAESD decoder (madebyollin/taesd's taesd_decoder.safetensors or diffusers' AutoencoderTiny)",
                path.display()
            )
        })
    }

    fn from_tensors(mut named: HashMap<String, Tensor>) -> Result<Self> {
        let mut take = |key: String, dims: usize| -> Result<Tensor> {
            match named.remove(&key) {
                Some(t) if t.dim() == dims => Ok(t),
                Some(t) => bail!("`{key}` has shape {:?}", t.size()),
                None => bail!("no `{key}`"),
            }
        };
        let mut layers = Vec::with_capacity(LAYOUT.len());
        for (i, slot) in LAYOUT.iter().enumerate() {
            layers.push(match *slot {
                Slot::Clamp => Layer::Clamp,
                Slot::Relu => Layer::Relu,
                Slot::Upsample => Layer::Upsample,
                Slot::Conv { bias } => Layer::Conv(
                    take(format!("{i}.weight"), 4)?,
                    match bias {
                        true => Some(take(format!("{i}.bias"), 1)?),
                        false => None,
                    },
                ),
                Slot::Block => {
                    let mut conv = |k: usize| -> Result<(Tensor, Tensor)> {
                        Ok((
                            take(format!("{i}.conv.{k}.weight"), 4)?,
                            take(format!("{i}.conv.{k}.bias"), 1)?,
                        ))
                    };
                    let convs = [conv(0)?, conv(2)?, conv(4)?];
                    let skip = take(format!("{i}.skip.weight"), 4).ok();
                    Layer::Block(convs, skip)
                }
            });
        }
        match &layers[1] {
            Layer::Conv(w, _) if w.size()[1] == 4 => {}
            Layer::Conv(w, _) => bail!("it takes {} latent channels, not 4", w.size()[1]),
            _ => unreachable!("index 1 is a convolution"),
        }
        Ok(Self { layers })
    }

    /// The device the weights live on.
    pub fn device(&self) -> Device {
        match &self.layers[1] {
            Layer::Conv(w, _) => w.device(),
            _ => Device::Cpu,
        }
    }

    /// Decodes `latent` (`[B, 4, h, w]`, scaled as the sampler runs it) to images
    /// `[B, 3, 8h, 8w]` in about -1..1.
    pub fn decode(&self, latent: &Tensor) -> Tensor {
        let mut x = latent.to_device(self.device()).to_kind(Kind::Float);
        for layer in &self.layers {
            x = match layer {
                Layer::Clamp => (x / 3.0).tanh() * 3.0,
                Layer::Conv(w, b) => conv(&x, w, b.as_ref()),
                Layer::Relu => x.relu(),
                Layer::Upsample => {
                    let s = x.size();
                    x.upsample_nearest2d([s[2] * 2, s[3] * 2], None, None)
                }
                Layer::Block([(w0, b0), (w1, b1), (w2, b2)], skip) => {
                    let h = conv(&x, w0, Some(b0)).relu();
                    let h = conv(&h, w1, Some(b1)).relu();
                    let h = conv(&h, w2, Some(b2));
                    let skip = match skip {
                        Some(s) => conv(&x, s, None),
                        None => x,
                    };
                    (h + skip).relu()
                }
            };
        }
        x * 2.0 - 1.0
    }
}

/// A stride-1 convolution padded to keep the size (3×3: 1, 1×1: 0).
fn conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
    let pad = w.size()[2] / 2;
    x.conv2d(w, b, [1, 1], [pad, pad], [1, 1], 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/data/live_preview")
            .join(name)
    }

    #[test]
    fn taesd_matches_diffusers_autoencoder_tiny() {
        let reference = Tensor::read_safetensors(data("taesd_reference.safetensors")).unwrap();
        let get = |k: &str| {
            reference
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, t)| t.shallow_clone())
                .unwrap()
        };
        let (latent, want) = (get("latent"), get("decoded"));
        for file in ["taesd_decoder.safetensors", "diffusers_taesd.safetensors"] {
            let taesd = Taesd::load(&data(file), Device::Cpu).unwrap();
            let got = host_api::tch::no_grad(|| taesd.decode(&latent));
            assert_eq!(got.size(), [1, 3, 64, 96], "{file}");
            let diff = f64::try_from((&got - &want).abs().max()).unwrap();
            assert!(diff < 1e-4, "{file}: max difference {diff}");
        }
        // Not flat: the comparison says something.
        assert!(f64::try_from(want.std(true)).unwrap() > 0.1);
    }

    #[test]
    fn another_file_is_refused_with_its_name() {
        let path = data("taesd_reference.safetensors");
        let e = Taesd::load(&path, Device::Cpu).err().unwrap();
        let text = format!("{e:#}");
        assert!(
            text.contains("taesd_reference.safetensors is not a TAESD decoder"),
            "{text}"
        );
        assert!(text.contains("no `1.weight`"), "{text}");
    }
}
