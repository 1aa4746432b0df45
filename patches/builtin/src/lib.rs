//! UNet patches: Kohya "Deep Shrink" (ComfyUI `PatchModelAddDownscale`, Forge "Kohya HRFix
//! Integrated"), FreeU v1/v2 (diffusers `enable_freeu`, ComfyUI `FreeU_V2`), and through the
//! attention hook (host-api 1.4) HyperTile (ComfyUI `HyperTile`) and ToMe (tomesd).
pub mod deep_shrink;
pub mod freeu;
pub mod hypertile;
mod options;
mod seeded;
pub mod tome;

pub use deep_shrink::DeepShrink;
pub use freeu::FreeU;
pub use hypertile::HyperTile;
pub use tome::ToMe;

host_api::export_plugin! {
    patches: [DeepShrink, FreeU, HyperTile, ToMe],
}
