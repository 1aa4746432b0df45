//! How much memory a full (untiled) VAE pass needs, and how much the device has free: the
//! two numbers `vae_tiling = "auto"` compares. Estimates are pure functions of the config
//! and the image size, so they can be checked with numbers.
use tch::Device;

use crate::vae::tiling::VaeTilingOptions;
use crate::vae::{VaeConfig, VaePass};

/// Live full-size activations at the peak, in units of the largest one. Measured: an
/// upsample conv holds its input, the nearest-upsampled copy and its output; a ResnetBlock
/// its input, the GroupNorm→SiLU output and the conv output. 4 leaves room for the
/// allocator (`cargo bench -p hiresfix-sd --bench vae_tiling` prints estimate vs peak RSS).
pub const LIVE_BUFFERS: u64 = 4;

/// Full-size live buffers of a tile decoded with pooled GroupNorm statistics, against
/// [`LIVE_BUFFERS`] for a plain decode: the normalisation with given statistics holds the
/// input, the centred and the scaled copies beside the conv buffers (measured: 1685 MiB for
/// 512 px tiles of a 1024 px SD decode, against about 900 MiB for one plain 512 px decode).
pub const TILED_LIVE_BUFFERS: u64 = 7;

/// Whether the mid-block attention materialises its `(h·w)²` score matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionMemory {
    /// Flash / memory-efficient kernels: scores are computed block by block.
    Efficient,
    /// The math fallback: scores, their softmax and temporaries (2.3 `(h·w)²` tensors
    /// measured on CPU).
    Materialized,
}

impl AttentionMemory {
    /// libtorch ≥ 2.2 runs `scaled_dot_product_attention` on contiguous inputs (as
    /// `vae::AttnBlock` passes them) with a flash kernel on CPU (1 GiB of scores at 128×128
    /// costs 37 MiB measured) and with flash / memory-efficient kernels on CUDA for fp32,
    /// fp16 and bf16; other backends may fall back to the math path.
    pub fn on(device: Device) -> Self {
        match device {
            Device::Cpu | Device::Cuda(_) => Self::Efficient,
            _ => Self::Materialized,
        }
    }
}

/// The largest `channels × pixels` present at any level of a VAE pass over an image of
/// `pixels` pixels: level `i` works at `pixels / 4^i` on its own width and on the width of
/// the neighbouring level that feeds it (the upsampled input of a decoder level, the
/// previous level's output in the encoder), so for SD the peak is 256 channels at full size.
fn peak_activation_elements(cfg: &VaeConfig, pixels: u64, pass: VaePass) -> u64 {
    let levels = cfg.ch_mult.len();
    (0..levels)
        .map(|i| {
            let feeder = match pass {
                VaePass::Decode => (i + 1).min(levels - 1),
                VaePass::Encode => i.saturating_sub(1),
            };
            let width = (cfg.ch * cfg.ch_mult[i].max(cfg.ch_mult[feeder])).max(cfg.ch);
            width.max(0) as u64 * (pixels >> (2 * i))
        })
        .max()
        .unwrap_or(0)
}

/// The mid-block attention's score matrices over `tokens` latent cells, when materialised.
fn attention_bytes(tokens: u64, element_bytes: u64, attention: AttentionMemory) -> u64 {
    match attention {
        AttentionMemory::Efficient => 0,
        AttentionMemory::Materialized => 3 * tokens.saturating_mul(tokens) * element_bytes,
    }
}

/// Working memory in bytes, beyond the weights, of `pass` over a whole `[B, C, H, W]`
/// input (latent for decode, image for encode) with `element_bytes` per value.
pub fn peak_bytes(
    cfg: &VaeConfig,
    pass: VaePass,
    input_size: &[i64],
    element_bytes: u64,
    attention: AttentionMemory,
) -> u64 {
    let f = cfg.spatial_factor();
    let (h, w) = pass.latent_size(input_size, f);
    let batch = input_size.first().map_or(0, |b| (*b).max(0) as u64);
    let tokens = h.max(0) as u64 * w.max(0) as u64;
    let pixels = tokens * (f * f) as u64;
    let activations = peak_activation_elements(cfg, pixels, pass) * element_bytes * LIVE_BUFFERS;
    batch.saturating_mul(activations + attention_bytes(tokens, element_bytes, attention))
}

/// Working memory in bytes, beyond the weights, of a tiled decode (`tiling`'s tiles) of a
/// `[1, z, h, w]` latent: one tile with pooled GroupNorm statistics; the whole latent's
/// mid-block output while the mid block runs whole (up to `tiling.whole_mid_cells`), else
/// the latent's `decode_in` copy; and the fp32 blend of the image (the weighted sum, the
/// weights and their quotient). A latent that is one tile decodes in one piece: `peak_bytes`.
pub fn tiled_decode_bytes(
    cfg: &VaeConfig,
    (h, w): (i64, i64),
    tiling: &VaeTilingOptions,
    element_bytes: u64,
    attention: AttentionMemory,
) -> u64 {
    let f = cfg.spatial_factor();
    let tile = (tiling.tile_px / f).max(1);
    let z = cfg.z_channels;
    if tile >= h && tile >= w {
        return peak_bytes(
            cfg,
            VaePass::Decode,
            &[1, z, h, w],
            element_bytes,
            attention,
        );
    }
    let one_tile = peak_bytes(
        cfg,
        VaePass::Decode,
        &[1, z, tile.min(h), tile.min(w)],
        element_bytes,
        attention,
    ) / LIVE_BUFFERS
        * TILED_LIVE_BUFFERS;
    let cells = (h * w).max(0) as u64;
    let tileable = match h * w > tiling.whole_mid_cells {
        true => z.max(0) as u64 * cells * element_bytes,
        false => {
            let widest = cfg.ch * cfg.ch_mult.iter().copied().max().unwrap_or(1);
            widest.max(0) as u64 * cells * element_bytes * LIVE_BUFFERS
        }
    };
    let pixels = cells * (f * f) as u64;
    let blend = (2 * cfg.out_channels.max(0) as u64 + 1) * pixels * 4;
    one_tile + tileable + blend
}

/// Free memory on `device` in bytes, `None` when it cannot be read. CPU: `MemAvailable`
/// from `/proc/meminfo`. CUDA: `cudaMemGetInfo` from the CUDA runtime libtorch already
/// loaded; memory cached by libtorch's allocator counts as used, so this errs towards tiling.
pub fn free_bytes(device: Device) -> Option<u64> {
    match device {
        Device::Cpu => std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|text| parse_mem_available(&text)),
        Device::Cuda(index) => cuda::free_bytes(index),
        _ => None,
    }
}

/// `MemAvailable` (kB in the file) in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemAvailable:")?;
        let kib: u64 = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
        kib.checked_mul(1024)
    })
}

/// `cudaMemGetInfo` through the CUDA runtime (tch exposes no memory query).
mod cuda {
    use std::os::raw::c_int;

    /// Sonames of the runtimes PyTorch wheels ship, newest first.
    const RUNTIMES: [&str; 4] = [
        "libcudart.so.13",
        "libcudart.so.12",
        "libcudart.so.11.0",
        "libcudart.so",
    ];

    type GetDevice = unsafe extern "C" fn(*mut c_int) -> c_int;
    type SetDevice = unsafe extern "C" fn(c_int) -> c_int;
    type MemGetInfo = unsafe extern "C" fn(*mut usize, *mut usize) -> c_int;

    pub fn free_bytes(index: usize) -> Option<u64> {
        let index = c_int::try_from(index).ok()?;
        // SAFETY: loading the CUDA runtime runs no user code beyond its initialisers, and the
        // three symbols have these C signatures in every CUDA runtime since 2.0.
        unsafe {
            let lib = RUNTIMES
                .iter()
                .find_map(|name| libloading::Library::new(name).ok())?;
            let get_device = lib.get::<GetDevice>(b"cudaGetDevice\0").ok()?;
            let set_device = lib.get::<SetDevice>(b"cudaSetDevice\0").ok()?;
            let mem_get_info = lib.get::<MemGetInfo>(b"cudaMemGetInfo\0").ok()?;
            let mut previous: c_int = 0;
            if get_device(&mut previous) != 0 || set_device(index) != 0 {
                return None;
            }
            let (mut free, mut total) = (0usize, 0usize);
            let status = mem_get_info(&mut free, &mut total);
            set_device(previous);
            (status == 0).then_some(free as u64)
        }
    }
}

/// What a `MemoryRequest` runs in: bytes per element of its dtype and its device (the part of
/// every backend's estimate that reads the request).
pub fn request_kind(request: &host_api::MemoryRequest) -> anyhow::Result<(u64, tch::Device)> {
    let element: u64 = match request.dtype.as_str() {
        "fp32" => 4,
        "fp16" | "bf16" => 2,
        other => anyhow::bail!("unknown dtype `{other}` (fp32, fp16 or bf16)"),
    };
    let device = host_api::backend::parse_device(request.device.as_str())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((element, device))
}
