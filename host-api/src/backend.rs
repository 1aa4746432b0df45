//! Model backends: one per model family (SD 1.x, SD 2.x, SDXL, ...). A backend reads a
//! checkpoint, encodes prompts, predicts the denoised latent at a sigma, and runs the VAE.
//! CFG, sampling and upscaling stay with the host.
use std::ffi::c_void;
use std::path::{Path, PathBuf};

use abi_stable::std_types::{ROption, RResult, RSlice, RStr, RString, RVec};
use abi_stable::StableAbi;
use tch::{Device, Kind, Tensor};

use crate::error::{from_ffi, guard, Error, Result};
use crate::patch::{PassSigmas, PatchBox};
use crate::tensor::{TensorBox, TensorRef};

/// What the host needs to know about a loaded model.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Family id, e.g. `sd1`.
    pub family: RString,
    /// `eps` or `v`.
    pub prediction: RString,
    pub latent_channels: u32,
    /// Pixels per latent cell along each side (2^(VAE levels - 1)).
    pub vae_scale_factor: u32,
    /// The family's comfortable image side in pixels (512 for SD 1.x).
    pub default_size: u32,
    /// Human-readable text encoder description, e.g. `CLIP-L (12 layers, 768)`.
    pub text_encoders: RString,
    pub dtype: RString,
    pub device: RString,
    /// The model's discrete sigma table, ascending.
    pub sigmas: RVec<f64>,
}

/// What to load; paths are as the user wrote them (resolved by the host).
#[repr(C)]
#[derive(StableAbi, Clone, Debug)]
pub struct LoadRequest {
    pub checkpoint: RString,
    pub vae: ROption<RString>,
    /// `cpu`, `cuda` or `cuda:N`.
    pub device: RString,
    /// `fp32`, `fp16` or `bf16`.
    pub dtype: RString,
    /// VAE tiling: `auto` (tile when a full decode/encode would not fit in free memory), `on`, `off`.
    pub vae_tiling: RString,
    /// Tile side in pixels (0 = the backend's default).
    pub vae_tile_size: u32,
    /// Overlap between neighbouring tiles in pixels (0 = the backend's default).
    pub vae_tile_overlap: u32,
    /// What the UNet predicts: `eps` or `v` to override detection, empty to detect.
    pub prediction: RString,
    /// Seamless (tileable) output: every convolution pads circularly instead of with zeros.
    pub seamless: bool,
    /// A weighted-sum merge to load instead of `checkpoint` alone (empty: no merge); the
    /// first entry is `checkpoint`.
    pub merge: RVec<MergeInput>,
}

/// One input of a checkpoint merge.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct MergeInput {
    pub path: RString,
    pub weight: f64,
}

/// `hiresfix merge`: a weighted sum of the inputs, or with `add_difference` the inputs
/// `[A, B, C]` as `A + (B − C)·multiplier` (A1111's checkpoint merger).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct MergeRequest {
    pub inputs: RVec<MergeInput>,
    pub add_difference: bool,
    pub multiplier: f64,
    pub out: RString,
}

impl LoadRequest {
    pub fn checkpoint_path(&self) -> PathBuf {
        PathBuf::from(self.checkpoint.as_str())
    }

    pub fn vae_path(&self) -> Option<PathBuf> {
        self.vae
            .as_ref()
            .map(|v| PathBuf::from(v.as_str()))
            .into_option()
    }

    pub fn tch_device(&self) -> Result<Device> {
        parse_device(self.device.as_str())
    }

    pub fn tch_kind(&self) -> Result<Kind> {
        parse_dtype(self.dtype.as_str())
    }

    /// The profile's prediction override, `None` to detect.
    pub fn prediction_override(&self) -> Option<&str> {
        Some(self.prediction.as_str()).filter(|p| !p.is_empty())
    }
}

/// One prompt to encode.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct PromptSpec {
    pub text: RString,
    /// A negative prompt (SDXL conditions an empty negative with zeros, as A1111 does).
    pub negative: bool,
}

/// One LoRA of the set a pass runs with.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub path: RString,
    /// For messages: the tag's or the file's name.
    pub name: RString,
    /// Multiplier of the text-encoder layers (A1111's first number).
    pub te: f64,
    /// Multiplier of the UNet layers.
    pub unet: f64,
}

/// The prompts of one pass and what they condition on besides text.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct EncodeRequest {
    pub prompts: RVec<PromptSpec>,
    /// 1 = the family's usual text-encoder layer; k = k - 1 layers earlier (A1111 "Clip skip").
    pub clip_skip: u32,
    /// The pass's image size in pixels (SDXL's size conditioning).
    pub width: u32,
    pub height: u32,
}

impl EncodeRequest {
    /// `negative` then `prompt`, the order CFG batches them in.
    pub fn pair(negative: &str, prompt: &str, clip_skip: usize, width: u32, height: u32) -> Self {
        let spec = |text: &str, negative| PromptSpec {
            text: text.into(),
            negative,
        };
        Self {
            prompts: RVec::from(vec![spec(negative, true), spec(prompt, false)]),
            clip_skip: clip_skip as u32,
            width,
            height,
        }
    }
}

/// What `hiresfix info` prints about a checkpoint, read without running it (an SD 2.x single
/// file with no prediction marker is the exception: its UNet is probed, as A1111 does).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct CheckpointInfo {
    /// Family id, e.g. `sdxl`.
    pub family: RString,
    /// Family name, e.g. `Stable Diffusion XL`.
    pub family_name: RString,
    /// `eps` or `v`.
    pub prediction: RString,
    /// Where the prediction type came from (`v_pred key`, `scheduler config`, `UNet probe`, ...).
    pub prediction_source: RString,
    /// `single file` or `diffusers folder`.
    pub format: RString,
    pub latent_channels: u32,
    /// Pixels per latent cell along each side.
    pub vae_scale_factor: u32,
    /// Latent = VAE posterior × this.
    pub latent_scaling_factor: f64,
    /// e.g. `CLIP-L (12 layers, 768) + OpenCLIP ViT-bigG (32 layers, 1280)`.
    pub text_encoders: RString,
    pub unet_parameters: u64,
    /// The dtype most tensors are stored in (`F16`, `F32`, ...).
    pub stored_dtype: RString,
    /// Bytes on disk of every weight file read.
    pub file_bytes: u64,
    /// Tells text encoders apart: equal for the same text-encoder weights (whatever the
    /// stored precision), different otherwise.
    pub text_encoder_fingerprint: RString,
    /// The family's comfortable image side in pixels.
    pub default_size: u32,
}

/// What `check` asks a backend: the memory one pass of a given size needs.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct MemoryRequest {
    pub checkpoint: RString,
    pub width: u32,
    pub height: u32,
    /// Latents per UNet call: 2 with CFG (conditional and unconditional), 1 without.
    pub unet_batch: u32,
    /// `fp32`, `fp16` or `bf16`: what the weights and activations run in.
    pub dtype: RString,
    /// `cpu`, `cuda`, `cuda:N`: whose free memory to report.
    pub device: RString,
    pub vae_tile_size: u32,
    pub vae_tile_overlap: u32,
}

/// Bytes one pass needs, by part (see the backend's documentation for its formula).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Default, PartialEq)]
pub struct MemoryEstimate {
    /// Every weight the run holds (UNet, text encoders, VAE) in the run's dtype.
    pub weights: u64,
    /// What a process holds before any model: the runtime's code and buffers.
    pub runtime: u64,
    /// Working memory of one UNet call (activations, skip connections, attention).
    pub unet: u64,
    /// Working memory of decoding the pass's latent in one piece.
    pub decode_full: u64,
    /// Working memory of decoding it in tiles.
    pub decode_tiled: u64,
    /// The device's free memory now; 0 when it cannot be read.
    pub free: u64,
}

impl MemoryEstimate {
    /// The peak of the pass: the weights and runtime, plus the larger of a UNet call and the
    /// decode (full or tiled).
    pub fn peak(&self, tiled: bool) -> u64 {
        let decode = match tiled {
            true => self.decode_tiled,
            false => self.decode_full,
        };
        self.runtime + self.weights + self.unet.max(decode)
    }
}

pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        other => other
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| {
                Error(format!(
                    "unknown device `{other}` (use cpu, cuda or cuda:N)"
                ))
            }),
    }
}

/// The inverse of [`parse_device`]: `cpu` or `cuda:N`.
pub fn device_name(device: Device) -> String {
    match device {
        Device::Cuda(n) => format!("cuda:{n}"),
        _ => "cpu".into(),
    }
}

pub fn parse_dtype(name: &str) -> Result<Kind> {
    match name {
        "fp32" => Ok(Kind::Float),
        "fp16" => Ok(Kind::Half),
        "bf16" => Ok(Kind::BFloat16),
        other => Err(Error(format!(
            "unknown dtype `{other}` (use fp32, fp16 or bf16)"
        ))),
    }
}

/// What a backend plugin implements, once per family.
pub trait Backend: Sized + 'static {
    /// Family id, e.g. `sd1`.
    const FAMILY: &'static str;

    /// `Ok(Some(description))` when this family reads `checkpoint`, `Ok(None)` when it is some
    /// other family's, `Err` when the file is unreadable (the message names it and the fix).
    ///
    /// An `Err` from one backend does not stop the host asking the others; if none reads the
    /// file, the host reports the first refusal.
    fn detect(checkpoint: &Path) -> Result<Option<String>>;

    /// What `hiresfix info` prints, for a checkpoint `detect` accepts. `probe`: whether facts
    /// that need the weights (SD 2.x's v-prediction probe) may be worked out; without it
    /// they are reported as undecided.
    fn inspect(checkpoint: &Path, probe: bool) -> Result<CheckpointInfo>;

    fn load(request: &LoadRequest) -> Result<Self>;

    fn info(&self) -> ModelInfo;

    /// One conditioning (a bundle of tensors only this backend interprets) per prompt.
    fn encode_prompts(&self, request: &EncodeRequest) -> Result<Vec<Vec<Tensor>>>;

    /// The denoised latent at `sigma` for each conditioning (no CFG: the host combines them).
    fn denoise(&self, x: &Tensor, sigma: f64, conds: &[&[Tensor]]) -> Result<Vec<Tensor>>;

    /// Scaled latent → pixels in [-1, 1].
    fn decode(&self, latent: &Tensor) -> Result<Tensor>;

    /// Pixels in [-1, 1] → scaled latent.
    fn encode(&self, image: &Tensor) -> Result<Tensor>;

    /// Makes `loras` the LoRA set the model runs with (an empty set: the base weights, exactly);
    /// returns warnings for the user (layers that match nothing).
    fn set_loras(&self, loras: &[LoraSpec]) -> Result<Vec<String>> {
        match loras.is_empty() {
            true => Ok(Vec::new()),
            false => Err(Error(format!(
                "family {} does not support LoRA",
                Self::FAMILY
            ))),
        }
    }

    /// Replaces the VAE the model decodes and encodes with: `vae` a VAE file or folder, `None`
    /// the checkpoint's own. The host uses it for a per-pass VAE instead of loading the whole
    /// checkpoint again; a backend that cannot says so and the host loads a second model.
    fn set_vae(&self, _vae: Option<&str>) -> Result<()> {
        Err(Error(format!(
            "family {} cannot change the VAE of a loaded model",
            Self::FAMILY
        )))
    }

    /// Makes `patches` the UNet patches every following UNet call runs with, in order (empty:
    /// none, the plain UNet exactly); `pass` is the sigma range of the pass they run in.
    fn set_patches(&self, patches: Vec<PatchBox>, _pass: PassSigmas) -> Result<()> {
        match patches.is_empty() {
            true => Ok(()),
            false => Err(Error(format!(
                "family {} does not support UNet patches",
                Self::FAMILY
            ))),
        }
    }

    /// The host will not use `parts` (a set of [`release`] bits) of this model again (a
    /// one-shot run's last pass, then its final decodes), so they may be freed; calls that
    /// need a released part may then fail. The default keeps everything.
    fn release(&self, _parts: u32) -> Result<()> {
        Ok(())
    }

    /// Why a result of this model holds NaN or inf, for the end of an error message: a
    /// parameter of the checkpoint holding NaN/inf, or finite weights that overflowed.
    fn nonfinite_cause(&self) -> String {
        "the model's output overflowed".into()
    }

    /// Merges checkpoints of this family into one file (`hiresfix merge`); returns notes for
    /// the user.
    fn merge(_request: &MergeRequest) -> Result<String> {
        Err(Error(format!(
            "family {} cannot merge checkpoints",
            Self::FAMILY
        )))
    }

    /// Writes a tiny random checkpoint of this family with the real save code (`hiresfix demo`).
    fn write_demo_checkpoint(_path: &Path) -> Result<()> {
        Err(Error(format!("family {} has no demo model", Self::FAMILY)))
    }

    /// The memory one pass needs (`hiresfix check`'s table), from the checkpoint's headers,
    /// without loading it.
    fn estimate_memory(_request: &MemoryRequest) -> Result<MemoryEstimate> {
        Err(Error(format!(
            "family {} gives no memory estimate",
            Self::FAMILY
        )))
    }
}

/// The parts of a loaded model [`Backend::release`] names, as bits.
pub mod release {
    /// The text encoders: no prompt is encoded after this.
    pub const TEXT_ENCODERS: u32 = 1;
    /// The UNet: no denoising after this.
    pub const UNET: u32 = 2;
    /// The VAE's encoder: no image is VAE-encoded after this.
    pub const VAE_ENCODER: u32 = 4;
    /// Everything a decode does not need.
    pub const ALL_BUT_DECODER: u32 = TEXT_ENCODERS | UNET | VAE_ENCODER;
}

type Out<T> = RResult<T, RString>;

#[repr(C)]
#[derive(StableAbi)]
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
    pub release: extern "C" fn(*const c_void, u32) -> Out<()>,
}

/// A loaded model, owned by the host; dropping it frees it inside its plugin.
#[repr(C)]
#[derive(StableAbi)]
pub struct ModelBox {
    obj: *mut c_void,
    vtable: &'static ModelVtable,
}

impl Drop for ModelBox {
    fn drop(&mut self) {
        (self.vtable.drop)(self.obj)
    }
}

fn obj<'a, B>(p: *const c_void) -> &'a B {
    // SAFETY: p is the Box<B> made in `ModelBox::new`, alive until `drop`.
    unsafe { &*(p as *const B) }
}

extern "C" fn drop_model<B: Backend>(p: *mut c_void) {
    // SAFETY: p came from Box::into_raw in ModelBox::new and is dropped once.
    let _ = guard(|| {
        drop(unsafe { Box::from_raw(p as *mut B) });
        Ok(())
    });
}

extern "C" fn info_model<B: Backend>(p: *const c_void) -> Out<ModelInfo> {
    guard(|| Ok(obj::<B>(p).info()))
}

extern "C" fn encode_prompts_model<B: Backend>(
    p: *const c_void,
    request: &EncodeRequest,
) -> Out<RVec<RVec<TensorBox>>> {
    guard(|| {
        let conds = obj::<B>(p).encode_prompts(request)?;
        Ok(conds
            .into_iter()
            .map(|c| c.into_iter().map(TensorBox::new).collect())
            .collect())
    })
}

extern "C" fn denoise_model<B: Backend>(
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
        let out = obj::<B>(p).denoise(&x.to_tensor(), sigma, &refs)?;
        Ok(out.into_iter().map(TensorBox::new).collect())
    })
}

extern "C" fn decode_model<B: Backend>(p: *const c_void, latent: TensorRef<'_>) -> Out<TensorBox> {
    guard(|| obj::<B>(p).decode(&latent.to_tensor()).map(TensorBox::new))
}

extern "C" fn encode_model<B: Backend>(p: *const c_void, image: TensorRef<'_>) -> Out<TensorBox> {
    guard(|| obj::<B>(p).encode(&image.to_tensor()).map(TensorBox::new))
}

extern "C" fn nonfinite_cause_model<B: Backend>(p: *const c_void) -> Out<RString> {
    guard(|| Ok(obj::<B>(p).nonfinite_cause().into()))
}

extern "C" fn set_loras_model<B: Backend>(
    p: *const c_void,
    loras: RSlice<'_, LoraSpec>,
) -> Out<RVec<RString>> {
    guard(|| {
        let warnings = obj::<B>(p).set_loras(loras.as_slice())?;
        Ok(warnings.into_iter().map(RString::from).collect())
    })
}

extern "C" fn set_vae_model<B: Backend>(p: *const c_void, vae: ROption<RStr<'_>>) -> Out<()> {
    guard(|| obj::<B>(p).set_vae(vae.into_option().map(|v| v.as_str())))
}

extern "C" fn set_patches_model<B: Backend>(
    p: *const c_void,
    patches: RVec<PatchBox>,
    pass: PassSigmas,
) -> Out<()> {
    guard(|| obj::<B>(p).set_patches(patches.into_vec(), pass))
}

extern "C" fn release_model<B: Backend>(p: *const c_void, parts: u32) -> Out<()> {
    guard(|| obj::<B>(p).release(parts))
}

struct VtableOf<B>(std::marker::PhantomData<B>);

impl<B: Backend> VtableOf<B> {
    const VTABLE: ModelVtable = ModelVtable {
        drop: drop_model::<B>,
        info: info_model::<B>,
        encode_prompts: encode_prompts_model::<B>,
        denoise: denoise_model::<B>,
        decode: decode_model::<B>,
        encode: encode_model::<B>,
        nonfinite_cause: nonfinite_cause_model::<B>,
        set_loras: set_loras_model::<B>,
        set_vae: set_vae_model::<B>,
        set_patches: set_patches_model::<B>,
        release: release_model::<B>,
    };
}

impl ModelBox {
    pub fn new<B: Backend>(model: B) -> Self {
        Self {
            obj: Box::into_raw(Box::new(model)) as *mut c_void,
            vtable: &VtableOf::<B>::VTABLE,
        }
    }

    pub fn info(&self) -> Result<ModelInfo> {
        from_ffi((self.vtable.info)(self.obj))
    }

    pub fn encode_prompts(&self, request: &EncodeRequest) -> Result<Vec<Vec<Tensor>>> {
        let out = from_ffi((self.vtable.encode_prompts)(self.obj, request))?;
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
        let out = from_ffi((self.vtable.denoise)(
            self.obj,
            TensorRef::new(x),
            sigma,
            RSlice::from_slice(&refs),
        ))?;
        Ok(out.into_iter().map(TensorBox::into_tensor).collect())
    }

    pub fn decode(&self, latent: &Tensor) -> Result<Tensor> {
        from_ffi((self.vtable.decode)(self.obj, TensorRef::new(latent))).map(TensorBox::into_tensor)
    }

    pub fn encode(&self, image: &Tensor) -> Result<Tensor> {
        from_ffi((self.vtable.encode)(self.obj, TensorRef::new(image))).map(TensorBox::into_tensor)
    }

    /// See [`Backend::set_loras`].
    pub fn set_loras(&self, loras: &[LoraSpec]) -> Result<Vec<String>> {
        let out = from_ffi((self.vtable.set_loras)(self.obj, RSlice::from_slice(loras)))?;
        Ok(out.into_iter().map(String::from).collect())
    }

    /// See [`Backend::set_vae`].
    pub fn set_vae(&self, vae: Option<&str>) -> Result<()> {
        from_ffi((self.vtable.set_vae)(self.obj, vae.map(RStr::from).into()))
    }

    /// See [`Backend::set_patches`].
    pub fn set_patches(&self, patches: Vec<PatchBox>, pass: PassSigmas) -> Result<()> {
        from_ffi((self.vtable.set_patches)(
            self.obj,
            RVec::from(patches),
            pass,
        ))
    }

    /// See [`Backend::release`].
    pub fn release(&self, parts: u32) -> Result<()> {
        from_ffi((self.vtable.release)(self.obj, parts))
    }

    /// See [`Backend::nonfinite_cause`].
    pub fn nonfinite_cause(&self) -> Result<String> {
        from_ffi((self.vtable.nonfinite_cause)(self.obj)).map(String::from)
    }
}

/// A registered family, as listed in a plugin's root module.
#[repr(C)]
#[derive(StableAbi)]
pub struct BackendDecl {
    pub family: RString,
    pub detect: extern "C" fn(RStr<'_>) -> Out<ROption<RString>>,
    pub inspect: extern "C" fn(RStr<'_>, bool) -> Out<CheckpointInfo>,
    pub merge: extern "C" fn(&MergeRequest) -> Out<RString>,
    pub load: extern "C" fn(&LoadRequest) -> Out<ModelBox>,
    pub write_demo_checkpoint: extern "C" fn(RStr<'_>) -> Out<()>,
    pub estimate_memory: extern "C" fn(&MemoryRequest) -> Out<MemoryEstimate>,
}

extern "C" fn estimate_trampoline<B: Backend>(request: &MemoryRequest) -> Out<MemoryEstimate> {
    guard(|| B::estimate_memory(request))
}

extern "C" fn detect_trampoline<B: Backend>(path: RStr<'_>) -> Out<ROption<RString>> {
    guard(|| {
        Ok(B::detect(Path::new(path.as_str()))?
            .map(RString::from)
            .into())
    })
}

extern "C" fn inspect_trampoline<B: Backend>(path: RStr<'_>, probe: bool) -> Out<CheckpointInfo> {
    guard(|| B::inspect(Path::new(path.as_str()), probe))
}

extern "C" fn merge_trampoline<B: Backend>(request: &MergeRequest) -> Out<RString> {
    guard(|| B::merge(request).map(RString::from))
}

extern "C" fn demo_trampoline<B: Backend>(path: RStr<'_>) -> Out<()> {
    guard(|| B::write_demo_checkpoint(Path::new(path.as_str())))
}

extern "C" fn load_trampoline<B: Backend>(request: &LoadRequest) -> Out<ModelBox> {
    guard(|| B::load(request).map(ModelBox::new))
}

impl BackendDecl {
    pub fn of<B: Backend>() -> Self {
        Self {
            family: B::FAMILY.into(),
            detect: detect_trampoline::<B>,
            inspect: inspect_trampoline::<B>,
            merge: merge_trampoline::<B>,
            load: load_trampoline::<B>,
            write_demo_checkpoint: demo_trampoline::<B>,
            estimate_memory: estimate_trampoline::<B>,
        }
    }

    /// Host side: see [`Backend::estimate_memory`].
    pub fn run_estimate_memory(&self, request: &MemoryRequest) -> Result<MemoryEstimate> {
        from_ffi((self.estimate_memory)(request))
    }

    /// Host side: see [`Backend::detect`].
    pub fn run_detect(&self, checkpoint: &Path) -> Result<Option<String>> {
        let path = checkpoint.to_string_lossy();
        from_ffi((self.detect)(RStr::from_str(&path))).map(|o| o.into_option().map(String::from))
    }

    /// Host side: see [`Backend::inspect`].
    pub fn run_inspect(&self, checkpoint: &Path, probe: bool) -> Result<CheckpointInfo> {
        let path = checkpoint.to_string_lossy();
        from_ffi((self.inspect)(RStr::from_str(&path), probe))
    }

    /// Host side: see [`Backend::merge`].
    pub fn run_merge(&self, request: &MergeRequest) -> Result<String> {
        from_ffi((self.merge)(request)).map(String::from)
    }

    pub fn run_load(&self, request: &LoadRequest) -> Result<ModelBox> {
        from_ffi((self.load)(request))
    }

    pub fn run_write_demo_checkpoint(&self, path: &Path) -> Result<()> {
        let path = path.to_string_lossy();
        from_ffi((self.write_demo_checkpoint)(RStr::from_str(&path)))
    }
}
