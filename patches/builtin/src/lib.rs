//! UNet patches: Kohya "Deep Shrink" (ComfyUI `PatchModelAddDownscale`, Forge "Kohya HRFix
//! Integrated") and FreeU v1/v2 (diffusers `enable_freeu`, ComfyUI `FreeU_V2`).
pub mod deep_shrink;
pub mod freeu;
mod options;

pub use deep_shrink::DeepShrink;
pub use freeu::FreeU;

host_api::export_plugin! {
    patches: [DeepShrink, FreeU],
}
