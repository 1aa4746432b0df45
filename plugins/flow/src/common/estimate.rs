//! The parts of `check`'s memory table shared by the flow backends: parameters with published
//! sizes for missing parts, the runtime, and the VAE decode — model-parts' [`peak_bytes`]
//! over the whole latent and [`tiled_decode_bytes`] in tiles, as for the SD backend.
use anyhow::Result;
use hiresfix_model_parts::vae::memory::{
    free_bytes, peak_bytes, tiled_decode_bytes, AttentionMemory,
};
use hiresfix_model_parts::vae::tiling::VaeTilingOptions;
use hiresfix_model_parts::vae::{LatentScale, VaeConfig, VaePass};
use host_api::{MemoryEstimate, MemoryRequest};
use tch::Device;

use crate::t5::T5Placement;

/// Resident memory of a CPU process with libtorch and the plugins loaded, before any model.
pub const CPU_RUNTIME: u64 = 192 << 20;
/// CUDA context, cuBLAS and cuDNN workspaces (not measured: no GPU was lent).
pub const CUDA_RUNTIME: u64 = 768 << 20;

/// The parameters a run holds: the transformer's, and each other part's as `found` (0: the
/// checkpoint lacks it, the profile gives it) or else at its `published` size.
pub fn parameters(transformer: u64, found: &[u64], published: &[u64]) -> u64 {
    let others = found.iter().zip(published);
    transformer
        + others
            .map(|(&f, &p)| if f == 0 { p } else { f })
            .sum::<u64>()
}

/// [`parameters`] on the run's `device`: with the request's `t5 = "cpu"` on another device,
/// T5 (`found[t5]`, `published[t5]`) is left out — its weights are in system memory, not on
/// the device the table is about.
pub fn device_parameters<const N: usize>(
    transformer: u64,
    (mut found, mut published): ([u64; N], [u64; N]),
    t5: usize,
    request: &MemoryRequest,
    device: Device,
) -> Result<u64> {
    if T5Placement::from_options(&request.options)?.device(device) != device {
        (found[t5], published[t5]) = (0, 0);
    }
    Ok(parameters(transformer, &found, &published))
}

/// A 16-channel VAE with `scale` (SD3's, Flux's) where the checkpoint has none.
pub fn vae16(scale: LatentScale) -> VaeConfig {
    VaeConfig {
        z_channels: 16,
        embed_dim: 16,
        scaling_factor: scale.scaling,
        shift_factor: scale.shift,
        quant_conv: false,
        ..VaeConfig::default()
    }
}

/// The runtime's own memory on `device`.
pub fn runtime(device: Device) -> u64 {
    match device {
        Device::Cpu => CPU_RUNTIME,
        _ => CUDA_RUNTIME,
    }
}

/// Bytes of decoding the request's latent in one piece and in tiles (model-parts'
/// `tiled_decode_bytes`, as for the SD backend).
pub fn decode_bytes(
    vae: &VaeConfig,
    request: &MemoryRequest,
    element: u64,
    device: Device,
) -> Result<(u64, u64)> {
    let f = vae.spatial_factor();
    let (h, w) = (i64::from(request.height) / f, i64::from(request.width) / f);
    let attention = AttentionMemory::on(device);
    let z = vae.z_channels;
    let full = peak_bytes(vae, VaePass::Decode, &[1, z, h, w], element, attention);
    let tiling =
        VaeTilingOptions::from_profile("on", request.vae_tile_size, request.vae_tile_overlap)?;
    let tiled = tiled_decode_bytes(vae, (h, w), &tiling, element, attention);
    Ok((full, tiled))
}

/// One transformer call of a flow backend: its width, its patch side in latent cells, the
/// text tokens beside the image's, and the live `tokens × width` buffers at its peak.
pub struct Call {
    pub width: u64,
    pub patch: i64,
    pub text_tokens: u64,
    pub token_buffers: u64,
}

/// The memory table's row for `request`: `weights` parameters on the device, `call` per
/// latent of the CFG batch over the request's image tokens, and `vae`'s decode.
pub fn assemble(
    request: &MemoryRequest,
    (element, device): (u64, Device),
    weights: u64,
    vae: &VaeConfig,
    call: Call,
) -> Result<MemoryEstimate> {
    let f = vae.spatial_factor();
    let (h, w) = (i64::from(request.height) / f, i64::from(request.width) / f);
    let patch = call.patch.max(1);
    // An odd side runs padded to whole patches (`denoise::on_patches`).
    let image_tokens = ((h + patch - 1) / patch * ((w + patch - 1) / patch)).max(0) as u64;
    let batch = u64::from(request.unet_batch.max(1));
    let tokens = image_tokens + call.text_tokens;
    let (decode_full, decode_tiled) = decode_bytes(vae, request, element, device)?;
    Ok(MemoryEstimate {
        weights: weights * element,
        runtime: runtime(device),
        unet: call.token_buffers * batch * tokens * call.width * element,
        decode_full,
        decode_tiled,
        free: free_bytes(device).unwrap_or(0),
    })
}
