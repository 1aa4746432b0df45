//! The patcher, in the spirit of ComfyUI's `ModelPatcher`: what is done to a loaded model's
//! weights after loading — the LoRA set patched into them in place, the UNet patches of the
//! current pass, and the parts released for the run's last steps.
use std::cell::{Cell, Ref, RefCell};

use anyhow::{bail, Result};
use tch::nn::VarStore;

use super::modules::decoder_prefixes;
use crate::families::Family;
use crate::guard::guarded;
use crate::lora::{LoraSpec, LoraState};
use crate::patches::PatchSet;

pub(crate) struct Patcher {
    lora: RefCell<LoraState>,
    /// The UNet patches of the current pass.
    patches: RefCell<PatchSet>,
    /// The parts freed by [`Self::release`] (`host_api::backend::release` bits).
    released: Cell<u32>,
}

impl Patcher {
    /// No LoRA beyond `lora`'s, no patches, nothing released.
    pub fn new(lora: LoraState) -> Self {
        Self {
            lora: RefCell::new(lora),
            patches: RefCell::new(PatchSet::default()),
            released: Cell::new(0),
        }
    }

    /// Frees the parameters of `parts` ([`host_api::backend::release`] bits) in `vs`, the
    /// variables of a model of `family`; with the UNet go the LoRA originals.
    pub fn release(&self, vs: &VarStore, family: &Family, parts: u32) {
        use host_api::backend::release::{TEXT_ENCODERS, UNET, VAE_ENCODER};
        let vae = crate::convert::VAE_PREFIX;
        let decoder = decoder_prefixes();
        let text: Vec<&str> = family.encoders.iter().map(|e| e.ldm_prefix).collect();
        let freed = |name: &str| {
            let is_text = text.iter().any(|prefix| name.starts_with(prefix));
            let is_vae = name.starts_with(vae);
            let is_decoder = decoder
                .iter()
                .any(|prefix| name.starts_with(prefix.as_str()));
            (parts & TEXT_ENCODERS != 0 && is_text)
                || (parts & VAE_ENCODER != 0 && is_vae && !is_decoder)
                || (parts & UNET != 0 && !is_text && !is_vae)
        };
        let mut vars: Vec<_> = vs
            .variables()
            .into_iter()
            .filter(|(name, _)| freed(name))
            .collect();
        // A parameter viewing the checkpoint file (zero-copy loading) frees no memory of its
        // own: its pages are handed back instead.
        crate::checkpoint::mapped::drop_mapped_pages(vars.iter().map(|(_, v)| v));
        tch::no_grad(|| {
            for (_, var) in &mut vars {
                // Every module holds this same tensor: the storage goes for all of them.
                let _ = var.set_();
            }
        });
        if parts & UNET != 0 {
            self.lora.borrow_mut().forget();
        }
        self.released.set(self.released.get() | parts);
    }

    /// The parts released so far.
    pub fn released(&self) -> u32 {
        self.released.get()
    }

    /// An error when any of `parts` was released.
    pub fn check_live(&self, parts: u32, what: &str) -> Result<()> {
        match self.released.get() & parts {
            0 => Ok(()),
            _ => bail!("cannot {what}: that part of this model was freed for the run's last steps"),
        }
    }

    /// Makes `set` the LoRA set the weights in `vs` hold (empty: the base weights, bit for
    /// bit). Returns warnings for the user.
    pub fn set_loras(&self, vs: &VarStore, set: &[LoraSpec]) -> Result<Vec<String>> {
        use host_api::backend::release::{TEXT_ENCODERS, UNET};
        self.check_live(UNET, "apply LoRA")?;
        if set != self.lora.borrow().current() {
            // Restoring or adding touches the text encoders' weights too.
            self.check_live(TEXT_ENCODERS, "change the LoRA set")?;
        }
        let vars = vs.variables();
        guarded("applying LoRA", || self.lora.borrow_mut().apply(&vars, set))
    }

    /// The LoRA set for blame: its description, and whether it changed the weight `bad`.
    pub fn blame(&self, bad: Option<&str>) -> (Option<String>, bool) {
        let lora = self.lora.borrow();
        (lora.describe(), bad.is_some_and(|k| lora.changed(k)))
    }

    /// Makes `patches` the UNet patches of every following UNet call; `pass` is the sigma
    /// range of the pass they run in.
    pub fn set_patches(&self, patches: Vec<host_api::PatchBox>, pass: host_api::PassSigmas) {
        *self.patches.borrow_mut() = PatchSet::new(patches, pass);
    }

    /// The UNet patches of the current pass.
    pub fn patches(&self) -> Ref<'_, PatchSet> {
        self.patches.borrow()
    }
}
