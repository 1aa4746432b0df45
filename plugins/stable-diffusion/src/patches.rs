//! The UNet patches a model runs with (host-api `Patch` plugins such as Deep Shrink and FreeU),
//! called from the UNet's hook points with the call's sigma and the pass's sigma range.
use anyhow::{anyhow, Result};
use host_api::{AttentionCtx, AttentionFn, HookCtx, PassSigmas, PatchBox};
use tch::Tensor;

use crate::unet::{AttentionAt, Hooks};

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

/// `patches[0]`'s attention hook around `patches[1]`'s … around `attention`: the first patch
/// in profile order is the outermost.
fn wrap(
    patches: &[&PatchBox],
    ctx: &AttentionCtx,
    x: &Tensor,
    normed: &Tensor,
    attention: &dyn Fn(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let Some((patch, inner)) = patches.split_first() else {
        return attention(normed);
    };
    let run = |t: &Tensor| {
        wrap(inner, ctx, x, t, attention).map_err(|e| host_api::Error(format!("{e:#}")))
    };
    patch
        .attention(ctx, x, normed, &AttentionFn::new(&run))
        .map_err(named(patch))
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

    fn wraps_attention(&self) -> bool {
        self.set.patches.iter().any(PatchBox::has_attention)
    }

    fn attention(
        &self,
        at: &AttentionAt,
        x: &Tensor,
        normed: Tensor,
        attention: &dyn Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let ctx = AttentionCtx {
            hook: self.ctx(at.block as usize, at.level as usize),
            part: at.part,
            transformer: at.transformer,
            height: at.height,
            width: at.width,
            latent_height: at.latent_height,
            latent_width: at.latent_width,
            model_channels: at.model_channels,
        };
        let wrapping: Vec<&PatchBox> = self
            .set
            .patches
            .iter()
            .filter(|p| p.has_attention())
            .collect();
        wrap(&wrapping, &ctx, x, &normed, attention)
    }
}
