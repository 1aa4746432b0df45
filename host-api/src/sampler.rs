//! Samplers: integrate from `sigmas[0]` down to the last sigma with the host's denoiser.
//!
//! A sampler is one short function over [`SampleCtx`], in the style of k-diffusion's
//! `sampling.py`: the context denoises (CFG already applied by the host), draws the image's
//! step noise (README "Noise") and reports progress.
//!
//! Across the boundary a sampler is a [`SamplerFfi`] and the host's side of a run a
//! [`SamplerHost`] whose functions sit in [`SamplerHostVtable`]; both tables are abi_stable
//! prefix types, so 1.x grows them by appending optional fields (see the crate README).
use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::prefix_type::{PrefixTypeTrait, WithMetadata};
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use abi_stable::{staticref, StableAbi};
use tch::Tensor;

use crate::error::{from_ffi, guard, Error, Result};
use crate::options::{OptionEntry, Options};
use crate::sampling::ModelSampling;
use crate::strings::{owned, static_strs};
use crate::tensor::{TensorBox, TensorRef};

/// What a sampler plugin implements.
pub trait Sampler: 'static {
    /// The id used in profiles, e.g. `euler_ancestral`.
    const NAME: &'static str;
    /// Other accepted names; A1111's display name first (e.g. "Euler a").
    const ALIASES: &'static [&'static str] = &[];
    /// The `sampler_options` keys this sampler reads.
    const OPTIONS: &'static [&'static str] = &[];
    /// A1111's `discard_next_to_last_sigma` for this sampler.
    const DISCARD_PENULTIMATE_SIGMA: bool = false;
    /// A1111's schedule when the profile names none ("" = the host default).
    const DEFAULT_SCHEDULE: &'static str = "";
    /// 1.5.0: `sample` serves a rectified-flow model (reading [`SampleCtx::model_sampling`]
    /// where its form differs). `false`: the host refuses the sampler for a flow model at
    /// plan time, in one line.
    const SERVES_FLOW: bool = false;

    /// Runs the whole trajectory; `x` is the noised start at `sigmas[0]`.
    fn sample(ctx: &mut SampleCtx<'_>, x: Tensor, sigmas: &[f64]) -> Result<Tensor>;
}

/// The host's side of a sampling run, as seen through the boundary.
#[repr(C)]
#[derive(StableAbi)]
pub struct SamplerHost<'a> {
    ctx: *mut c_void,
    vtable: SamplerHostVtableRef,
    options: RSlice<'a, OptionEntry>,
    _borrow: PhantomData<&'a mut ()>,
}

/// The host's functions for a sampler. Host API 1.0's fields end at `step`; later ones are
/// appended and read as `Option`s (`None` from an older host).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = SamplerHostVtableRef)))]
#[sabi(missing_field(option))]
pub struct SamplerHostVtable {
    pub denoise: extern "C" fn(*mut c_void, TensorRef<'_>, f64) -> RResult<TensorBox, RString>,
    pub noise: extern "C" fn(*mut c_void, TensorRef<'_>) -> RResult<TensorBox, RString>,
    #[sabi(last_prefix_field)]
    pub step: extern "C" fn(*mut c_void, u32, u32) -> bool,
    /// 1.5.0: the model's sampling for this pass (see [`SampleCtx::model_sampling`]).
    pub model_sampling: extern "C" fn(*mut c_void) -> RResult<ModelSampling, RString>,
}

/// Implemented by the host (or a test harness) to drive a sampler.
pub trait SamplerCallbacks {
    /// The CFG-combined denoised prediction at `sigma`.
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor>;
    /// The next draw of the image's step-noise stream, shaped like `x`.
    fn noise_like(&mut self, x: &Tensor) -> Result<Tensor>;
    /// Step `i` of `total` finished; `false` cancels the run.
    fn step(&mut self, i: usize, total: usize) -> bool;
    /// 1.5.0: the model's sampling for this pass; the default is a discrete model (no table).
    fn model_sampling(&mut self) -> Result<ModelSampling> {
        Ok(ModelSampling::discrete(Vec::new()))
    }
}

fn callbacks<'a, C>(ctx: *mut c_void) -> &'a mut C {
    // SAFETY: ctx is the `&mut C` given to `SamplerHost::new`, alive for the run.
    unsafe { &mut *(ctx as *mut C) }
}

struct HostVtableOf<C>(PhantomData<C>);

impl<C: SamplerCallbacks> HostVtableOf<C> {
    extern "C" fn denoise(
        ctx: *mut c_void,
        x: TensorRef<'_>,
        sigma: f64,
    ) -> RResult<TensorBox, RString> {
        guard(|| {
            callbacks::<C>(ctx)
                .denoise(&x.to_tensor(), sigma)
                .map(TensorBox::new)
        })
    }

    extern "C" fn noise(ctx: *mut c_void, x: TensorRef<'_>) -> RResult<TensorBox, RString> {
        guard(|| {
            callbacks::<C>(ctx)
                .noise_like(&x.to_tensor())
                .map(TensorBox::new)
        })
    }

    extern "C" fn step(ctx: *mut c_void, i: u32, total: u32) -> bool {
        let outcome = guard(|| Ok(callbacks::<C>(ctx).step(i as usize, total as usize)));
        matches!(outcome, RResult::ROk(true))
    }

    extern "C" fn model_sampling(ctx: *mut c_void) -> RResult<ModelSampling, RString> {
        guard(|| callbacks::<C>(ctx).model_sampling())
    }

    staticref! {
        const TABLE: WithMetadata<SamplerHostVtable> = WithMetadata::new(SamplerHostVtable {
            denoise: Self::denoise,
            noise: Self::noise,
            step: Self::step,
            model_sampling: Self::model_sampling,
        })
    }
    const VTABLE: SamplerHostVtableRef = SamplerHostVtableRef(Self::TABLE.as_prefix());
}

impl<'a> SamplerHost<'a> {
    pub fn new<C: SamplerCallbacks>(callbacks: &'a mut C, options: &'a [OptionEntry]) -> Self {
        Self {
            ctx: callbacks as *mut C as *mut c_void,
            vtable: HostVtableOf::<C>::VTABLE,
            options: RSlice::from_slice(options),
            _borrow: PhantomData,
        }
    }
}

/// A sampler's view of the run.
pub struct SampleCtx<'a> {
    host: &'a SamplerHost<'a>,
}

impl<'a> SampleCtx<'a> {
    /// `uncond + cfg * (cond - uncond)` of the model's denoised predictions at `sigma`.
    pub fn denoise(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        from_ffi((self.host.vtable.denoise())(
            self.host.ctx,
            TensorRef::new(x),
            sigma,
        ))
        .map(TensorBox::into_tensor)
    }

    /// Standard normal noise shaped like `x` from the image's seeded step stream.
    pub fn noise_like(&mut self, x: &Tensor) -> Result<Tensor> {
        from_ffi((self.host.vtable.noise())(self.host.ctx, TensorRef::new(x)))
            .map(TensorBox::into_tensor)
    }

    /// Reports that step `i` (0-based) of `total` is done; an error means the user cancelled.
    pub fn step(&mut self, i: usize, total: usize) -> Result<()> {
        if (self.host.vtable.step())(self.host.ctx, i as u32, total as u32) {
            Ok(())
        } else {
            Err(Error::new("cancelled"))
        }
    }

    pub fn options(&self) -> Options<'a> {
        Options(self.host.options.as_slice())
    }

    /// 1.5.0: the model's sampling for this pass (`is_flow()` picks a sampler's rectified-flow
    /// form; `half_log_snr` etc. for the SDE samplers). Discrete from an older host.
    pub fn model_sampling(&mut self) -> Result<ModelSampling> {
        match self.host.vtable.model_sampling() {
            Some(f) => from_ffi(f(self.host.ctx)),
            None => Ok(ModelSampling::discrete(Vec::new())),
        }
    }
}

/// A registered sampler as it crosses the boundary (a plugin's root module lists them).
/// Host API 1.0's fields end at `sample`; later ones are appended and read as `Option`s.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = SamplerFfiRef)))]
#[sabi(missing_field(option))]
pub struct SamplerFfi {
    pub name: RStr<'static>,
    pub aliases: RSlice<'static, RStr<'static>>,
    pub options: RSlice<'static, RStr<'static>>,
    pub discard_penultimate_sigma: bool,
    pub default_schedule: RStr<'static>,
    #[sabi(last_prefix_field)]
    pub sample:
        extern "C" fn(&SamplerHost<'_>, TensorBox, RSlice<'_, f64>) -> RResult<TensorBox, RString>,
    /// 1.5.0: [`Sampler::SERVES_FLOW`] (absent: `false`).
    pub serves_flow: bool,
}

extern "C" fn sample_trampoline<S: Sampler>(
    host: &SamplerHost<'_>,
    x: TensorBox,
    sigmas: RSlice<'_, f64>,
) -> RResult<TensorBox, RString> {
    guard(|| {
        let mut ctx = SampleCtx { host };
        S::sample(&mut ctx, x.into_tensor(), sigmas.as_slice()).map(TensorBox::new)
    })
}

impl SamplerFfi {
    /// The table for `S` (made once per plugin load, kept for the process like the plugin).
    pub fn of<S: Sampler>() -> SamplerFfiRef {
        SamplerFfi {
            name: RStr::from_str(S::NAME),
            aliases: static_strs(S::ALIASES),
            options: static_strs(S::OPTIONS),
            discard_penultimate_sigma: S::DISCARD_PENULTIMATE_SIGMA,
            default_schedule: RStr::from_str(S::DEFAULT_SCHEDULE),
            sample: sample_trampoline::<S>,
            serves_flow: S::SERVES_FLOW,
        }
        .leak_into_prefix()
    }
}

/// The host's view of a registered sampler.
pub struct SamplerDecl {
    pub name: String,
    pub aliases: Vec<String>,
    pub options: Vec<String>,
    pub discard_penultimate_sigma: bool,
    pub default_schedule: String,
    /// 1.5.0: serves a rectified-flow model (`false` from a 1.0–1.4 plugin).
    pub serves_flow: bool,
    ffi: SamplerFfiRef,
}

impl SamplerDecl {
    pub fn of<S: Sampler>() -> Self {
        Self::from_ffi(SamplerFfi::of::<S>())
    }

    pub fn from_ffi(ffi: SamplerFfiRef) -> Self {
        Self {
            name: ffi.name().to_string(),
            aliases: owned(ffi.aliases()),
            options: owned(ffi.options()),
            discard_penultimate_sigma: ffi.discard_penultimate_sigma(),
            default_schedule: ffi.default_schedule().to_string(),
            serves_flow: ffi.serves_flow().unwrap_or(false),
            ffi,
        }
    }

    /// Host side: runs the sampler with `callbacks` and `options`.
    pub fn run<C: SamplerCallbacks>(
        &self,
        callbacks: &mut C,
        options: &[OptionEntry],
        x: Tensor,
        sigmas: &[f64],
    ) -> Result<Tensor> {
        let host = SamplerHost::new(callbacks, options);
        from_ffi((self.ffi.sample())(
            &host,
            TensorBox::new(x),
            RSlice::from_slice(sigmas),
        ))
        .map(TensorBox::into_tensor)
    }
}

/// k-diffusion's `to_d`: the ODE derivative `(x - denoised) / sigma`.
pub fn to_d(x: &Tensor, sigma: f64, denoised: &Tensor) -> Tensor {
    (x - denoised) / sigma
}

/// k-diffusion's `get_ancestral_step`: `(sigma_down, sigma_up)` for an ancestral step.
pub fn ancestral_step(sigma_from: f64, sigma_to: f64, eta: f64) -> (f64, f64) {
    if eta == 0.0 {
        return (sigma_to, 0.0);
    }
    let up = (eta
        * (sigma_to.powi(2) * (sigma_from.powi(2) - sigma_to.powi(2)) / sigma_from.powi(2)).sqrt())
    .min(sigma_to);
    ((sigma_to.powi(2) - up.powi(2)).sqrt(), up)
}
