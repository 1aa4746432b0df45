//! Model backends: one per model family (SD 1.x, SD 2.x, SDXL, ...). A backend reads a
//! checkpoint, encodes prompts, predicts the denoised latent at a sigma, and runs the VAE.
//! CFG, sampling and upscaling stay with the host.
use std::path::{Path, PathBuf};

use abi_stable::std_types::{ROption, RString, RVec};
use abi_stable::StableAbi;
use tch::{Device, Kind, Tensor};

use crate::error::{Error, Result};
use crate::options::OptionEntry;
use crate::patch::{PassSigmas, PatchBox};
use crate::sampling::ModelSampling;

/// What the host needs to know about a loaded model.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Family id, e.g. `sd1`.
    pub family: RString,
    /// `eps` or `v` (a rectified-flow model, 1.5: `flow`, its network predicting the velocity).
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
    /// The model's discrete sigma table, ascending (a rectified-flow model, 1.5: its
    /// [`ModelSampling::sigmas`] at `default_size`; what the host samples with is
    /// [`Backend::model_sampling`]).
    pub sigmas: RVec<f64>,
    /// Facts added in host API 1.x, by key (README "What may change in 1.x"); empty in 1.0.
    pub extra: RVec<OptionEntry>,
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
    /// Settings added in host API 1.x, by key; a backend ignores keys it does not know.
    pub options: RVec<OptionEntry>,
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

/// 1.3.0: a textual-inversion embedding file the host found for a prompt word (A1111: the
/// file's stem is the word).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct EmbeddingSpec {
    /// The file's stem: the token sequence that stands for it in prompts.
    pub name: RString,
    pub path: RString,
}

/// 1.3.0: what a model made of one [`EmbeddingSpec`] (A1111's `/sdapi/v1/embeddings` entry).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct EmbeddingState {
    pub name: RString,
    /// Loaded (prompts naming it get its vectors); else skipped, and `note` says why.
    pub loaded: bool,
    pub note: RString,
    /// Vectors (tokens) it stands for.
    pub vectors: u32,
    /// Width of one vector, summed over the text encoders it is for (A1111's `shape`).
    pub shape: u32,
    /// Training step, -1 when the file does not say.
    pub step: i64,
    /// The checkpoint hash and name it was trained on, empty when the file does not say.
    pub sd_checkpoint: RString,
    pub sd_checkpoint_name: RString,
    /// Facts added later, by key.
    pub extra: RVec<OptionEntry>,
}

impl EmbeddingState {
    /// A skipped embedding of which nothing else is known.
    pub fn skipped(name: &str, note: &str) -> Self {
        Self {
            name: name.into(),
            loaded: false,
            note: note.into(),
            vectors: 0,
            shape: 0,
            step: -1,
            sd_checkpoint: RString::new(),
            sd_checkpoint_name: RString::new(),
            extra: RVec::new(),
        }
    }
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
    /// Settings added in host API 1.x, by key; a backend ignores keys it does not know.
    pub options: RVec<OptionEntry>,
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
            options: RVec::new(),
        }
    }
}

/// What `hiresfix info` prints about a checkpoint, read without running it (an SD 2.x single
/// file with no prediction marker is the exception: its UNet is probed, as A1111 does).
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq, Default)]
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
    /// Facts added in host API 1.x, by key; empty in 1.0.
    pub extra: RVec<OptionEntry>,
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
    /// Settings added in host API 1.x, by key; a backend ignores keys it does not know.
    pub options: RVec<OptionEntry>,
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

/// What a backend plugin implements, once per family: what generation needs. The command-line
/// tools (`info`, `merge`, `demo`, `check`'s memory table) are the optional [`BackendTools`].
pub trait Backend: Sized + 'static {
    /// Family id, e.g. `sd1`.
    const FAMILY: &'static str;

    /// `Ok(Some(description))` when this family reads `checkpoint`, `Ok(None)` when it is some
    /// other family's, `Err` when the file is unreadable (the message names it and the fix).
    ///
    /// An `Err` from one backend does not stop the host asking the others; if none reads the
    /// file, the host reports the first refusal.
    fn detect(checkpoint: &Path) -> Result<Option<String>>;

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

    /// 1.2: makes `concat` (`[B, C, h, w]`, C the model's `concat_channels`) the image
    /// conditioning concatenated after the latent's channels in every following UNet call
    /// (an inpainting checkpoint's mask and masked-image latent, as ldm's `c_concat`); `None`
    /// clears it. The default takes none.
    fn set_concat(&self, concat: Option<&Tensor>) -> Result<()> {
        match concat {
            None => Ok(()),
            Some(_) => Err(Error(format!(
                "family {} takes no image conditioning (inpainting)",
                Self::FAMILY
            ))),
        }
    }

    /// 1.3.0: makes `embeddings` the textual-inversion set prompts are read with (a prompt
    /// token sequence equal to a name's tokens is replaced by its vectors); one state per
    /// embedding, a skipped one with the reason (another family's width). The default loads
    /// none and says so for each.
    fn set_embeddings(&self, embeddings: &[EmbeddingSpec]) -> Result<Vec<EmbeddingState>> {
        let note = format!(
            "family {} takes no textual-inversion embeddings",
            Self::FAMILY
        );
        Ok(embeddings
            .iter()
            .map(|e| EmbeddingState::skipped(e.name.as_str(), &note))
            .collect())
    }

    /// 1.3.0: the names of the loaded embeddings `prompts` use, each once, in the order they
    /// first appear (what A1111's infotext `TI hashes` lists). The default: none.
    fn used_embeddings(&self, _prompts: &[&str]) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// The host will not use `parts` (a set of [`release`] bits) of this model again (a
    /// one-shot run's last pass, then its final decodes), so they may be freed; calls that
    /// need a released part may then fail. The default keeps everything.
    fn release(&self, _parts: u32) -> Result<()> {
        Ok(())
    }

    /// 1.5.0: the model's sampling for a pass of `width × height` pixels (the host asks once per
    /// pass, before noising its start): discrete eps / v, or rectified flow with the shift of
    /// that size (see [`crate::sampling`]). The default: discrete over `info().sigmas`.
    fn model_sampling(&self, _width: u32, _height: u32) -> Result<ModelSampling> {
        Ok(ModelSampling::discrete(self.info().sigmas.to_vec()))
    }

    /// Why a result of this model holds NaN or inf, for the end of an error message: a
    /// parameter of the checkpoint holding NaN/inf, or finite weights that overflowed.
    fn nonfinite_cause(&self) -> String {
        "the model's output overflowed".into()
    }
}

/// The command-line tools of a family (optional: a backend without them generates images;
/// `hiresfix info`, `merge`, `demo` and `check`'s memory table then say the family lacks them).
/// A backend that has them is exported under `backends_with_tools:` in [`crate::export_plugin!`].
pub trait BackendTools: Backend {
    /// What `hiresfix info` prints, for a checkpoint `detect` accepts. `probe`: whether facts
    /// that need the weights (SD 2.x's v-prediction probe) may be worked out; without it
    /// they are reported as undecided.
    fn inspect(checkpoint: &Path, probe: bool) -> Result<CheckpointInfo>;

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
