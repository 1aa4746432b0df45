//! Latent upscalers: resize a latent to the next pass's size. Pixel-space upscalers reach the
//! pass's VAE through [`UpscaleCtx`].
use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::prefix_type::{PrefixTypeTrait, WithMetadata};
use abi_stable::std_types::{RResult, RSlice, RStr, RString};
use abi_stable::{staticref, StableAbi};
use tch::Tensor;

use crate::error::{from_ffi, guard, Result};
use crate::options::{OptionEntry, Options};
use crate::strings::{owned, static_strs};
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

    /// 1.3.0: whether this upscaler works on pixels (it decodes the latent with the host's VAE,
    /// resizes the image, and encodes it again). The host lets a pass switch to a checkpoint of
    /// another family only through such an upscaler: it decodes with the earlier pass's VAE and
    /// encodes with the new one's. `false` (the default, and what a 1.0-1.2 upscaler reads as)
    /// means the upscaler may hand back a resized latent of the earlier model's latent space.
    const WORKS_IN_PIXELS: bool = false;
}

/// The host's VAE for the pass, as seen through the boundary.
#[repr(C)]
#[derive(StableAbi)]
pub struct UpscaleHost<'a> {
    ctx: *mut c_void,
    vtable: UpscaleHostVtableRef,
    /// What the host tells this upscaler for the pass (a model upscaler's `model` file).
    options: RSlice<'a, OptionEntry>,
    _borrow: PhantomData<&'a mut ()>,
}

/// The host's functions for an upscaler. Host API 1.0's fields end at `encode`; later ones
/// are appended and read as `Option`s (`None` from an older host).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = UpscaleHostVtableRef)))]
#[sabi(missing_field(option))]
pub struct UpscaleHostVtable {
    pub decode: extern "C" fn(*mut c_void, TensorRef<'_>) -> RResult<TensorBox, RString>,
    #[sabi(last_prefix_field)]
    pub encode: extern "C" fn(*mut c_void, TensorRef<'_>) -> RResult<TensorBox, RString>,
}

/// Implemented by the host: the pass's VAE.
pub trait VaeCallbacks {
    /// Scaled latent → pixels in [-1, 1], `[B, 3, H, W]`.
    fn decode(&mut self, latent: &Tensor) -> Result<Tensor>;
    /// Pixels in [-1, 1] → scaled latent.
    fn encode(&mut self, image: &Tensor) -> Result<Tensor>;
}

struct HostVtableOf<C>(PhantomData<C>);

impl<C: VaeCallbacks> HostVtableOf<C> {
    fn vae<'a>(ctx: *mut c_void) -> &'a mut C {
        // SAFETY: ctx is the `&mut C` given to `UpscaleHost::new`, alive for the call.
        unsafe { &mut *(ctx as *mut C) }
    }

    extern "C" fn decode(ctx: *mut c_void, x: TensorRef<'_>) -> RResult<TensorBox, RString> {
        guard(|| Self::vae(ctx).decode(&x.to_tensor()).map(TensorBox::new))
    }

    extern "C" fn encode(ctx: *mut c_void, x: TensorRef<'_>) -> RResult<TensorBox, RString> {
        guard(|| Self::vae(ctx).encode(&x.to_tensor()).map(TensorBox::new))
    }

    staticref! {
        const TABLE: WithMetadata<UpscaleHostVtable> = WithMetadata::new(UpscaleHostVtable {
            decode: Self::decode,
            encode: Self::encode,
        })
    }
    const VTABLE: UpscaleHostVtableRef = UpscaleHostVtableRef(Self::TABLE.as_prefix());
}

impl<'a> UpscaleHost<'a> {
    pub fn new<C: VaeCallbacks>(vae: &'a mut C, options: &'a [OptionEntry]) -> Self {
        Self {
            ctx: vae as *mut C as *mut c_void,
            vtable: HostVtableOf::<C>::VTABLE,
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
        from_ffi((self.host.vtable.decode())(
            self.host.ctx,
            TensorRef::new(latent),
        ))
        .map(TensorBox::into_tensor)
    }

    /// The options the host passed for this pass.
    pub fn options(&self) -> Options<'_> {
        Options(self.host.options.as_slice())
    }

    pub fn vae_encode(&mut self, image: &Tensor) -> Result<Tensor> {
        from_ffi((self.host.vtable.encode())(
            self.host.ctx,
            TensorRef::new(image),
        ))
        .map(TensorBox::into_tensor)
    }
}

/// A registered upscaler as it crosses the boundary. Host API 1.0's fields end at
/// `describe`; later ones are appended and read as `Option`s.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = UpscalerFfiRef)))]
#[sabi(missing_field(option))]
pub struct UpscalerFfi {
    pub name: RStr<'static>,
    pub aliases: RSlice<'static, RStr<'static>>,
    pub upscale:
        extern "C" fn(&UpscaleHost<'_>, TensorRef<'_>, i64, i64) -> RResult<TensorBox, RString>,
    #[sabi(last_prefix_field)]
    pub describe: extern "C" fn(RSlice<'_, OptionEntry>) -> RResult<RString, RString>,
    /// 1.3.0: [`Upscaler::WORKS_IN_PIXELS`]; absent (`None`) in a 1.0-1.2 upscaler: `false`.
    pub works_in_pixels: bool,
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

impl UpscalerFfi {
    pub fn of<U: Upscaler>() -> UpscalerFfiRef {
        UpscalerFfi {
            name: RStr::from_str(U::NAME),
            aliases: static_strs(U::ALIASES),
            upscale: upscale_trampoline::<U>,
            describe: describe_trampoline::<U>,
            works_in_pixels: U::WORKS_IN_PIXELS,
        }
        .leak_into_prefix()
    }
}

/// The host's view of a registered upscaler.
pub struct UpscalerDecl {
    pub name: String,
    pub aliases: Vec<String>,
    /// See [`Upscaler::WORKS_IN_PIXELS`]; `false` for an upscaler built against 1.0-1.2.
    pub works_in_pixels: bool,
    ffi: UpscalerFfiRef,
}

impl UpscalerDecl {
    pub fn of<U: Upscaler>() -> Self {
        Self::from_ffi(UpscalerFfi::of::<U>())
    }

    pub fn from_ffi(ffi: UpscalerFfiRef) -> Self {
        Self {
            name: ffi.name().to_string(),
            aliases: owned(ffi.aliases()),
            works_in_pixels: ffi.works_in_pixels().unwrap_or(false),
            ffi,
        }
    }

    /// Host side: see [`Upscaler::describe`].
    pub fn run_describe(&self, options: &[OptionEntry]) -> Result<String> {
        from_ffi((self.ffi.describe())(RSlice::from_slice(options))).map(String::from)
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
        from_ffi((self.ffi.upscale())(
            &host,
            TensorRef::new(latent),
            height,
            width,
        ))
        .map(TensorBox::into_tensor)
    }
}
