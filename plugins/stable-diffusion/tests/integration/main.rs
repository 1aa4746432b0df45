//! The backend's integration tests as one binary (each test binary links libtorch): one
//! module per area, sharing `common` (parity helpers) and the host's `files` helpers.
mod blame;
mod common;
#[path = "../../../../tests/integration/common/files.rs"]
mod files;

mod attention_patches;
mod family_parity;
mod fp8;
mod inpaint;
mod loading;
mod lora;
mod parity;
mod patches;
mod prompts;
mod real_size;
mod vae_tiling;
mod zero_copy;
