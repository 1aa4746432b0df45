//! The UNet patches a model runs with (host-api `Patch` plugins such as Deep Shrink and FreeU),
//! called from the UNet's hook points with the call's sigma and the pass's sigma range.
use anyhow::{anyhow, Result};
use host_api::{HookCtx, PassSigmas, PatchBox};
use tch::Tensor;

use crate::unet::Hooks;

/// The patches of the current pass, in profile order.
#[derive(Default)]
pub struct PatchSet {
    patches: Vec<PatchBox>,
    pass: PassSigmas,
}

impl PatchSet {
    pub fn new(patches: Vec<PatchBox>, pass: PassSigmas) -> Self {
        Self { patches, pass }
    }

    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    /// The hooks of one UNet call at `sigma` of a UNet with `levels` resolution levels.
    pub fn at(&self, sigma: f64, levels: usize) -> Option<Hooked<'_>> {
        (!self.is_empty()).then_some(Hooked {
            set: self,
            sigma,
            levels: levels as u32,
        })
    }
}

pub struct Hooked<'a> {
    set: &'a PatchSet,
    sigma: f64,
    levels: u32,
}

impl Hooked<'_> {
    fn ctx(&self, block: usize, level: usize) -> HookCtx {
        HookCtx {
            block: block as u32,
            level: level as u32,
            levels: self.levels,
            sigma: self.sigma,
            pass_sigma_max: self.set.pass.max,
            pass_sigma_min: self.set.pass.min,
        }
    }
}

fn named(patch: &PatchBox) -> impl Fn(host_api::Error) -> anyhow::Error + '_ {
    move |e| anyhow!("patch `{}`: {e}", patch.name())
}

impl Hooks for Hooked<'_> {
    fn input(&self, block: usize, level: usize, after_skip: bool, h: Tensor) -> Result<Tensor> {
        let ctx = self.ctx(block, level);
        let mut h = h;
        for patch in &self.set.patches {
            h = match after_skip {
                false => patch.input_block(&ctx, &h),
                true => patch.input_block_after_skip(&ctx, &h),
            }
            .map_err(named(patch))?;
        }
        Ok(h)
    }

    fn output(
        &self,
        block: usize,
        level: usize,
        h: Tensor,
        skip: Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let ctx = self.ctx(block, level);
        let (mut h, mut skip) = (h, skip);
        for patch in &self.set.patches {
            (h, skip) = patch.output_block(&ctx, &h, &skip).map_err(named(patch))?;
        }
        Ok((h, skip))
    }
}
