//! `hiresfix check`'s memory table: what one pass needs, from the checkpoint's headers alone
//! (nothing is loaded). The peak of a pass is
//!
//! ```text
//! runtime + weights + max(UNet call, VAE decode)
//! ```
//!
//! - weights: every parameter of the UNet, the text encoders and the VAE, at the run's dtype;
//! - UNet call: [`crate::unet::memory::working_bytes`] for the CFG batch (skip connections
//!   and the widest block's working set, traced block by block);
//! - VAE decode, full: [`crate::vae::memory::peak_bytes`] over the whole latent; tiled:
//!   [`crate::vae::memory::tiled_decode_bytes`] (one tile, the mid block's output over the
//!   whole latent up to 2048 px, the fp32 blend of the image);
//! - runtime: the process before any model (libtorch's code and thread buffers on the CPU;
//!   the CUDA context, cuBLAS and cuDNN workspaces on a GPU).
//!
//! `cargo bench -p hiresfix-sd --bench memory` measures the peak of real-size models against
//! this estimate (`BENCHMARKS.md`).
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Result;
use host_api::{MemoryEstimate, MemoryRequest};
use tch::Device;

use crate::checkpoint::Checkpoint;
use crate::convert::{UNET_PREFIX, VAE_PREFIX};
use crate::model::ModelConfig;
use crate::unet::memory::working_bytes;
pub use crate::vae::memory::TILED_LIVE_BUFFERS;
use crate::vae::memory::{
    free_bytes, peak_bytes, request_kind, tiled_decode_bytes, AttentionMemory,
};
use crate::vae::tiling::VaeTilingOptions;
use crate::vae::VaePass;

/// Resident memory of a CPU process with libtorch and the plugins loaded, before any model
/// (a whole `hiresfix generate` on the 17 MB tiny model peaks at 184 MiB).
pub const CPU_RUNTIME: u64 = 192 << 20;
/// CUDA context, cuBLAS and cuDNN workspaces (not measured here: no GPU was lent).
pub const CUDA_RUNTIME: u64 = 768 << 20;

/// What the estimate reads from a checkpoint's headers.
#[derive(Clone)]
struct Headers {
    config: ModelConfig,
    /// Parameters of the UNet, the VAE and the text encoders.
    parameters: u64,
}

/// The last checkpoint read, by path, length and modification time: `check` asks for many
/// sizes of the same file while it searches the largest that fits.
type Cached = (PathBuf, u64, Option<SystemTime>, Headers);
static LAST: Mutex<Option<Cached>> = Mutex::new(None);

fn headers(path: &Path) -> Result<Headers> {
    let meta = std::fs::metadata(path).ok();
    let (len, modified) = (
        meta.as_ref().map_or(0, |m| m.len()),
        meta.as_ref().and_then(|m| m.modified().ok()),
    );
    let mut last = LAST.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((p, l, m, headers)) = last.as_ref() {
        if p == path && *l == len && *m == modified && meta.as_ref().is_some_and(|m| m.is_file()) {
            return Ok(headers.clone());
        }
    }
    let ckpt = Checkpoint::open(path)?;
    let family = ckpt.family()?;
    let config = ModelConfig::infer(&ckpt, family)?;
    let mut parameters = ckpt.parameters_under(UNET_PREFIX) + ckpt.parameters_under(VAE_PREFIX);
    for spec in family.encoders {
        parameters += ckpt.parameters_under(spec.ldm_prefix);
    }
    let headers = Headers { config, parameters };
    *last = Some((path.to_path_buf(), len, modified, headers.clone()));
    Ok(headers)
}

pub fn estimate(request: &MemoryRequest) -> Result<MemoryEstimate> {
    let Headers { config, parameters } = headers(Path::new(request.checkpoint.as_str()))?;
    let (element, device) = request_kind(request)?;
    let attention = AttentionMemory::on(device);
    let f = config.vae.spatial_factor();
    let (h, w) = (i64::from(request.height) / f, i64::from(request.width) / f);
    let z = config.vae.z_channels;
    let unet = working_bytes(
        &config.unet,
        (h, w),
        u64::from(request.unet_batch.max(1)),
        element,
        attention,
    );
    let decode_full = peak_bytes(
        &config.vae,
        VaePass::Decode,
        &[1, z, h, w],
        element,
        attention,
    );
    let tiling =
        VaeTilingOptions::from_profile("on", request.vae_tile_size, request.vae_tile_overlap)?;
    let decode_tiled = tiled_decode_bytes(&config.vae, (h, w), &tiling, element, attention);
    Ok(MemoryEstimate {
        weights: parameters * element,
        runtime: match device {
            Device::Cpu => CPU_RUNTIME,
            _ => CUDA_RUNTIME,
        },
        unet,
        decode_full,
        decode_tiled,
        free: free_bytes(device).unwrap_or(0),
    })
}
