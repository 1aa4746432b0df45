//! The forward call: the UNet behind the eps / v denoiser, with the pass's UNet patches
//! hooked in, and its inputs checked. Batching a call's conditionings is [`super::batch`]'s.
use anyhow::{bail, Result};
use tch::{Kind, Tensor};

use super::batch::calc_cond_batch;
use super::prediction::probe_mean;
use super::SdModel;
use crate::denoiser;
use crate::guard::guarded;
use crate::text::conditioner::Conditioning;

impl SdModel {
    /// The denoised latent at `sigma` for each conditioning, in one batched UNet call: k-diffusion
    /// `CompVisDenoiser` (eps) or `CompVisVDenoiser` (v) with `t = sigma_to_t(sigma)`
    /// unquantised. Contexts of different lengths (prompts of different chunk counts) are
    /// repeated to a common length, which leaves cross-attention unchanged (ComfyUI's
    /// `CONDCrossAttn.concat`); when that would more than quadruple one, they run apart, as
    /// A1111 does (the batching is `model/batch.rs`'s `calc_cond_batch`).
    pub fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&Conditioning]) -> Result<Vec<Tensor>> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            bail!("sigma {sigma} is not a finite non-negative number");
        }
        self.check_latent(x, self.info.latent_channels, "latent")?;
        // An inpainting UNet's image conditioning travels with the latent through the
        // batching (repeated per image and per conditioning), split off in denoise_rows.
        let checkpoint = self.origin.checkpoint.display().to_string();
        let joined = self.concat.join(x, &checkpoint)?;
        let on = (self.info.device, self.info.kind);
        calc_cond_batch(&joined, conds, &self.rows, on, &|xs, context, vector, n| {
            self.denoise_rows(xs, sigma, context, vector, n)
        })
    }

    /// The denoiser at `sigma` over latent rows `xs` in groups of `n` per image (each image's
    /// latent repeated, with its image conditioning after its channels for an inpainting
    /// UNet), one UNet call: the denoised rows, in `xs`'s order. The UNet gets
    /// `cat([x * c_in, c_concat])`, as ldm's hybrid conditioning under k-diffusion.
    fn denoise_rows(
        &self,
        xs: &Tensor,
        sigma: f64,
        context: &Tensor,
        vector: Option<&Tensor>,
        n: i64,
    ) -> Result<Tensor> {
        let batch = xs.size()[0] / n;
        let (latent, concat) = self.concat.split(xs);
        let scaled = &latent * denoiser::input_scale(sigma);
        let input = match concat {
            Some(c) => Tensor::f_cat(&[&scaled, &c], 1)?,
            None => scaled,
        };
        let out = crate::layers::with_images(batch, || {
            // Each image's n rows share its latent: the UNet runs what comes before the
            // text context once per image.
            self.unet_at_sigma(&input, sigma, context, vector, n)
        })?;
        let (c_skip, c_out) = denoiser::output_scales(self.info.prediction, sigma);
        Ok(latent.to_device(out.device()) * c_skip + out * c_out)
    }

    /// The raw UNet output (noise or velocity) for latent `x` `[B, C, h, w]` at timesteps
    /// `t` (`[B]` or a scalar, fractional allowed) with `context` `[B or 1, L, D]` and, for
    /// SDXL, `vector` `[B or 1, adm]`. Returned in `x`'s dtype.
    pub fn unet_output(
        &self,
        x: &Tensor,
        t: &Tensor,
        context: &Tensor,
        vector: Option<&Tensor>,
    ) -> Result<Tensor> {
        // Patches see the call's sigma: the timestep's, on the model's schedule.
        let sigma = match self.patcher.patches().is_empty() {
            true => 0.0,
            false => self
                .schedule
                .t_to_sigma(f64::try_from(t.flatten(0, -1).get(0))?),
        };
        self.unet_call(x, t, sigma, context, vector, 1)
    }

    /// [`unet_output`](Self::unet_output) at `sigma` (timestep `sigma_to_t(sigma)`), as the
    /// denoiser calls it.
    pub fn unet_output_at_sigma(
        &self,
        x: &Tensor,
        sigma: f64,
        context: &Tensor,
        vector: Option<&Tensor>,
    ) -> Result<Tensor> {
        self.unet_at_sigma(x, sigma, context, vector, 1)
    }

    /// [`unet_output_at_sigma`](Self::unet_output_at_sigma) for rows in groups of `shared`
    /// with the same latent (see `UNetModel::forward_cfg`).
    fn unet_at_sigma(
        &self,
        x: &Tensor,
        sigma: f64,
        context: &Tensor,
        vector: Option<&Tensor>,
        shared: i64,
    ) -> Result<Tensor> {
        // Made on the device: no copy from the host (and no wait for it) per call.
        let t = Tensor::full(
            [1],
            self.schedule.sigma_to_t(sigma),
            (Kind::Float, self.info.device),
        );
        self.unet_call(x, &t, sigma, context, vector, shared)
    }

    /// The UNet call; `sigma` is what the pass's patches see; rows come in groups of
    /// `shared` with the same latent and timestep.
    fn unet_call(
        &self,
        x: &Tensor,
        t: &Tensor,
        sigma: f64,
        context: &Tensor,
        vector: Option<&Tensor>,
        shared: i64,
    ) -> Result<Tensor> {
        // Every UNet path (denoise, unet_output, unet_output_at_sigma) comes through here.
        self.patcher
            .check_live(host_api::backend::release::UNET, "run the UNet")?;
        let b = self.check_latent(x, self.info.config.unet.in_channels, "UNet input")?;
        let t = match t.numel() {
            1 => t.reshape([1]).expand([b], false),
            n if n as i64 == b && t.dim() <= 1 => t.reshape([b]),
            n => bail!("{n} timesteps for a batch of {b} — pass one per image or a scalar"),
        };
        let context = self.check_context(context, b)?;
        let vector = vector.map(|v| self.check_vector(v, b)).transpose()?;
        let patches = self.patcher.patches();
        let hooks = patches.at(sigma, self.unet.levels());
        guarded("running the UNet", || {
            let (device, kind) = (self.info.device, self.info.kind);
            let on = |t: &Tensor| t.to_device(device).to_kind(kind);
            let out = tch::no_grad(|| {
                self.unet.forward_cfg(
                    &on(x),
                    &t.to_device(device),
                    &on(&context),
                    vector.as_ref().map(on).as_ref(),
                    hooks.as_ref().map(|h| h as &dyn crate::unet::Hooks),
                    shared,
                )
            })?;
            Ok(out.to_kind(x.kind()))
        })
    }

    /// A1111's v-prediction probe on this model's UNet (see [`probe_mean`]).
    pub fn probe_mean(&self) -> Result<f64> {
        guarded("probing the UNet", || {
            probe_mean(&self.unet, self.info.device, self.info.kind)
        })
    }

    /// `[B or 1, L, context_dim]`, broadcast to the batch.
    fn check_context(&self, context: &Tensor, batch: i64) -> Result<Tensor> {
        let size = context.size();
        let dim = self.info.config.unet.context_dim;
        match size.as_slice() {
            [b, l, d] if *d == dim && *l > 0 && (*b == batch || *b == 1) => Ok(context.expand([batch, *l, dim], false)),
            _ => bail!("text conditioning has shape {size:?}; expected [{batch} or 1, tokens, {dim}] — encode it with this model"),
        }
    }

    /// `[B or 1, adm]`, broadcast to the batch.
    fn check_vector(&self, vector: &Tensor, batch: i64) -> Result<Tensor> {
        let size = vector.size();
        let dim = self.info.config.unet.adm_in_channels.unwrap_or(0);
        match size.as_slice() {
            [b, d] if *d == dim && (*b == batch || *b == 1) => Ok(vector.expand([batch, dim], false)),
            _ => bail!("vector conditioning has shape {size:?}; expected [{batch} or 1, {dim}] — encode it with this model"),
        }
    }
}
