//! Latent upscalers: resize a latent to the next pass's size. Pixel-space upscalers reach the
//! pass's VAE through [`UpscaleCtx`].
use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::std_types::{RResult, RSlice, RString, RVec};
use abi_stable::StableAbi;
use tch::Tensor;

use crate::error::{from_ffi, guard, Result};
use crate::options::{OptionEntry, Options};
use crate::sampler::strings;
use crate::tensor::{TensorBox, TensorRef};

pub trait Upscaler: 'static {
    const NAME: &'static str;
    /// Other accepted names; A1111's display name first (e.g. "Latent (bicubic antialiased)").
    const ALIASES: &'static [&'static str] = &[];
    /// Returns `latent` resized to `height` × `width` latent cells.
    fn upscale(ctx: &mut UpscaleCtx<'_>, latent: Tensor, height: i64, width: i64)
        -> Result<Tensor>;

    /// What this upscaler runs with `options` (a model upscaler: the file's architecture and
    /// scale), for `hiresfix plugins` and `check`; empty when there is nothing to say.
    fn describe(_options: Options<'_>) -> Result<String> {
        Ok(String::new())
    }
}

/// The host's VAE for the pass, as seen through the boundary.
#[repr(C)]
#[derive(StableAbi)]
pub struct UpscaleHost<'a> {
    ctx: *mut c_void,
    decode: extern "C" fn(*mut c_void, TensorRef<'_>) -> RResult<TensorBox, RString>,
    encode: extern "C" fn(*mut c_void, TensorRef<'_>) -> RResult<TensorBox, RString>,
    /// What the host tells this upscaler for the pass (a model upscaler's `model` file).
    options: RSlice<'a, OptionEntry>,
    _borrow: PhantomData<&'a mut ()>,
}

/// Implemented by the host: the pass's VAE.
pub trait VaeCallbacks {
    /// Scaled latent → pixels in [-1, 1], `[B, 3, H, W]`.
    fn decode(&mut self, latent: &Tensor) -> Result<Tensor>;
    /// Pixels in [-1, 1] → scaled latent.
    fn encode(&mut self, image: &Tensor) -> Result<Tensor>;
}

extern "C" fn decode_trampoline<C: VaeCallbacks>(
    ctx: *mut c_void,
    x: TensorRef<'_>,
) -> RResult<TensorBox, RString> {
    // SAFETY: ctx is the `&mut C` given to `UpscaleHost::new`, alive for the call.
    let vae = unsafe { &mut *(ctx as *mut C) };
    guard(|| vae.decode(&x.to_tensor()).map(TensorBox::new))
}

extern "C" fn encode_trampoline<C: VaeCallbacks>(
    ctx: *mut c_void,
    x: TensorRef<'_>,
) -> RResult<TensorBox, RString> {
    // SAFETY: as in decode_trampoline.
    let vae = unsafe { &mut *(ctx as *mut C) };
    guard(|| vae.encode(&x.to_tensor()).map(TensorBox::new))
}

impl<'a> UpscaleHost<'a> {
    pub fn new<C: VaeCallbacks>(vae: &'a mut C, options: &'a [OptionEntry]) -> Self {
        Self {
            ctx: vae as *mut C as *mut c_void,
            decode: decode_trampoline::<C>,
            encode: encode_trampoline::<C>,
            options: RSlice::from_slice(options),
            _borrow: PhantomData,
        }
    }
}

/// An upscaler's view of the pass.
pub struct UpscaleCtx<'a> {
    host: &'a UpscaleHost<'a>,
}

impl UpscaleCtx<'_> {
    pub fn vae_decode(&mut self, latent: &Tensor) -> Result<Tensor> {
        from_ffi((self.host.decode)(self.host.ctx, TensorRef::new(latent)))
            .map(TensorBox::into_tensor)
    }

    /// The options the host passed for this pass.
    pub fn options(&self) -> Options<'_> {
        Options(self.host.options.as_slice())
    }

    pub fn vae_encode(&mut self, image: &Tensor) -> Result<Tensor> {
        from_ffi((self.host.encode)(self.host.ctx, TensorRef::new(image)))
            .map(TensorBox::into_tensor)
    }
}

#[repr(C)]
#[derive(StableAbi)]
pub struct UpscalerDecl {
    pub name: RString,
    pub aliases: RVec<RString>,
    pub upscale:
        extern "C" fn(&UpscaleHost<'_>, TensorRef<'_>, i64, i64) -> RResult<TensorBox, RString>,
    pub describe: extern "C" fn(RSlice<'_, OptionEntry>) -> RResult<RString, RString>,
}

extern "C" fn describe_trampoline<U: Upscaler>(
    options: RSlice<'_, OptionEntry>,
) -> RResult<RString, RString> {
    guard(|| U::describe(Options(options.as_slice())).map(RString::from))
}

extern "C" fn upscale_trampoline<U: Upscaler>(
    host: &UpscaleHost<'_>,
    latent: TensorRef<'_>,
    height: i64,
    width: i64,
) -> RResult<TensorBox, RString> {
    guard(|| {
        let mut ctx = UpscaleCtx { host };
        U::upscale(&mut ctx, latent.to_tensor(), height, width).map(TensorBox::new)
    })
}

impl UpscalerDecl {
    pub fn of<U: Upscaler>() -> Self {
        Self {
            name: U::NAME.into(),
            aliases: strings(U::ALIASES),
            upscale: upscale_trampoline::<U>,
            describe: describe_trampoline::<U>,
        }
    }

    /// Host side: see [`Upscaler::describe`].
    pub fn run_describe(&self, options: &[OptionEntry]) -> Result<String> {
        from_ffi((self.describe)(RSlice::from_slice(options))).map(String::from)
    }

    /// Host side: resize `latent` to `height` × `width` latent cells.
    pub fn run<C: VaeCallbacks>(
        &self,
        vae: &mut C,
        options: &[OptionEntry],
        latent: &Tensor,
        height: i64,
        width: i64,
    ) -> Result<Tensor> {
        let host = UpscaleHost::new(vae, options);
        from_ffi((self.upscale)(&host, TensorRef::new(latent), height, width))
            .map(TensorBox::into_tensor)
    }
}
