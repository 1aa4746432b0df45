//! The VAE-decode part of `check`'s memory table, shared by the flow backends: model-parts'
//! [`peak_bytes`] over the whole latent; tiled, the SD backend's formula for model-parts'
//! tiled decode — one tile with pooled GroupNorm statistics ([`TILED_LIVE_BUFFERS`] live
//! buffers), the mid block run over the whole latent and the fp32 accumulators of the blended
//! image.
use anyhow::Result;
use hiresfix_model_parts::vae::memory::{peak_bytes, AttentionMemory, LIVE_BUFFERS};
use hiresfix_model_parts::vae::tiling::VaeTilingOptions;
use hiresfix_model_parts::vae::{LatentScale, VaeConfig, VaePass};
use host_api::MemoryRequest;
use tch::Device;

/// Full-size live buffers of a tile decoded with pooled GroupNorm statistics (the SD
/// backend's measured figure for the same model-parts decode).
pub const TILED_LIVE_BUFFERS: u64 = 7;
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

/// Bytes of decoding the request's latent in one piece and in tiles.
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
    let tile = (tiling.tile_px / f).max(1);
    if tile >= h && tile >= w {
        return Ok((full, full));
    }
    let one = peak_bytes(
        vae,
        VaePass::Decode,
        &[1, z, tile.min(h), tile.min(w)],
        element,
        attention,
    );
    let pixels = u64::from(request.width) * u64::from(request.height);
    let widest = vae.ch * vae.ch_mult.iter().copied().max().unwrap_or(1);
    let mid = widest.max(0) as u64 * (h * w).max(0) as u64 * element * LIVE_BUFFERS;
    let tiled =
        one / LIVE_BUFFERS * TILED_LIVE_BUFFERS + mid + (vae.out_channels as u64 + 1) * pixels * 4;
    Ok((full, tiled))
}
