//! Super-resolution models between passes (A1111's "R-ESRGAN 4x+", "4x-UltraSharp", ...): the
//! ESRGAN family as Spandrel loads it — RRDBNet in the original ESRGAN and the
//! Real-ESRGAN/BasicSR key layouts (scales 1, 2, 4, 8; any block count) and
//! SRVGGNetCompact. The architecture, scale, block count and widths come from the state
//! dict's keys and shapes, never from the file name.
pub use upscaler_files::arch;
pub mod compact;
pub use upscaler_files::probe;
pub mod rrdb;
pub mod tiles;

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use host_api::tch::{Device, Kind, Tensor};
use host_api::{Error, Result};

/// A model's weights by key.
pub type Weights = HashMap<String, Tensor>;

/// A 3×3 (or 1×1) convolution with bias, padding keeping the size.
pub struct Conv {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Conv {
    pub fn take(w: &mut Weights, prefix: &str) -> Result<Self> {
        let weight = w
            .remove(&format!("{prefix}.weight"))
            .ok_or_else(|| Error::new(format!("missing tensor {prefix}.weight")))?;
        if weight.dim() != 4 {
            return Err(Error::new(format!(
                "{prefix}.weight has shape {:?}, not a convolution's",
                weight.size()
            )));
        }
        let bias = w.remove(&format!("{prefix}.bias"));
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let pad = self.weight.size()[2] / 2;
        Ok(x.f_conv2d(
            &self.weight,
            self.bias.as_ref(),
            [1, 1],
            [pad, pad],
            [1, 1],
            1,
        )?)
    }

    pub fn in_channels(&self) -> i64 {
        self.weight.size()[1]
    }

    pub fn out_channels(&self) -> i64 {
        self.weight.size()[0]
    }

    fn to(&mut self, device: Device, kind: Kind) -> Result<()> {
        self.weight = self.weight.f_to_device(device)?.f_to_kind(kind)?;
        self.bias = match &self.bias {
            Some(b) => Some(b.f_to_device(device)?.f_to_kind(kind)?),
            None => None,
        };
        Ok(())
    }
}

pub use upscaler_files::arch::count;

/// LeakyReLU with slope 0.2, as both layouts use.
pub fn lrelu(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_maximum(&(x * 0.2))?)
}

/// A loaded super-resolution network.
pub enum Network {
    Rrdb(rrdb::Rrdb),
    Compact(compact::Compact),
}

impl Network {
    /// Detects the architecture from the keys and shapes (as Spandrel does; every shape
    /// checked first, [`arch::infer`]) and takes its weights; any key left over is an error
    /// (a file of another architecture).
    pub fn from_weights(mut w: Weights) -> Result<Self> {
        let shapes: arch::Shapes = w.iter().map(|(k, t)| (k.clone(), t.size())).collect();
        let net = match arch::infer(&shapes).map_err(Error::new)? {
            arch::Arch::Rrdb {
                unshuffle, scale, ..
            } => Network::Rrdb(rrdb::Rrdb::from_weights(&mut w, unshuffle, scale)?),
            arch::Arch::Compact { scale, .. } => {
                Network::Compact(compact::Compact::from_weights(&mut w, scale)?)
            }
        };
        if !w.is_empty() {
            let mut left: Vec<&String> = w.keys().collect();
            left.sort();
            return Err(Error::new(format!(
                "{} tensors this architecture does not use (e.g. {}): not a plain {}",
                left.len(),
                left[0],
                net.describe()
            )));
        }
        Ok(net)
    }

    pub fn scale(&self) -> i64 {
        match self {
            Network::Rrdb(n) => n.scale,
            Network::Compact(n) => n.scale,
        }
    }

    /// e.g. `RRDBNet (Real-ESRGAN layout), 4x, 23 blocks, 64 features`.
    pub fn describe(&self) -> String {
        match self {
            Network::Rrdb(n) => n.describe(),
            Network::Compact(n) => n.describe(),
        }
    }

    /// `[B, 3, H, W]` pixels in [0, 1] → `[B, 3, H·scale, W·scale]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Network::Rrdb(n) => n.forward(x),
            Network::Compact(n) => n.forward(x),
        }
    }

    pub fn to(&mut self, device: Device, kind: Kind) -> Result<()> {
        match self {
            Network::Rrdb(n) => n.convs_mut().try_for_each(|c| c.to(device, kind)),
            Network::Compact(n) => n.to(device, kind),
        }
    }
}

/// Reads a model file: `.safetensors`, or a `.pth`/`.pt` state dict through torch-pickle's
/// restricted reader (it executes nothing; a pickle naming anything but a tensor state dict's
/// globals is refused, and its header is checked for an ESRGAN-family architecture before any
/// tensor is read).
pub fn load(path: &Path) -> Result<Network> {
    let name = path.display();
    // Errors name the file by its name (the folder is the user's upscaler_dirs), cut short.
    let file = path
        .file_name()
        .map_or_else(|| name.to_string(), |n| n.to_string_lossy().into_owned());
    let shown = format!("`{}`", arch::cut(&file));
    let tensors = match probe::is_pickle(path) {
        true => {
            probe::arch_of(path).map_err(|e| Error::new(format!("{shown}: {e}")))?;
            torch_pickle::read_state_dict(path).map_err(|e| {
                Error::new(format!("{shown}: {}", probe::pickle_reason(&e)))
            })?
        }
        false => Tensor::read_safetensors(path).map_err(|e| {
            // tch's text repeats the path; the reason follows it.
            let text = e.to_string().replace(&name.to_string(), "");
            let reason = text
                .rsplit(": ")
                .next()
                .unwrap_or("")
                .split(['\n', '(', '{'])
                .next()
                .unwrap_or("")
                .trim();
            Error::new(format!(
                "{shown}: not a readable safetensors file ({}) — it is cut or damaged; download it again",
                arch::cut(reason)
            ))
        })?,
    };
    let weights: Weights = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.f_to_kind(Kind::Float)?)))
        .collect::<Result<_>>()
        .map_err(|e| Error::new(format!("{shown}: {e}")))?;
    Network::from_weights(weights).map_err(|e| Error::new(format!("{shown}: {e}")))
}

/// Loaded models by file, device and dtype, kept for the thread (tensors are not `Sync`):
/// every image and pass of a run reuses them.
type Cache = RefCell<HashMap<(PathBuf, String), Rc<Network>>>;

thread_local! {
    static CACHE: Cache = RefCell::new(HashMap::new());
}

/// The model at `path` on `device` in `kind`, loaded once.
pub fn cached(path: &Path, device: Device, kind: Kind) -> Result<Rc<Network>> {
    let key = (path.to_path_buf(), format!("{device:?}/{kind:?}"));
    if let Some(net) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
        return Ok(net);
    }
    let mut net = load(path)?;
    net.to(device, kind)
        .map_err(|e| Error::new(format!("`{}`: {e}", path.display())))?;
    let net = Rc::new(net);
    CACHE.with(|c| c.borrow_mut().insert(key, net.clone()));
    Ok(net)
}
