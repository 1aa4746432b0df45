//! A loaded model crossing the boundary: the object stays inside its plugin, the host holds a
//! [`ModelBox`] whose functions sit in [`ModelVtable`], an abi_stable prefix type (1.x appends
//! optional methods after `release`).
use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::prefix_type::WithMetadata;
use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::{staticref, StableAbi};
use tch::Tensor;

use crate::backend::{Backend, EmbeddingSpec, EmbeddingState, EncodeRequest, LoraSpec, ModelInfo};
use crate::error::{from_ffi, guard, Result};
use crate::patch::{PassSigmas, PatchBox};
use crate::sampling::ModelSampling;
use crate::tensor::{TensorBox, TensorRef};

type Out<T> = RResult<T, RString>;

/// The methods of a loaded model. Host API 1.0's fields end at `release`; later ones are
/// appended and read as `Option`s (`None` from a plugin built against an older 1.x).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = ModelVtableRef)))]
#[sabi(missing_field(option))]
pub struct ModelVtable {
    pub drop: extern "C" fn(*mut c_void),
    pub info: extern "C" fn(*const c_void) -> Out<ModelInfo>,
    pub encode_prompts: extern "C" fn(*const c_void, &EncodeRequest) -> Out<RVec<RVec<TensorBox>>>,
    pub denoise: extern "C" fn(
        *const c_void,
        TensorRef<'_>,
        f64,
        RSlice<'_, RVec<TensorRef<'_>>>,
    ) -> Out<RVec<TensorBox>>,
    pub decode: extern "C" fn(*const c_void, TensorRef<'_>) -> Out<TensorBox>,
    pub encode: extern "C" fn(*const c_void, TensorRef<'_>) -> Out<TensorBox>,
    pub nonfinite_cause: extern "C" fn(*const c_void) -> Out<RString>,
    pub set_loras: extern "C" fn(*const c_void, RSlice<'_, LoraSpec>) -> Out<RVec<RString>>,
    pub set_vae: extern "C" fn(*const c_void, ROption<RStr<'_>>) -> Out<()>,
    pub set_patches: extern "C" fn(*const c_void, RVec<PatchBox>, PassSigmas) -> Out<()>,
    #[sabi(last_prefix_field)]
    pub release: extern "C" fn(*const c_void, u32) -> Out<()>,
    /// 1.2.0: see [`Backend::set_concat`].
    pub set_concat: extern "C" fn(*const c_void, ROption<TensorRef<'_>>) -> Out<()>,
    /// 1.3.0: see [`Backend::set_embeddings`].
    pub set_embeddings:
        extern "C" fn(*const c_void, RSlice<'_, EmbeddingSpec>) -> Out<RVec<EmbeddingState>>,
    /// 1.3.0: see [`Backend::used_embeddings`].
    pub used_embeddings: extern "C" fn(*const c_void, RSlice<'_, RString>) -> Out<RVec<RString>>,
    /// 1.5.0: see [`Backend::model_sampling`].
    pub model_sampling: extern "C" fn(*const c_void, u32, u32) -> Out<ModelSampling>,
}

/// A loaded model, owned by the host; dropping it frees it inside its plugin.
#[repr(C)]
#[derive(StableAbi)]
pub struct ModelBox {
    obj: *mut c_void,
    vtable: ModelVtableRef,
}

impl Drop for ModelBox {
    fn drop(&mut self) {
        (self.vtable.drop())(self.obj)
    }
}

struct VtableOf<B>(PhantomData<B>);

impl<B: Backend> VtableOf<B> {
    fn obj<'a>(p: *const c_void) -> &'a B {
        // SAFETY: p is the Box<B> made in `ModelBox::new`, alive until `drop`.
        unsafe { &*(p as *const B) }
    }

    extern "C" fn drop(p: *mut c_void) {
        // SAFETY: p came from Box::into_raw in ModelBox::new and is dropped once.
        let _ = guard(|| {
            drop(unsafe { Box::from_raw(p as *mut B) });
            Ok(())
        });
    }

    extern "C" fn info(p: *const c_void) -> Out<ModelInfo> {
        guard(|| Ok(Self::obj(p).info()))
    }

    extern "C" fn encode_prompts(
        p: *const c_void,
        request: &EncodeRequest,
    ) -> Out<RVec<RVec<TensorBox>>> {
        guard(|| {
            let conds = Self::obj(p).encode_prompts(request)?;
            Ok(conds
                .into_iter()
                .map(|c| c.into_iter().map(TensorBox::new).collect())
                .collect())
        })
    }

    extern "C" fn denoise(
        p: *const c_void,
        x: TensorRef<'_>,
        sigma: f64,
        conds: RSlice<'_, RVec<TensorRef<'_>>>,
    ) -> Out<RVec<TensorBox>> {
        guard(|| {
            let conds: Vec<Vec<Tensor>> = conds
                .iter()
                .map(|c| c.iter().map(|t| t.to_tensor()).collect())
                .collect();
            let refs: Vec<&[Tensor]> = conds.iter().map(|c| c.as_slice()).collect();
            let out = Self::obj(p).denoise(&x.to_tensor(), sigma, &refs)?;
            Ok(out.into_iter().map(TensorBox::new).collect())
        })
    }

    extern "C" fn decode(p: *const c_void, latent: TensorRef<'_>) -> Out<TensorBox> {
        guard(|| Self::obj(p).decode(&latent.to_tensor()).map(TensorBox::new))
    }

    extern "C" fn encode(p: *const c_void, image: TensorRef<'_>) -> Out<TensorBox> {
        guard(|| Self::obj(p).encode(&image.to_tensor()).map(TensorBox::new))
    }

    extern "C" fn nonfinite_cause(p: *const c_void) -> Out<RString> {
        guard(|| Ok(Self::obj(p).nonfinite_cause().into()))
    }

    extern "C" fn set_loras(p: *const c_void, loras: RSlice<'_, LoraSpec>) -> Out<RVec<RString>> {
        guard(|| {
            let warnings = Self::obj(p).set_loras(loras.as_slice())?;
            Ok(warnings.into_iter().map(RString::from).collect())
        })
    }

    extern "C" fn set_vae(p: *const c_void, vae: ROption<RStr<'_>>) -> Out<()> {
        guard(|| Self::obj(p).set_vae(vae.into_option().map(|v| v.as_str())))
    }

    extern "C" fn set_patches(
        p: *const c_void,
        patches: RVec<PatchBox>,
        pass: PassSigmas,
    ) -> Out<()> {
        guard(|| Self::obj(p).set_patches(patches.into_vec(), pass))
    }

    extern "C" fn release(p: *const c_void, parts: u32) -> Out<()> {
        guard(|| Self::obj(p).release(parts))
    }

    extern "C" fn set_concat(p: *const c_void, concat: ROption<TensorRef<'_>>) -> Out<()> {
        guard(|| {
            let concat = concat.into_option().map(|t| t.to_tensor());
            Self::obj(p).set_concat(concat.as_ref())
        })
    }

    extern "C" fn set_embeddings(
        p: *const c_void,
        embeddings: RSlice<'_, EmbeddingSpec>,
    ) -> Out<RVec<EmbeddingState>> {
        guard(|| {
            Self::obj(p)
                .set_embeddings(embeddings.as_slice())
                .map(RVec::from)
        })
    }

    extern "C" fn used_embeddings(
        p: *const c_void,
        prompts: RSlice<'_, RString>,
    ) -> Out<RVec<RString>> {
        guard(|| {
            let prompts: Vec<&str> = prompts.iter().map(RString::as_str).collect();
            let names = Self::obj(p).used_embeddings(&prompts)?;
            Ok(names.into_iter().map(RString::from).collect())
        })
    }

    extern "C" fn model_sampling(p: *const c_void, width: u32, height: u32) -> Out<ModelSampling> {
        guard(|| Self::obj(p).model_sampling(width, height))
    }

    staticref! {
        const TABLE: WithMetadata<ModelVtable> = WithMetadata::new(ModelVtable {
            drop: Self::drop,
            info: Self::info,
            encode_prompts: Self::encode_prompts,
            denoise: Self::denoise,
            decode: Self::decode,
            encode: Self::encode,
            nonfinite_cause: Self::nonfinite_cause,
            set_loras: Self::set_loras,
            set_vae: Self::set_vae,
            set_patches: Self::set_patches,
            release: Self::release,
            set_concat: Self::set_concat,
            set_embeddings: Self::set_embeddings,
            used_embeddings: Self::used_embeddings,
            model_sampling: Self::model_sampling,
        })
    }
    const VTABLE: ModelVtableRef = ModelVtableRef(Self::TABLE.as_prefix());
}

impl ModelBox {
    pub fn new<B: Backend>(model: B) -> Self {
        Self {
            obj: Box::into_raw(Box::new(model)) as *mut c_void,
            vtable: VtableOf::<B>::VTABLE,
        }
    }

    pub fn info(&self) -> Result<ModelInfo> {
        from_ffi((self.vtable.info())(self.obj))
    }

    pub fn encode_prompts(&self, request: &EncodeRequest) -> Result<Vec<Vec<Tensor>>> {
        let out = from_ffi((self.vtable.encode_prompts())(self.obj, request))?;
        Ok(out
            .into_iter()
            .map(|c| c.into_iter().map(TensorBox::into_tensor).collect())
            .collect())
    }

    pub fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&[Tensor]]) -> Result<Vec<Tensor>> {
        let refs: Vec<RVec<TensorRef<'_>>> = conds
            .iter()
            .map(|c| c.iter().map(TensorRef::new).collect())
            .collect();
        let out = from_ffi((self.vtable.denoise())(
            self.obj,
            TensorRef::new(x),
            sigma,
            RSlice::from_slice(&refs),
        ))?;
        Ok(out.into_iter().map(TensorBox::into_tensor).collect())
    }

    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        from_ffi((self.vtable.decode())(self.obj, TensorRef::new(latent)))
            .map(TensorBox::into_tensor)
    }

    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        from_ffi((self.vtable.encode())(self.obj, TensorRef::new(image)))
            .map(TensorBox::into_tensor)
    }

    /// See [`Backend::set_loras`].
    pub fn set_loras(&self, loras: &[LoraSpec]) -> Result<Vec<String>> {
        let out = from_ffi((self.vtable.set_loras())(
            self.obj,
            RSlice::from_slice(loras),
        ))?;
        Ok(out.into_iter().map(String::from).collect())
    }

    /// See [`Backend::set_vae`].
    pub fn set_vae(&self, vae: Option<&str>) -> Result<()> {
        from_ffi((self.vtable.set_vae())(
            self.obj,
            vae.map(RStr::from).into(),
        ))
    }

    /// See [`Backend::set_patches`].
    pub fn set_patches(&self, patches: Vec<PatchBox>, pass: PassSigmas) -> Result<()> {
        from_ffi((self.vtable.set_patches())(
            self.obj,
            RVec::from(patches),
            pass,
        ))
    }

    /// See [`Backend::release`].
    pub fn release(&self, parts: u32) -> Result<()> {
        from_ffi((self.vtable.release())(self.obj, parts))
    }

    /// See [`Backend::set_concat`]; a plugin built against host-api 1.0 or 1.1 takes none.
    pub fn set_concat(&self, concat: Option<&Tensor>) -> Result<()> {
        match (self.vtable.set_concat(), concat) {
            (Some(f), concat) => from_ffi(f(self.obj, concat.map(TensorRef::new).into())),
            (None, None) => Ok(()),
            (None, Some(_)) => Err(crate::error::Error(
                "the model's plugin was built against host-api 1.0 or 1.1, which takes no image conditioning (inpainting); rebuild it against 1.2".into(),
            )),
        }
    }

    /// See [`Backend::set_embeddings`]; a plugin built against host-api 1.2 or older loads
    /// none (each state says so, and the prompt word stays text).
    pub fn set_embeddings(&self, embeddings: &[EmbeddingSpec]) -> Result<Vec<EmbeddingState>> {
        match self.vtable.set_embeddings() {
            Some(f) => from_ffi(f(self.obj, RSlice::from_slice(embeddings))).map(RVec::into_vec),
            None => Ok(embeddings
                .iter()
                .map(|e| EmbeddingState::skipped(e.name.as_str(), "the model's plugin was built against host-api 1.2 or older, which takes no textual-inversion embeddings; rebuild it against 1.3"))
                .collect()),
        }
    }

    /// Whether the model's plugin reads textual-inversion embeddings (host-api 1.3 or newer).
    pub fn takes_embeddings(&self) -> bool {
        self.vtable.set_embeddings().is_some()
    }

    /// See [`Backend::used_embeddings`] (none from a plugin older than 1.3).
    pub fn used_embeddings(&self, prompts: &[&str]) -> Result<Vec<String>> {
        let Some(f) = self.vtable.used_embeddings() else {
            return Ok(Vec::new());
        };
        let prompts: Vec<RString> = prompts.iter().map(|p| RString::from(*p)).collect();
        let names = from_ffi(f(self.obj, RSlice::from_slice(&prompts)))?;
        Ok(names.into_iter().map(String::from).collect())
    }

    /// See [`Backend::model_sampling`]; a plugin built against host-api 1.4 or older is
    /// discrete over its `info().sigmas`.
    pub fn model_sampling(&self, width: u32, height: u32) -> Result<ModelSampling> {
        match self.vtable.model_sampling() {
            Some(f) => from_ffi(f(self.obj, width, height)),
            None => Ok(ModelSampling::discrete(self.info()?.sigmas.to_vec())),
        }
    }

    /// See [`Backend::nonfinite_cause`].
    pub fn nonfinite_cause(&self) -> Result<String> {
        from_ffi((self.vtable.nonfinite_cause())(self.obj)).map(String::from)
    }
}
