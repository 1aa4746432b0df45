//! UNet patches: small changes to the UNet's forward pass (Kohya Deep Shrink, FreeU, ...),
//! chosen per pass from the profile. The backend calls a patch's hooks at fixed points of its
//! UNet forward; a pass without patches calls nothing.
//!
//! Hook points (numbered as the LDM / ComfyUI `UNetModel`: input block 0 is the first
//! convolution, then every ResBlock (+ transformer) and every downsampler is one block; output
//! blocks likewise, an upsampler belonging to the block before it):
//! - [`Patch::input_block`]: after input block `block`, before its output is stored as a skip;
//! - [`Patch::input_block_after_skip`]: after the skip is stored, on what the next block sees;
//! - [`Patch::output_block`]: before output block `block` concatenates `h` with its skip.
//!
//! - [`Patch::attention`] (host-api 1.4.0): wraps the self-attention of every transformer
//!   block (LDM `BasicTransformerBlock.attn1`); the patch may rearrange or merge the tokens,
//!   run the attention (once or several times) through the callback it is given, and undo
//!   its change on the result (HyperTile, ToMe).
//!
//! Extending the hook set without breaking plugins: the hooks travel in [`PatchVtable`], an
//! abi_stable *prefix type*. A later host-api 1.x appends new hooks after the last one and a
//! backend reads them through the accessor, which returns `None` for a patch built against
//! an older host-api; the backend then runs its own attention ([`PatchBox::attention`] does
//! that for it). Old patches keep loading; a newer patch in an older host has its extra hooks
//! left uncalled.
use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec, Tuple2};
use abi_stable::StableAbi;
use tch::Tensor;

use crate::error::{from_ffi, guard, Result};
use crate::options::{OptionEntry, Options};
use crate::strings::{owned, static_strs};
use crate::tensor::{TensorBox, TensorRef};

type Out<T> = RResult<T, RString>;

/// What a patch knows about the model it patches, at creation.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct PatchModel {
    /// Family id, e.g. `sdxl`.
    pub family: RString,
    /// The model's discrete sigma table, ascending (index = training timestep).
    pub sigmas: RVec<f64>,
    /// Facts added in host API 1.x, by key; empty in 1.0.
    pub extra: RVec<OptionEntry>,
}

/// The sigma range of the pass the patches run in (what a patch needs to act on "the first
/// 35 % of the pass").
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Default)]
pub struct PassSigmas {
    /// The first (largest) sigma of the pass.
    pub max: f64,
    /// The last (smallest) sigma of the pass.
    pub min: f64,
}

/// Where in the UNet and the schedule a hook is called.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct HookCtx {
    /// The block's index among the input or output blocks (LDM numbering, see the module docs).
    pub block: u32,
    /// The block's resolution level: 0 = full latent resolution, `levels - 1` = deepest.
    pub level: u32,
    /// How many resolution levels the UNet has.
    pub levels: u32,
    /// The sigma of this UNet call.
    pub sigma: f64,
    /// The first (largest) sigma of the pass.
    pub pass_sigma_max: f64,
    /// The last (smallest) sigma of the pass.
    pub pass_sigma_min: f64,
}

/// Where a self-attention runs (host-api 1.4.0): the block's [`HookCtx`] and the facts a
/// token-rearranging patch needs.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq)]
pub struct AttentionCtx {
    /// The UNet block holding the transformer: `block` indexes the input blocks, the middle
    /// block (`block` = 0) or the output blocks as `part` says; `level`, `sigma` and the pass
    /// range as for the other hooks.
    pub hook: HookCtx,
    /// 0: an input block, 1: the middle block, 2: an output block.
    pub part: u32,
    /// This transformer block's index among the UNet's, in forward order (input blocks,
    /// middle, output blocks; a `SpatialTransformer` of depth d counts d): a stable key for
    /// per-block random choices.
    pub transformer: u32,
    /// The token grid at this level: the tokens are `height × width`, row-major.
    pub height: u32,
    pub width: u32,
    /// The latent the UNet was called with (level 0's grid), e.g. ToMe's "original size".
    pub latent_height: u32,
    pub latent_width: u32,
    /// The UNet's base width (LDM `model_channels`): level `l` has `channel_mult[l]` times it.
    pub model_channels: u32,
}

/// The self-attention a [`Patch::attention`] hook wraps: tokens `(B', N', C)` in, the
/// attention's output (same shape, before the residual sum) out. Valid for the hook's call.
#[repr(C)]
#[derive(StableAbi)]
pub struct AttentionFn<'a> {
    env: *const c_void,
    call: extern "C" fn(*const c_void, TensorRef<'_>) -> Out<TensorBox>,
    _borrow: PhantomData<&'a ()>,
}

extern "C" fn attention_fn_call<F: Fn(&Tensor) -> Result<Tensor>>(
    env: *const c_void,
    tokens: TensorRef<'_>,
) -> Out<TensorBox> {
    // SAFETY: env is the `&F` made in `AttentionFn::new`, alive for `'a`.
    let f = unsafe { &*(env as *const F) };
    guard(|| f(&tokens.to_tensor()).map(TensorBox::new))
}

impl<'a> AttentionFn<'a> {
    /// The backend's attention as a callback for the hook's call.
    pub fn new<F: Fn(&Tensor) -> Result<Tensor>>(f: &'a F) -> Self {
        Self {
            env: f as *const F as *const c_void,
            call: attention_fn_call::<F>,
            _borrow: PhantomData,
        }
    }

    /// Runs the attention on `tokens`.
    pub fn run(&self, tokens: &Tensor) -> Result<Tensor> {
        from_ffi((self.call)(self.env, TensorRef::new(tokens))).map(TensorBox::into_tensor)
    }
}

/// What a patch plugin implements. Every hook's default leaves its tensors unchanged. `Send`:
/// the model holding the pass's patches may move to another thread.
pub trait Patch: Sized + Send + 'static {
    /// The id used in profiles, e.g. `deep_shrink`.
    const NAME: &'static str;
    /// Other accepted names.
    const ALIASES: &'static [&'static str] = &[];
    /// The option keys this patch reads (any other key in the profile is an error).
    const OPTIONS: &'static [&'static str] = &[];

    /// The patch for one pass, from its profile options.
    fn new(options: Options<'_>, model: &PatchModel) -> Result<Self>;

    /// Infotext fields recording the patch and its options (A1111 / Forge extension style).
    fn infotext(&self) -> Vec<(String, String)> {
        Vec::new()
    }

    /// After input block `ctx.block`, before its output is stored as a skip connection.
    fn input_block(&self, _ctx: &HookCtx, h: Tensor) -> Result<Tensor> {
        Ok(h)
    }

    /// After input block `ctx.block`'s output is stored as a skip: what the next block sees.
    fn input_block_after_skip(&self, _ctx: &HookCtx, h: Tensor) -> Result<Tensor> {
        Ok(h)
    }

    /// Before output block `ctx.block` concatenates `h` with `skip`.
    fn output_block(&self, _ctx: &HookCtx, h: Tensor, skip: Tensor) -> Result<(Tensor, Tensor)> {
        Ok((h, skip))
    }

    /// Around the self-attention of a transformer block (host-api 1.4.0): `x` is the block's
    /// input `(B, N, C)` (N = `ctx.height × ctx.width` tokens), `normed` what the attention
    /// would get (`norm1(x)`); returns what the attention returns for `normed` — by default
    /// `attention.run(&normed)`. A patch may hand `attention` other tokens (tiles folded into
    /// the batch, merged tokens; any `(B', N', C)`), call it several times, and map its result
    /// back to `(B, N, C)`. The residual sum is the backend's. Patches chain in profile order,
    /// the first outermost: an inner patch gets the tokens the outer one handed its callback,
    /// which may not be shaped like `x` (then it should run `attention` unchanged, as
    /// HyperTile and ToMe do: they do not compose on one block).
    fn attention(
        &self,
        _ctx: &AttentionCtx,
        _x: &Tensor,
        normed: Tensor,
        attention: &AttentionFn<'_>,
    ) -> Result<Tensor> {
        attention.run(&normed)
    }
}

/// The hooks of one patch type. A prefix type: see the module docs on adding hooks.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PatchVtableRef)))]
#[sabi(missing_field(option))]
pub struct PatchVtable {
    pub drop: extern "C" fn(*mut c_void),
    pub infotext: extern "C" fn(*const c_void) -> Out<RVec<Tuple2<RString, RString>>>,
    pub input_block: extern "C" fn(*const c_void, &HookCtx, TensorRef<'_>) -> Out<TensorBox>,
    pub input_block_after_skip:
        extern "C" fn(*const c_void, &HookCtx, TensorRef<'_>) -> Out<TensorBox>,
    #[sabi(last_prefix_field)]
    pub output_block: extern "C" fn(
        *const c_void,
        &HookCtx,
        TensorRef<'_>,
        TensorRef<'_>,
    ) -> Out<Tuple2<TensorBox, TensorBox>>,
    /// 1.4.0: [`Patch::attention`]; `None` from the accessor for an older patch (the backend
    /// then runs its attention unchanged).
    pub attention: extern "C" fn(
        *const c_void,
        &AttentionCtx,
        TensorRef<'_>,
        TensorRef<'_>,
        &AttentionFn<'_>,
    ) -> Out<TensorBox>,
}

/// A patch object made inside its plugin, not yet paired with its hooks.
#[repr(C)]
#[derive(StableAbi)]
pub struct RawPatch {
    obj: *mut c_void,
}

/// A patch for one pass, owned by whoever holds it (the host, then the backend); dropping it
/// frees it inside its plugin.
#[repr(C)]
#[derive(StableAbi)]
pub struct PatchBox {
    obj: *mut c_void,
    vtable: PatchVtableRef,
    name: RString,
}

// SAFETY: `obj` is a `Box<P>` with `P: Patch: Send` (made only by `PatchDecl::create` through
// `new_trampoline::<P>`), and the vtable is an immutable `'static` table of functions.
unsafe impl Send for PatchBox {}

impl Drop for PatchBox {
    fn drop(&mut self) {
        (self.vtable.drop())(self.obj)
    }
}

fn obj<'a, P>(p: *const c_void) -> &'a P {
    // SAFETY: p is the Box<P> made in `new_trampoline`, alive until `drop`.
    unsafe { &*(p as *const P) }
}

extern "C" fn drop_trampoline<P: Patch>(p: *mut c_void) {
    // SAFETY: p came from Box::into_raw in new_trampoline and is dropped once.
    let _ = guard(|| {
        drop(unsafe { Box::from_raw(p as *mut P) });
        Ok(())
    });
}

extern "C" fn infotext_trampoline<P: Patch>(
    p: *const c_void,
) -> Out<RVec<Tuple2<RString, RString>>> {
    guard(|| {
        Ok(obj::<P>(p)
            .infotext()
            .into_iter()
            .map(|(k, v)| Tuple2(k.into(), v.into()))
            .collect())
    })
}

extern "C" fn input_trampoline<P: Patch>(
    p: *const c_void,
    ctx: &HookCtx,
    h: TensorRef<'_>,
) -> Out<TensorBox> {
    guard(|| {
        obj::<P>(p)
            .input_block(ctx, h.to_tensor())
            .map(TensorBox::new)
    })
}

extern "C" fn after_skip_trampoline<P: Patch>(
    p: *const c_void,
    ctx: &HookCtx,
    h: TensorRef<'_>,
) -> Out<TensorBox> {
    guard(|| {
        obj::<P>(p)
            .input_block_after_skip(ctx, h.to_tensor())
            .map(TensorBox::new)
    })
}

extern "C" fn output_trampoline<P: Patch>(
    p: *const c_void,
    ctx: &HookCtx,
    h: TensorRef<'_>,
    skip: TensorRef<'_>,
) -> Out<Tuple2<TensorBox, TensorBox>> {
    guard(|| {
        let (h, skip) = obj::<P>(p).output_block(ctx, h.to_tensor(), skip.to_tensor())?;
        Ok(Tuple2(TensorBox::new(h), TensorBox::new(skip)))
    })
}

extern "C" fn attention_trampoline<P: Patch>(
    p: *const c_void,
    ctx: &AttentionCtx,
    x: TensorRef<'_>,
    normed: TensorRef<'_>,
    attention: &AttentionFn<'_>,
) -> Out<TensorBox> {
    guard(|| {
        obj::<P>(p)
            .attention(ctx, &x.to_tensor(), normed.to_tensor(), attention)
            .map(TensorBox::new)
    })
}

extern "C" fn new_trampoline<P: Patch>(
    options: RSlice<'_, OptionEntry>,
    model: &PatchModel,
) -> Out<RawPatch> {
    guard(|| {
        let patch = P::new(Options(options.as_slice()), model)?;
        Ok(RawPatch {
            obj: Box::into_raw(Box::new(patch)) as *mut c_void,
        })
    })
}

/// A registered patch as it crosses the boundary. Host API 1.0's fields end at `vtable`;
/// later ones are appended and read as `Option`s.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PatchFfiRef)))]
#[sabi(missing_field(option))]
pub struct PatchFfi {
    pub name: RStr<'static>,
    pub aliases: RSlice<'static, RStr<'static>>,
    pub options: RSlice<'static, RStr<'static>>,
    pub new: extern "C" fn(RSlice<'_, OptionEntry>, &PatchModel) -> Out<RawPatch>,
    #[sabi(last_prefix_field)]
    pub vtable: PatchVtableRef,
}

impl PatchFfi {
    /// The tables for `P` (made once per plugin load, kept for the process like the plugin).
    pub fn of<P: Patch>() -> PatchFfiRef {
        let vtable = PatchVtable {
            drop: drop_trampoline::<P>,
            infotext: infotext_trampoline::<P>,
            input_block: input_trampoline::<P>,
            input_block_after_skip: after_skip_trampoline::<P>,
            output_block: output_trampoline::<P>,
            attention: attention_trampoline::<P>,
        };
        PatchFfi {
            name: RStr::from_str(P::NAME),
            aliases: static_strs(P::ALIASES),
            options: static_strs(P::OPTIONS),
            new: new_trampoline::<P>,
            vtable: vtable.leak_into_prefix(),
        }
        .leak_into_prefix()
    }
}

/// The host's view of a registered patch.
pub struct PatchDecl {
    pub name: String,
    pub aliases: Vec<String>,
    pub options: Vec<String>,
    ffi: PatchFfiRef,
}

impl PatchDecl {
    pub fn of<P: Patch>() -> Self {
        Self::from_ffi(PatchFfi::of::<P>())
    }

    pub fn from_ffi(ffi: PatchFfiRef) -> Self {
        Self {
            name: ffi.name().to_string(),
            aliases: owned(ffi.aliases()),
            options: owned(ffi.options()),
            ffi,
        }
    }

    /// Host side: the patch for one pass.
    pub fn create(&self, options: &[OptionEntry], model: &PatchModel) -> Result<PatchBox> {
        let raw = from_ffi((self.ffi.new())(RSlice::from_slice(options), model))?;
        Ok(PatchBox {
            obj: raw.obj,
            vtable: self.ffi.vtable(),
            name: self.name.as_str().into(),
        })
    }
}

impl PatchBox {
    /// The patch's id, for messages.
    pub fn name(&self) -> &str {
        self.name.as_str()
    }

    pub fn infotext(&self) -> Result<Vec<(String, String)>> {
        let fields = from_ffi((self.vtable.infotext())(self.obj))?;
        Ok(fields
            .into_iter()
            .map(|Tuple2(k, v)| (k.into(), v.into()))
            .collect())
    }

    pub fn input_block(&self, ctx: &HookCtx, h: &Tensor) -> Result<Tensor> {
        from_ffi((self.vtable.input_block())(
            self.obj,
            ctx,
            TensorRef::new(h),
        ))
        .map(TensorBox::into_tensor)
    }

    pub fn input_block_after_skip(&self, ctx: &HookCtx, h: &Tensor) -> Result<Tensor> {
        from_ffi((self.vtable.input_block_after_skip())(
            self.obj,
            ctx,
            TensorRef::new(h),
        ))
        .map(TensorBox::into_tensor)
    }

    pub fn output_block(
        &self,
        ctx: &HookCtx,
        h: &Tensor,
        skip: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let Tuple2(h, skip) = from_ffi((self.vtable.output_block())(
            self.obj,
            ctx,
            TensorRef::new(h),
            TensorRef::new(skip),
        ))?;
        Ok((h.into_tensor(), skip.into_tensor()))
    }

    /// Whether the patch has the attention hook (built against host-api 1.4 or later).
    pub fn has_attention(&self) -> bool {
        self.vtable.attention().is_some()
    }

    /// [`Patch::attention`]; a patch older than host-api 1.4 runs `attention` on `normed`.
    pub fn attention(
        &self,
        ctx: &AttentionCtx,
        x: &Tensor,
        normed: &Tensor,
        attention: &AttentionFn<'_>,
    ) -> Result<Tensor> {
        match self.vtable.attention() {
            Some(hook) => from_ffi(hook(
                self.obj,
                ctx,
                TensorRef::new(x),
                TensorRef::new(normed),
                attention,
            ))
            .map(TensorBox::into_tensor),
            None => attention.run(normed),
        }
    }
}
