//! Running the VAE for the model: in one piece or tiled (by the tiling options and, in
//! `auto`, a memory estimate against free memory), and retried in fp32 when half precision
//! overflows.
use std::cell::OnceCell;
use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::memory::{self, AttentionMemory};
use super::tiling::{self, VaeTilingMode, VaeTilingOptions};
use super::{AutoencoderKL, VaePass};
use crate::convert::VAE_PREFIX;
use crate::guard::{guarded, is_out_of_memory};
use crate::health;

/// The model's VAE and how to run it.
pub struct Vae {
    model: AutoencoderKL,
    /// The model's VAE parameters by key (shared storage), for the fp32 copy.
    vars: HashMap<String, Tensor>,
    /// An fp32 copy of the VAE (its parameters and the module on them), made the first time
    /// half precision decodes to NaN or inf.
    fp32: OnceCell<(VarStore, AutoencoderKL)>,
    tiling: VaeTilingOptions,
    device: Device,
    kind: Kind,
}

impl Vae {
    /// `vs` holds the model's parameters (the VAE's under `first_stage_model.`).
    pub fn new(
        model: AutoencoderKL,
        vs: &VarStore,
        tiling: VaeTilingOptions,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        tiling.validate()?;
        let vars = vs
            .variables()
            .into_iter()
            .filter(|(k, _)| k.starts_with(VAE_PREFIX))
            .collect();
        Ok(Self {
            model,
            vars,
            fp32: OnceCell::new(),
            tiling,
            device,
            kind,
        })
    }

    pub fn model(&self) -> &AutoencoderKL {
        &self.model
    }

    pub fn tiling(&self) -> &VaeTilingOptions {
        &self.tiling
    }

    pub fn set_tiling(&mut self, options: VaeTilingOptions) -> Result<()> {
        options.validate()?;
        self.tiling = options;
        Ok(())
    }

    /// Scaled latent or pixels through `pass`, in the input's dtype.
    pub fn run(&self, pass: VaePass, input: &Tensor) -> Result<Tensor> {
        self.run_vae_planned(pass, input)
    }

    /// In one piece or tiled, by the tiling mode and, in `auto`, the full pass's memory
    /// estimate against the device's free memory; in `auto` a full pass that runs out of
    /// memory is retried tiled.
    fn run_vae_planned(&self, pass: VaePass, input: &Tensor) -> Result<Tensor> {
        let options = self.tiling;
        let full = |vae: &AutoencoderKL, x: &Tensor| vae.run(pass, x);
        let tiled = |vae: &AutoencoderKL, x: &Tensor| tiling::run_tiled(vae, pass, x, &options);
        let what = pass.verb();
        match options.mode {
            VaeTilingMode::Off => return self.run_vae(what, input, full),
            VaeTilingMode::On => return self.run_vae(what, input, tiled),
            VaeTilingMode::Auto => {}
        }
        let estimate = memory::peak_bytes(
            self.model.config(),
            pass,
            &input.size(),
            self.element_bytes(),
            AttentionMemory::on(self.device),
        );
        let free = memory::free_bytes(self.device);
        let tile = tiling::should_tile(options.mode, estimate, free);
        log::info!(
            "VAE {what} {:?}: {}",
            input.size(),
            self.describe_plan(estimate, free, tile)
        );
        if tile {
            return self.run_vae(what, input, tiled);
        }
        self.run_vae(what, input, full)
            .or_else(|e| match is_out_of_memory(&e) {
                true => {
                    log::warn!("VAE {what} ran out of memory in one piece; retrying tiled");
                    self.run_vae(what, input, tiled)
                }
                false => Err(e),
            })
    }

    fn element_bytes(&self) -> u64 {
        match self.kind {
            Kind::Half | Kind::BFloat16 => 2,
            _ => 4,
        }
    }

    fn describe_plan(&self, estimate: u64, free: Option<u64>, tile: bool) -> String {
        let gib = |b: u64| b as f64 / f64::from(1 << 30);
        let free = match free {
            Some(b) => format!("{:.2} GiB free", gib(b)),
            None => "free memory unknown".into(),
        };
        let o = &self.tiling;
        let choice = match tile {
            true => format!(
                "tiled ({} px tiles, {} px overlap)",
                o.tile_px, o.overlap_px
            ),
            false => "in one piece".into(),
        };
        format!(
            "a full pass needs ~{:.2} GiB, {free} on {:?} → {choice}",
            gib(estimate),
            self.device
        )
    }

    fn run_vae(
        &self,
        what: &str,
        input: &Tensor,
        f: impl Fn(&AutoencoderKL, &Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let device = self.device;
        if !health::is_finite(input) {
            bail!("the VAE's input holds NaN or inf — an earlier stage failed");
        }
        let out = guarded(what, || {
            tch::no_grad(|| f(&self.model, &input.to_device(device).to_kind(self.kind)))
        })?;
        if health::is_finite(&out) {
            return Ok(out.to_kind(input.kind()));
        }
        let out = if self.kind == Kind::Float {
            out
        } else {
            // A1111's NaN check, for any element: half precision overflows in the VAE.
            log::warn!(
                "VAE {what} produced NaN or inf in {:?}; retrying in fp32",
                self.kind
            );
            guarded(what, || {
                let vae = self.vae_fp32()?;
                tch::no_grad(|| f(vae, &input.to_device(device).to_kind(Kind::Float)))
            })?
        };
        if !health::is_finite(&out) {
            let bad = health::first_nonfinite(&self.vars, VAE_PREFIX);
            bail!(
                "VAE {what} produced NaN or inf (in fp32 too) — {}",
                health::cause(bad, Kind::Float)
            );
        }
        Ok(out.to_kind(input.kind()))
    }

    fn vae_fp32(&self) -> Result<&AutoencoderKL> {
        if let Some((_, vae)) = self.fp32.get() {
            return Ok(vae);
        }
        let vs = VarStore::new(self.device);
        let vae = AutoencoderKL::new(vs.root() / "first_stage_model", self.model.config())?;
        self.copy_to(&vs)?;
        Ok(&self.fp32.get_or_init(|| (vs, vae)).1)
    }

    /// After the model's VAE encoder was released: the fp32 copy's goes too.
    pub fn encoder_released(&self) {
        if let Some((vs, _)) = self.fp32.get() {
            tch::no_grad(|| {
                for (key, mut var) in vs.variables() {
                    if self.vars.get(&key).is_some_and(|v| v.numel() == 0) {
                        let _ = var.set_();
                    }
                }
            });
        }
    }

    /// After the model's VAE parameters changed (a VAE swap): the fp32 copy follows them.
    pub fn parameters_changed(&self) -> Result<()> {
        match self.fp32.get() {
            Some((vs, _)) => self.copy_to(vs),
            None => Ok(()),
        }
    }

    fn copy_to(&self, fp32: &VarStore) -> Result<()> {
        for (key, mut var) in fp32.variables() {
            let from = self
                .vars
                .get(&key)
                .ok_or_else(|| anyhow!("VAE parameter `{key}` missing from the model"))?;
            if from.numel() == 0 {
                continue; // released: the encoder after `SdModel::release`
            }
            tch::no_grad(|| var.f_copy_(&from.to_kind(Kind::Float)))
                .with_context(|| format!("copying `{key}` to fp32"))?;
        }
        Ok(())
    }
}
