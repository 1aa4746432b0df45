//! Model parts both hiresfix backends link (the UNet one, `plugins/stable-diffusion`, and the
//! flow-transformer one, `plugins/flow`): reading weights from `.safetensors` files under the
//! model's own keys (`weights/`), the small layer builders (`layers`), numeric health and
//! libtorch-failure guards, the CLIP text encoders with A1111 prompt parsing and emphasis
//! (`text/`), and the KL autoencoder in its 4-channel (SD 1.x/2.x/XL) and 16-channel
//! (SD 3.x, Flux) forms (`vae/`), with the key renames of their foreign layouts (`convert/`),
//! and what LoRA support shares (`lora/`: reading files, the formats' deltas, per-pass keeping).
//! Nothing here knows a model family's list: backends pass what differs (prefixes, latent
//! scale and shift).
//!
//! A backend's way through: open files with `weights::safetensors::SafetensorsFile` (a
//! diffusers component's files: `weights::folder`), put them under model keys with
//! `Weights::add_file` (renames: `convert`), read configs from shapes (`VaeConfig::infer`,
//! `ClipConfig::infer`), build the modules on a `VarStore` and fill it with
//! `Weights::copy_into`; a separate VAE file or folder replaces the model's with
//! `vae::files::replace_vae`.

pub mod convert;
pub mod guard;
pub mod health;
pub mod layers;
pub mod lora;
pub mod text;
pub mod vae;
pub mod weights;
