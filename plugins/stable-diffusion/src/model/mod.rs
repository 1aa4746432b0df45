//! The assembled model of any family: the conditioner (text encoders), the UNet behind the
//! eps / v denoiser wrapper, the VAE, the noise schedule.
//!
//! [`SdModel`] and its small surface are here; each concern has its file: loading (`load.rs`:
//! `SdModel::load`, `load_with`, `set_vae`), the patcher (`patcher.rs`: LoRA set, UNet
//! patches, released parts), conditioning batching (`batch.rs`, beside the model), the forward
//! call (`forward.rs`: `denoise`, the UNet call), and the plain data of a model (`config.rs`,
//! `prediction.rs`, `modules.rs`). The files that implement `SdModel` use this one; this one
//! uses only the data-holding files beside it.
mod batch;
mod concat;
mod config;
mod forward;
mod load;
mod modules;
mod patcher;
mod prediction;

use std::cell::RefCell;
use std::path::PathBuf;

use anyhow::{bail, Result};
use tch::nn::VarStore;
use tch::Tensor;

pub use config::{describe_encoders, LoadOptions, ModelConfig, ModelInfo};
pub(crate) use modules::{unet_module, Modules};
pub use prediction::{probe_mean, stated_prediction, PredictionSource};

use crate::guard::guarded;
use crate::health;
use crate::lora::LoraSpec;
use crate::schedule::DiscreteSchedule;
use crate::text::conditioner::{Conditioner, Conditioning, PromptInput};
use crate::unet::UNetModel;
use crate::vae::runner::Vae;
use crate::vae::tiling::VaeTilingOptions;
use crate::vae::VaePass;
use batch::RowCache;
use concat::Concat;
use patcher::Patcher;

/// Where a loaded model's weights came from (for a VAE swap).
struct Origin {
    checkpoint: PathBuf,
    merged: bool,
    /// The merge recipe for messages ("a.safetensors:0.5 + b.safetensors:0.5").
    merge: Option<String>,
    /// The VAE override now in the model (`None`: the checkpoint's).
    vae: RefCell<Option<PathBuf>>,
}

pub struct SdModel {
    origin: Origin,
    conditioner: Conditioner,
    /// The LoRA set, the UNet patches and the released parts.
    patcher: Patcher,
    /// The last conditioning rows built for the UNet.
    rows: RowCache,
    /// The image conditioning of an inpainting UNet.
    concat: Concat,
    unet: UNetModel,
    vae: Vae,
    schedule: DiscreteSchedule,
    vs: VarStore,
    info: ModelInfo,
}

impl SdModel {
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn vae_tiling(&self) -> &VaeTilingOptions {
        self.vae.tiling()
    }

    pub fn set_vae_tiling(&mut self, options: VaeTilingOptions) -> Result<()> {
        self.vae.set_tiling(options)
    }

    /// Ascending model sigma table, one per training timestep.
    pub fn sigmas(&self) -> Vec<f64> {
        self.schedule.sigmas().to_vec()
    }

    pub fn schedule(&self) -> &DiscreteSchedule {
        &self.schedule
    }

    pub fn conditioner(&self) -> &Conditioner {
        &self.conditioner
    }

    /// Every parameter by its model key (shared with the modules: patching one in place, e.g.
    /// for LoRA, changes the model).
    pub fn var_store(&self) -> &VarStore {
        &self.vs
    }

    /// The first parameter under `prefix` (all with "") holding NaN or inf.
    pub fn nonfinite_weight(&self, prefix: &str) -> Option<String> {
        health::first_nonfinite(&self.vs.variables(), prefix)
    }

    /// Why a result holds NaN or inf: the first non-finite parameter under `prefix` (all with
    /// ""), blamed on the LoRA set or the merge that changed it before the checkpoint.
    pub fn nonfinite_cause(&self, prefix: &str) -> String {
        let bad = self.nonfinite_weight(prefix);
        self.cause_of(bad)
    }

    fn cause_of(&self, bad: Option<String>) -> String {
        let (loras, lora_changed) = self.patcher.blame(bad.as_deref());
        let applied = health::Applied {
            loras,
            lora_changed,
            merge: self.origin.merge.clone(),
        };
        health::cause_in(bad, self.info.kind, &applied)
    }

    /// Frees the parameters of `parts` ([`host_api::backend::release`] bits: text encoders,
    /// UNet, the VAE's encoder) — the host will not use them again (a one-shot run's last
    /// pass, then its final decodes, which then peak on the VAE decoder alone). With the UNet
    /// go the LoRA originals and the cached conditioning rows. A later call that needs a
    /// released part fails with a message.
    pub fn release(&self, parts: u32) {
        use host_api::backend::release::{UNET, VAE_ENCODER};
        self.patcher.release(&self.vs, self.info.family, parts);
        if parts & UNET != 0 {
            self.rows.clear();
            self.concat.clear();
        }
        if parts & VAE_ENCODER != 0 {
            self.vae.encoder_released();
        }
    }

    /// Makes `set` the LoRA set the model runs with (empty: the base weights, bit for bit).
    /// Returns warnings for the user.
    pub fn set_loras(&self, set: &[LoraSpec]) -> Result<Vec<String>> {
        self.patcher.set_loras(&self.vs, set)
    }

    /// Makes `specs` the textual-inversion embeddings prompts are read with; one state each.
    pub fn set_embeddings(
        &self,
        specs: &[host_api::EmbeddingSpec],
    ) -> Vec<host_api::EmbeddingState> {
        self.conditioner.set_embeddings(specs)
    }

    /// Makes `patches` the UNet patches every following UNet call runs with (empty: the plain
    /// UNet); `pass` is the sigma range of the pass they run in.
    pub fn set_patches(&self, patches: Vec<host_api::PatchBox>, pass: host_api::PassSigmas) {
        self.patcher.set_patches(patches, pass)
    }

    /// Makes `concat` (`[B or 1, concat_channels, h, w]`: an inpainting checkpoint's mask
    /// then masked-image latent) the image conditioning of every following denoiser call,
    /// concatenated after the scaled latent's channels (ldm's `c_concat`); `None` clears it.
    /// A model that takes none refuses one.
    pub fn set_concat(&self, concat: Option<&Tensor>) -> Result<()> {
        self.concat.set(concat)
    }

    /// The conditioning of one prompt (`<lora:…>` tags are removed, not applied here).
    pub fn encode(&self, input: &PromptInput<'_>) -> Result<Conditioning> {
        let text = host_api::backend::release::TEXT_ENCODERS;
        self.patcher.check_live(text, "encode a prompt")?;
        let cond = guarded("encoding the prompt", || {
            tch::no_grad(|| self.conditioner.encode(input))
        })?;
        let finite =
            health::is_finite(&cond.context) && cond.vector.as_ref().is_none_or(health::is_finite);
        if !finite {
            let vars = self.vs.variables();
            let bad = self
                .info
                .family
                .encoders
                .iter()
                .find_map(|e| health::first_nonfinite(&vars, e.ldm_prefix));
            bail!(
                "the text encoder produced NaN or inf for the prompt — {}",
                self.cause_of(bad)
            );
        }
        Ok(cond)
    }

    /// A positive prompt's conditioning at the family's default size; for tests and tools.
    pub fn encode_prompt(&self, prompt: &str, clip_skip: usize) -> Result<Conditioning> {
        let size = self.info.default_size;
        self.encode(&PromptInput {
            text: prompt,
            negative: false,
            clip_skip,
            width: size,
            height: size,
        })
    }

    /// Scaled latent → raw pixels, about [-1, 1], unclamped; in the latent's dtype. Tiled as
    /// [`Self::vae_tiling`] says; half precision that overflows is retried in fp32.
    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        self.check_latent(latent, self.info.latent_channels, "latent")?;
        self.vae.run(VaePass::Decode, latent)
    }

    /// Pixels `[B, 3, H, W]` in [-1, 1] → scaled latent (posterior mean), in the image's dtype.
    pub fn encode_image(&self, image: &Tensor) -> Result<Tensor> {
        let encoder = host_api::backend::release::VAE_ENCODER;
        self.patcher.check_live(encoder, "VAE-encode an image")?;
        let channels = self.info.config.vae.in_channels;
        self.check_latent(image, channels, "image")?;
        self.vae.run(VaePass::Encode, image)
    }

    /// `[B, channels, h, w]` floating point, else a clear error. Returns `B`.
    fn check_latent(&self, x: &Tensor, channels: i64, what: &str) -> Result<i64> {
        let size = x.size();
        if size.len() != 4 || size[1] != channels || !x.is_floating_point() || size.contains(&0) {
            bail!("{what} has shape {size:?} ({:?}); expected a floating-point [batch, {channels}, height, width]", x.kind());
        }
        Ok(size[0])
    }
}
