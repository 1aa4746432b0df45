//! The TOML profile (README "A profile"): parsing with line/column errors, `--set` overrides, defaults.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Deserializer, Serialize};

use crate::defaults::{self, check, Invalid};
use crate::stages::{self, Target};

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// -1 picks a random seed; image i of a batch uses seed + i (A1111).
    #[serde(default = "default_seed")]
    pub seed: i64,
    #[serde(default = "default_batch", deserialize_with = "at_least_one")]
    pub batch: u32,
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub negative: String,
    /// Unset: the family's default ([`defaults::family_cfg`]: A1111's 7, Flux's 1).
    #[serde(
        default,
        deserialize_with = "opt_cfg",
        skip_serializing_if = "Option::is_none"
    )]
    pub cfg: Option<f64>,
    /// Flux dev's distilled guidance (the model's own, separate from `cfg`); unset: the
    /// backend's default (3.5). Families without one ignore it.
    #[serde(
        default,
        deserialize_with = "opt_guidance",
        skip_serializing_if = "Option::is_none"
    )]
    pub guidance: Option<f64>,
    #[serde(default)]
    pub device: DeviceChoice,
    #[serde(default)]
    pub dtype: DtypeChoice,
    #[serde(default)]
    pub tiling: bool,
    #[serde(default = "default_output")]
    pub output: String,
    #[serde(default)]
    pub save_passes: bool,
    #[serde(default)]
    pub plugin_dirs: Vec<PathBuf>,
    #[serde(default)]
    pub lora_dirs: Vec<PathBuf>,
    /// Where textual-inversion embeddings are found; a prompt names one by its file stem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embedding_dirs: Vec<PathBuf>,
    /// Where model upscalers (ESRGAN family) are looked up by file stem.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub upscaler_dirs: Vec<PathBuf>,
    /// Where live previews look for a TAESD decoder (`taesd_decoder.safetensors`,
    /// `taesdxl_decoder.safetensors`; A1111's `models/VAE-approx`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vae_approx_dirs: Vec<PathBuf>,
    /// A live preview every N sampler steps (steps 0, N, 2N, … of each pass, as A1111's
    /// `show_progress_every_n_steps`); 0 = none. The command line writes them to `--preview`.
    #[serde(
        default,
        deserialize_with = "preview_every",
        skip_serializing_if = "is_zero_u32"
    )]
    pub preview_every: u32,
    /// Plugin file name → expected sha256 (hex); a mismatch refuses that plugin.
    #[serde(default)]
    pub plugin_sha256: BTreeMap<String, String>,
    #[serde(default)]
    pub vae_tiling: VaeTiling,
    /// Tile side in pixels for tiled VAE decode/encode (0 = the backend's default).
    #[serde(default)]
    pub vae_tile_size: u32,
    /// Overlap between tiles in pixels (0 = the backend's default).
    #[serde(default)]
    pub vae_tile_overlap: u32,
    /// A1111's "Eta noise seed delta": seeds the step-noise stream with seed + i + delta.
    #[serde(default)]
    pub eta_noise_seed_delta: i64,
    /// A1111's option of the same name: a later pass on pass 1's checkpoint encodes its
    /// prompts with pass 1's LoRA set (its own runs the UNet).
    #[serde(default, skip_serializing_if = "is_false")]
    pub hires_fix_use_firstpass_conds: bool,
    /// A1111's variation seed: -1 picks a random one; image i of a batch uses subseed + i.
    #[serde(default = "default_seed", skip_serializing_if = "is_random")]
    pub subseed: i64,
    /// How far each pass's initial noise moves from the seed's towards the subseed's (slerp):
    /// 0 (off) to 1. Above 0 every image of a batch keeps the seed and varies the subseed.
    #[serde(
        default,
        deserialize_with = "subseed_strength",
        skip_serializing_if = "is_zero"
    )]
    pub subseed_strength: f64,
    /// A1111's "Seed resize from": the noise is drawn at this size (px) and pasted centred
    /// into each pass's latent; 0 = off (both must be set).
    #[serde(
        default,
        deserialize_with = "seed_resize",
        skip_serializing_if = "is_zero_u32"
    )]
    pub seed_resize_from_w: u32,
    #[serde(
        default,
        deserialize_with = "seed_resize",
        skip_serializing_if = "is_zero_u32"
    )]
    pub seed_resize_from_h: u32,
    /// UNet patches of every pass (a pass's own `patches` replaces the list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patches: Vec<PatchEntry>,
    /// The automatic stage plan's last size (README "Stage plan"): with one pass table, the
    /// passes are planned once the model's native size is known ([`Self::fill_native_size`]),
    /// which writes them out and clears this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    /// The stage plan's upscale factor per stage ([`defaults::STAGE_FACTOR`] when unset).
    #[serde(
        default,
        deserialize_with = "opt_stage_factor",
        skip_serializing_if = "Option::is_none"
    )]
    pub stage_factor: Option<f64>,
    #[serde(default)]
    pub model: ModelSection,
    #[serde(rename = "pass", default)]
    pub passes: Vec<Pass>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum DtypeChoice {
    #[default]
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum VaeTiling {
    #[default]
    Auto,
    On,
    Off,
}

/// `auto`, `cpu`, `cuda` or `cuda:N`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
#[serde(into = "String")]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
}

impl From<DeviceChoice> for String {
    fn from(d: DeviceChoice) -> String {
        match d {
            DeviceChoice::Auto => "auto".into(),
            DeviceChoice::Cpu => "cpu".into(),
            DeviceChoice::Cuda(n) => format!("cuda:{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for DeviceChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use host_api::tch::Device;
        let s = String::deserialize(d)?;
        match (s.as_str(), host_api::backend::parse_device(&s)) {
            ("auto", _) => Ok(Self::Auto),
            (_, Ok(Device::Cuda(n))) => Ok(Self::Cuda(n)),
            (_, Ok(_)) => Ok(Self::Cpu),
            (_, Err(_)) => Err(serde::de::Error::custom(format!(
                "device `{s}` is not one of auto, cpu, cuda, cuda:N"
            ))),
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// Single-file LDM `.safetensors` (Civitai) or a diffusers folder.
    pub checkpoint: Option<String>,
    pub merge: Option<Vec<MergeEntry>>,
    pub vae: Option<String>,
    #[serde(default)]
    pub loras: Vec<LoraEntry>,
    #[serde(default = "default_clip_skip", deserialize_with = "at_least_one")]
    pub clip_skip: u32,
    /// What the UNet predicts, only to override detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prediction: Option<PredictionChoice>,
    /// A transformer-only checkpoint's text-encoder files (ComfyUI's split SD3 files: clip_l,
    /// clip_g, t5xxl), passed to the backend as `text_encoder` load options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub text_encoders: Vec<String>,
    /// A T5 tokenizer (tokenizer.json, spiece.model or a folder with one) for a checkpoint
    /// that carries none, passed as the `t5_tokenizer` load option.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t5_tokenizer: Option<String>,
    /// Where a flow model's T5 runs: `cpu`, or `device` (the run's, the default); passed as
    /// the `t5` load option.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "t5_placement"
    )]
    pub t5: Option<String>,
    /// How a Flux transformer's linear weights are held: `fp8_e4m3fn` (ComfyUI's
    /// `weight_dtype`, Forge's "Diffusion in Low Bits") or `default` (the run's dtype); passed
    /// as the `weight_dtype` load option.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "weight_dtype"
    )]
    pub weight_dtype: Option<String>,
}

impl Default for ModelSection {
    fn default() -> Self {
        Self {
            checkpoint: None,
            merge: None,
            vae: None,
            loras: Vec::new(),
            clip_skip: defaults::CLIP_SKIP,
            prediction: None,
            text_encoders: Vec::new(),
            t5_tokenizer: None,
            t5: None,
            weight_dtype: None,
        }
    }
}

/// `[model] prediction`: `eps` or `v`.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum PredictionChoice {
    Eps,
    V,
}

impl PredictionChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            PredictionChoice::Eps => "eps",
            PredictionChoice::V => "v",
        }
    }
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MergeEntry {
    pub checkpoint: String,
    #[serde(deserialize_with = "merge_weight")]
    pub weight: f64,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LoraEntry {
    pub path: String,
    #[serde(default = "default_lora_weight", deserialize_with = "lora_weight")]
    pub weight: f64,
}

/// One UNet patch and its options: `{ name = "deep_shrink", end = 0.35 }`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq)]
pub struct PatchEntry {
    pub name: String,
    #[serde(flatten)]
    pub options: BTreeMap<String, toml::Value>,
}

/// One pass. Pass 1 is txt2img; later passes upscale and re-denoise. Every `None` is filled by
/// [`Profile::resolve`].
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Pass {
    #[serde(
        default,
        deserialize_with = "opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub width: Option<u32>,
    #[serde(
        default,
        deserialize_with = "opt_size",
        skip_serializing_if = "Option::is_none"
    )]
    pub height: Option<u32>,
    #[serde(
        default,
        deserialize_with = "opt_scale",
        skip_serializing_if = "Option::is_none"
    )]
    pub scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upscaler: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_steps",
        skip_serializing_if = "Option::is_none"
    )]
    pub steps: Option<u32>,
    #[serde(
        default,
        deserialize_with = "opt_denoise",
        skip_serializing_if = "Option::is_none"
    )]
    pub denoise: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sampler: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sampler_options: BTreeMap<String, toml::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negative: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_cfg",
        skip_serializing_if = "Option::is_none"
    )]
    pub cfg: Option<f64>,
    /// This pass's distilled guidance (Forge's `hr_distilled_cfg` for the hires pass).
    #[serde(
        default,
        deserialize_with = "opt_guidance",
        skip_serializing_if = "Option::is_none"
    )]
    pub guidance: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loras: Option<Vec<LoraEntry>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vae: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_at_least_one",
        skip_serializing_if = "Option::is_none"
    )]
    pub clip_skip: Option<u32>,
    /// This pass's UNet patches, replacing the top-level list (`[]`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patches: Option<Vec<PatchEntry>>,
    /// img2img (pass 1 only): the image pass 1 starts from, its `denoise` the strength.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
    /// Inpainting (pass 1 only): white repaints, black keeps (or its transparency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_mask_blur",
        skip_serializing_if = "Option::is_none"
    )]
    pub mask_blur: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_invert: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inpainting_fill: Option<InpaintingFill>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inpaint_full_res: Option<bool>,
    #[serde(
        default,
        deserialize_with = "opt_inpaint_padding",
        skip_serializing_if = "Option::is_none"
    )]
    pub inpaint_full_res_padding: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resize_mode: Option<ResizeMode>,
    #[serde(
        default,
        deserialize_with = "opt_mask_weight",
        skip_serializing_if = "Option::is_none"
    )]
    pub inpainting_mask_weight: Option<f64>,
    /// A1111's refiner: the checkpoint that continues this pass's sampling once
    /// `refiner_switch_at` of its schedule is done (same sigmas, same latent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refiner_checkpoint: Option<String>,
    #[serde(
        default,
        deserialize_with = "opt_refiner_switch_at",
        skip_serializing_if = "Option::is_none"
    )]
    pub refiner_switch_at: Option<f64>,
    /// Tiled diffusion for this pass (`tiled = { method = "mixture", tile = 96, ... }`), or
    /// `"auto"`: tiled when its UNet call would not fit ([`crate::auto_tiled`]).
    #[serde(
        default,
        deserialize_with = "opt_tiled",
        skip_serializing_if = "Option::is_none"
    )]
    pub tiled: Option<crate::tiled::setting::TiledSetting>,
}

/// A1111's "Masked content": what the masked area starts from.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub enum InpaintingFill {
    /// Colours blurred in from around the mask (`masking.fill`).
    #[serde(rename = "fill")]
    Fill,
    #[default]
    #[serde(rename = "original")]
    Original,
    #[serde(rename = "latent noise")]
    LatentNoise,
    #[serde(rename = "latent nothing")]
    LatentNothing,
}

impl InpaintingFill {
    /// A1111's `inpainting_fill` number and its infotext words.
    pub const ALL: [(InpaintingFill, &'static str); 4] = [
        (InpaintingFill::Fill, "fill"),
        (InpaintingFill::Original, "original"),
        (InpaintingFill::LatentNoise, "latent noise"),
        (InpaintingFill::LatentNothing, "latent nothing"),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(f, _)| *f == self)
            .map_or("original", |(_, s)| s)
    }
}

/// A1111's resize modes of the init image to pass 1's size.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub enum ResizeMode {
    #[default]
    #[serde(rename = "just resize")]
    JustResize,
    #[serde(rename = "crop and resize")]
    CropAndResize,
    #[serde(rename = "resize and fill")]
    ResizeAndFill,
    /// Encoded at its own size, the latent resized (bilinear) to pass 1's.
    #[serde(rename = "latent upscale")]
    LatentUpscale,
}

impl ResizeMode {
    /// A1111's `resize_mode` numbers 0..=3.
    pub const ALL: [ResizeMode; 4] = [
        ResizeMode::JustResize,
        ResizeMode::CropAndResize,
        ResizeMode::ResizeAndFill,
        ResizeMode::LatentUpscale,
    ];
}

impl Pass {
    /// The img2img keys this pass sets, by name.
    pub fn img2img_keys(&self) -> Vec<&'static str> {
        let set = [
            ("init_image", self.init_image.is_some()),
            ("mask", self.mask.is_some()),
            ("mask_blur", self.mask_blur.is_some()),
            ("mask_invert", self.mask_invert.is_some()),
            ("inpainting_fill", self.inpainting_fill.is_some()),
            ("inpaint_full_res", self.inpaint_full_res.is_some()),
            (
                "inpaint_full_res_padding",
                self.inpaint_full_res_padding.is_some(),
            ),
            ("resize_mode", self.resize_mode.is_some()),
            (
                "inpainting_mask_weight",
                self.inpainting_mask_weight.is_some(),
            ),
        ];
        set.into_iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| k)
            .collect()
    }
}

// serde's `default = "…"` names functions; the values are [`defaults`]'.
fn default_seed() -> i64 {
    defaults::SEED
}
fn is_false(v: &bool) -> bool {
    !*v
}
fn is_random(seed: &i64) -> bool {
    *seed == defaults::SEED
}
fn is_zero(v: &f64) -> bool {
    *v == 0.0
}
fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn default_batch() -> u32 {
    defaults::BATCH
}
fn default_clip_skip() -> u32 {
    defaults::CLIP_SKIP
}
fn default_lora_weight() -> f64 {
    defaults::LORA_WEIGHT
}
fn default_output() -> String {
    defaults::OUTPUT.into()
}

/// A field read under one of [`defaults`]' range rules (an error at its line and column).
fn checked<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    rule: defaults::Rule<T>,
) -> Result<T, D::Error> {
    rule(T::deserialize(d)?).map_err(serde::de::Error::custom)
}

/// `[model] t5`: `cpu` or `device`; anything else names the key and both values.
fn t5_placement<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = String::deserialize(d)?;
    match value.as_str() {
        "cpu" | "device" => Ok(Some(value)),
        other => Err(serde::de::Error::custom(format!(
            "`[model] t5 = \"{other}\"`: expected \"cpu\" (T5 on the CPU, its output moved to \
             the run's device) or \"device\" (the run's device, the default)"
        ))),
    }
}
/// `[model] weight_dtype`: `fp8_e4m3fn` or `default`; anything else names the key and both.
fn weight_dtype<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = String::deserialize(d)?;
    match value.as_str() {
        "fp8_e4m3fn" | "default" => Ok(Some(value)),
        other => Err(serde::de::Error::custom(format!(
            "`[model] weight_dtype = \"{other}\"`: expected \"fp8_e4m3fn\" (a Flux \
             transformer's linear weights held in fp8, half of bf16) or \"default\" (the run's \
             dtype)"
        ))),
    }
}
fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, defaults::at_least_one)
}
fn lora_weight<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(d, defaults::lora_weight)
}
fn merge_weight<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(d, defaults::merge_weight)
}
fn subseed_strength<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    checked(d, defaults::subseed_strength)
}
fn preview_every<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, defaults::preview_every).map(|v| v as u32)
}
fn seed_resize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    checked(d, defaults::seed_resize)
}
fn opt<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
    rule: defaults::Rule<T>,
) -> Result<Option<T>, D::Error> {
    checked(d, rule).map(Some)
}
fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    opt(d, defaults::size)
}
fn opt_scale<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    opt(d, defaults::scale)
}
fn opt_steps<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    opt(d, defaults::steps)
}
fn opt_denoise<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    opt(d, defaults::denoise)
}
fn opt_cfg<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    opt(d, defaults::cfg)
}
fn opt_guidance<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    opt(d, defaults::guidance)
}
fn opt_mask_blur<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    opt(d, defaults::mask_blur)
}
fn opt_inpaint_padding<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    opt(d, defaults::inpaint_padding)
}
fn opt_mask_weight<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    opt(d, defaults::mask_weight)
}
fn opt_refiner_switch_at<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    opt(d, defaults::refiner_switch_at)
}
fn opt_stage_factor<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    opt(d, defaults::stage_factor)
}

fn opt_tiled<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::tiled::setting::TiledSetting>, D::Error> {
    opt(d, crate::tiled::setting::TiledSetting::checked)
}

fn opt_at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    opt(d, defaults::at_least_one)
}

/// Every key a profile may hold, by table, for "did you mean" hints.
const TOP_KEYS: &[&str] = &[
    "seed",
    "batch",
    "prompt",
    "negative",
    "cfg",
    "guidance",
    "device",
    "dtype",
    "tiling",
    "output",
    "save_passes",
    "plugin_dirs",
    "lora_dirs",
    "embedding_dirs",
    "upscaler_dirs",
    "vae_approx_dirs",
    "preview_every",
    "plugin_sha256",
    "vae_tiling",
    "vae_tile_size",
    "vae_tile_overlap",
    "eta_noise_seed_delta",
    "hires_fix_use_firstpass_conds",
    "subseed",
    "subseed_strength",
    "seed_resize_from_w",
    "seed_resize_from_h",
    "patches",
    "target",
    "stage_factor",
    "model",
    "pass",
];
const MODEL_KEYS: &[&str] = &[
    "checkpoint",
    "merge",
    "vae",
    "loras",
    "clip_skip",
    "prediction",
    "text_encoders",
    "t5_tokenizer",
    "t5",
];
const PASS_KEYS: &[&str] = &[
    "width",
    "height",
    "scale",
    "upscaler",
    "steps",
    "denoise",
    "sampler",
    "schedule",
    "sampler_options",
    "prompt",
    "negative",
    "cfg",
    "guidance",
    "checkpoint",
    "loras",
    "vae",
    "clip_skip",
    "patches",
    "init_image",
    "mask",
    "mask_blur",
    "mask_invert",
    "inpainting_fill",
    "inpaint_full_res",
    "inpaint_full_res_padding",
    "resize_mode",
    "inpainting_mask_weight",
    "refiner_checkpoint",
    "refiner_switch_at",
    "tiled",
];

/// Levenshtein distance, for suggesting the nearest valid name.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

pub fn nearest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let word = word.to_lowercase();
    candidates
        .into_iter()
        .min_by_key(|c| edit_distance(&word, &c.to_lowercase()))
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// Rewrites serde's "unknown field `x`, expected one of ..." into a hint with the nearest key.
fn explain(message: &str) -> String {
    let message = message.trim();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((field, _)) = rest.split_once('`') {
            let expected: Vec<&str> = message.split('`').skip(3).step_by(2).collect();
            let table = if expected.contains(&"denoise") {
                PASS_KEYS
            } else if expected.contains(&"clip_skip") && expected.contains(&"merge") {
                MODEL_KEYS
            } else if expected.contains(&"seed") {
                TOP_KEYS
            } else {
                &expected[..]
            };
            if let Some(best) = nearest(field, table.iter().copied()) {
                return format!("unknown key `{field}`; did you mean `{best}`?");
            }
        }
    }
    message.to_owned()
}

impl Profile {
    /// Parses profile text; errors carry `file:line:col` and the nearest valid key.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        toml::from_str::<Profile>(text).map_err(|e| {
            let place = e.span().map(|s| line_col(text, s.start));
            match place {
                Some((line, col)) => anyhow!("{origin}:{line}:{col}: {}", explain(e.message())),
                None => anyhow!("{origin}: {}", explain(e.message())),
            }
        })
    }

    /// The generation settings of a profile someone else wrote (a PNG's embedded profile),
    /// without what would load code or write files where it says: plugin folders and pins,
    /// LoRA folders and the output path fall back to this user's defaults.
    /// Every key at its default and no pass (for importers to fill).
    pub fn empty() -> Self {
        toml::from_str("").expect("every profile key has a default")
    }

    pub fn untrusted(mut self) -> Self {
        self.plugin_dirs.clear();
        self.plugin_sha256.clear();
        self.lora_dirs.clear();
        self.embedding_dirs.clear();
        self.vae_approx_dirs.clear();
        self.output = default_output();
        self
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read profile {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Applies `key=value` overrides (dotted keys, passes numbered from 1) and re-validates.
    pub fn with_overrides(&self, sets: &[String]) -> Result<Self> {
        if sets.is_empty() {
            return Ok(self.clone());
        }
        let mut doc = toml::Value::try_from(self).context("profile cannot be re-encoded")?;
        for set in sets {
            let (key, raw) = set.split_once('=').ok_or_else(|| {
                anyhow!("--set {set}: expected key=value, e.g. --set pass.2.denoise=0.35")
            })?;
            set_path(&mut doc, key.trim(), parse_value(raw.trim()))
                .with_context(|| format!("--set {set}"))?;
        }
        let text = toml::to_string(&doc).context("profile cannot be re-encoded")?;
        toml::from_str::<Profile>(&text).map_err(|e| anyhow!("--set: {}", explain(e.message())))
    }

    /// Every range rule of [`defaults`], on a profile however it was made (a TOML profile has
    /// passed them already, field by field), and pass 1 being txt2img.
    pub fn validate(&self) -> Result<(), Invalid> {
        if let Some(first) = self.passes.first() {
            let img2img = first.init_image.is_some();
            if first.scale.is_some()
                || first.upscaler.is_some()
                || (first.denoise.is_some() && !img2img)
            {
                return Err(Invalid {
                    key: "pass.1".into(),
                    message: defaults::FIRST_PASS_RULE.into(),
                });
            }
            let keys = first.img2img_keys();
            if !img2img && !keys.is_empty() {
                return Err(Invalid {
                    key: format!("pass.1.{}", keys[0]),
                    message: format!("pass.1.{} needs pass.1.init_image (the image to start from), e.g. init_image = \"in.png\"", keys[0]),
                });
            }
        }
        if let Some(target) = self.target {
            if self.passes.len() > 1 {
                return Err(Invalid {
                    key: "target".into(),
                    message: format!("target = \"{target}\" plans the passes itself: keep one [[pass]] table (pass 1) or remove target"),
                });
            }
        } else if let Some(f) = self.stage_factor {
            return Err(Invalid {
                key: "stage_factor".into(),
                message: format!("stage_factor = {} needs target (the size the stages reach), e.g. target = \"4096x2304\"", crate::errors::shown(f)),
            });
        }
        if let Some(f) = self.stage_factor {
            check("stage_factor", f, defaults::stage_factor)?;
        }
        for (i, pass) in self.passes.iter().enumerate() {
            if pass.refiner_switch_at.is_some() && pass.refiner_checkpoint.is_none() {
                return Err(Invalid {
                    key: format!("pass.{}.refiner_switch_at", i + 1),
                    message: format!("pass.{}.refiner_switch_at needs pass.{}.refiner_checkpoint (the model that takes over), e.g. refiner_checkpoint = \"sd_xl_refiner_1.0.safetensors\"", i + 1, i + 1),
                });
            }
        }
        for (i, pass) in self.passes.iter().enumerate().skip(1) {
            if let Some(key) = pass.img2img_keys().first() {
                return Err(Invalid {
                    key: format!("pass.{}.{key}", i + 1),
                    message: format!("pass.{}.{key}: img2img keys ({}) belong to pass 1; a later pass starts from the pass before it", i + 1, defaults::IMG2IMG_KEYS),
                });
            }
        }
        check("batch", self.batch, defaults::at_least_one)?;
        if let Some(v) = self.cfg {
            check("cfg", v, defaults::cfg)?;
        }
        if let Some(v) = self.guidance {
            check("guidance", v, defaults::guidance)?;
        }
        check(
            "subseed_strength",
            self.subseed_strength,
            defaults::subseed_strength,
        )?;
        check(
            "seed_resize_from_w",
            self.seed_resize_from_w,
            defaults::seed_resize,
        )?;
        check(
            "seed_resize_from_h",
            self.seed_resize_from_h,
            defaults::seed_resize,
        )?;
        check(
            "model.clip_skip",
            self.model.clip_skip,
            defaults::at_least_one,
        )?;
        for (i, m) in self.model.merge.iter().flatten().enumerate() {
            check(
                &format!("model.merge.{}.weight", i + 1),
                m.weight,
                defaults::weight,
            )?;
        }
        for (i, l) in self.model.loras.iter().enumerate() {
            check(
                &format!("model.loras.{}.weight", i + 1),
                l.weight,
                defaults::weight,
            )?;
        }
        for (i, pass) in self.passes.iter().enumerate() {
            let key = |k: &str| format!("pass.{}.{k}", i + 1);
            for (j, l) in pass.loras.iter().flatten().enumerate() {
                check(
                    &key(&format!("loras.{}.weight", j + 1)),
                    l.weight,
                    defaults::weight,
                )?;
            }
            for (k, side) in [("width", pass.width), ("height", pass.height)] {
                if let Some(v) = side {
                    check(&key(k), v, defaults::size)?;
                }
            }
            if let Some(v) = pass.scale {
                check(&key("scale"), v, defaults::scale)?;
            }
            if let Some(v) = pass.steps {
                check(&key("steps"), v, defaults::steps)?;
            }
            if let Some(v) = pass.denoise {
                check(&key("denoise"), v, defaults::denoise)?;
            }
            if let Some(v) = pass.cfg {
                check(&key("cfg"), v, defaults::cfg)?;
            }
            if let Some(v) = pass.guidance {
                check(&key("guidance"), v, defaults::guidance)?;
            }
            if let Some(v) = pass.clip_skip {
                check(&key("clip_skip"), v, defaults::at_least_one)?;
            }
            if let Some(v) = pass.mask_blur {
                check(&key("mask_blur"), v, defaults::mask_blur)?;
            }
            if let Some(v) = pass.inpaint_full_res_padding {
                check(
                    &key("inpaint_full_res_padding"),
                    v,
                    defaults::inpaint_padding,
                )?;
            }
            if let Some(v) = pass.inpainting_mask_weight {
                check(&key("inpainting_mask_weight"), v, defaults::mask_weight)?;
            }
            if let Some(v) = pass.tiled {
                check(
                    &key("tiled"),
                    v,
                    crate::tiled::setting::TiledSetting::checked,
                )?;
            }
        }
        Ok(())
    }

    /// Checks the profile ([`Self::validate`]) and fills every unset value from [`defaults`]:
    /// no pass is one txt2img pass; pass 1 runs [`defaults::STEPS`] steps of
    /// [`defaults::SAMPLER`], square when it names one side, at `native_size` (the model's own
    /// side) when it names neither; a later pass upscales by [`defaults::HIRES_SCALE`] unless it
    /// gives a size, with [`defaults::HIRES_UPSCALER`] at [`defaults::HIRES_DENOISE`], pass 1's
    /// steps (A1111) and the previous pass's sampler (and its schedule, when the sampler is the
    /// same). With `native_size` `None` (the model is not read yet) pass 1's size is left to
    /// [`Self::fill_native_size`]; nothing else needs the model. Resolving a resolved profile
    /// changes nothing.
    pub fn resolve(&mut self, native_size: Option<u32>) -> Result<()> {
        if self.passes.is_empty() {
            self.passes.push(Pass::default());
        }
        self.validate().map_err(|e| anyhow!(e))?;
        let first = &mut self.passes[0];
        match (first.width, first.height) {
            (Some(w), None) => first.height = Some(w),
            (None, Some(h)) => first.width = Some(h),
            _ => {}
        }
        first.steps.get_or_insert(defaults::STEPS);
        if first.init_image.is_some() {
            first.denoise.get_or_insert(defaults::IMG2IMG_DENOISE);
        }
        first
            .sampler
            .get_or_insert_with(|| defaults::SAMPLER.into());
        self.fill_later_passes();
        if let Some(size) = native_size {
            self.fill_native_size(size)?;
        }
        Ok(())
    }

    /// Every later pass's unset values: [`defaults::HIRES_SCALE`] unless it gives a size,
    /// [`defaults::HIRES_UPSCALER`] at [`defaults::HIRES_DENOISE`], pass 1's steps and the
    /// previous pass's sampler (and schedule, when the sampler is the same).
    fn fill_later_passes(&mut self) {
        let base_steps = self.passes[0].steps;
        for i in 1..self.passes.len() {
            let prev = self.passes[i - 1].clone();
            let pass = &mut self.passes[i];
            if pass.scale.is_none() && pass.width.is_none() && pass.height.is_none() {
                pass.scale = Some(defaults::HIRES_SCALE);
            }
            pass.upscaler
                .get_or_insert_with(|| defaults::HIRES_UPSCALER.into());
            pass.steps = pass.steps.or(base_steps);
            pass.denoise.get_or_insert(defaults::HIRES_DENOISE);
            pass.sampler = pass.sampler.clone().or(prev.sampler.clone());
            if pass.schedule.is_none() && pass.sampler == prev.sampler {
                pass.schedule = prev.schedule;
            }
        }
    }

    /// Pass 1 at the model's own side `size` when it names neither side, and a `target`'s
    /// stage plan ([`stages::stage_sizes`]): the part of [`Self::resolve`] that needs the
    /// model. The plan's passes are written out (sizes, then later-pass defaults as
    /// [`Self::resolve`] fills them) and `target` and `stage_factor` cleared, so the resolved
    /// profile runs, and replays, as the plain chain of passes it is.
    pub fn fill_native_size(&mut self, size: u32) -> Result<()> {
        let Some(first) = self.passes.first_mut() else {
            return Ok(());
        };
        let from = match (first.width, first.height) {
            (Some(w), Some(h)) => (w, h, format!("pass 1's {w}x{h} px area")),
            _ => (size, size, format!("the model's native {size} px area")),
        };
        if first.width.is_none() && first.height.is_none() {
            (first.width, first.height) = (Some(size), Some(size));
        }
        let Some(target) = self.target else {
            return Ok(());
        };
        let factor = self.stage_factor.unwrap_or(defaults::STAGE_FACTOR);
        let area = f64::from(from.0) * f64::from(from.1);
        let sizes = stages::stage_sizes(area, &from.2, target, factor).map_err(|e| anyhow!(e))?;
        use crate::tiled::setting::TiledSetting;
        // Pass 1's `tiled` carries to every stage: a table tiles them all with its settings,
        // `"auto"` (or no key) tiles those whose UNet call would not fit.
        let stage_tiles = self.passes[0]
            .tiled
            .unwrap_or(TiledSetting::Auto(Default::default()));
        for (i, (w, h)) in sizes.into_iter().enumerate() {
            if i == 0 {
                (self.passes[0].width, self.passes[0].height) = (Some(w), Some(h));
            } else {
                self.passes.push(Pass {
                    width: Some(w),
                    height: Some(h),
                    tiled: Some(stage_tiles),
                    ..Default::default()
                });
            }
        }
        self.fill_later_passes();
        (self.target, self.stage_factor) = (None, None);
        Ok(())
    }

    /// [`Self::resolve`] with the model's own side known.
    pub fn resolve_defaults(&mut self, default_size: u32) -> Result<()> {
        self.resolve(Some(default_size))
    }
}

fn parse_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(doc: &mut toml::Value, key: &str, value: toml::Value) -> Result<()> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut node = doc;
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        node = match node {
            toml::Value::Table(table) => {
                if last {
                    table.insert((*part).to_owned(), value);
                    return Ok(());
                }
                let next_is_index = parts[i + 1].parse::<usize>().is_ok();
                table.entry((*part).to_owned()).or_insert_with(|| {
                    if next_is_index {
                        toml::Value::Array(vec![])
                    } else {
                        toml::Value::Table(Default::default())
                    }
                })
            }
            toml::Value::Array(items) => {
                let n: usize = part
                    .parse()
                    .map_err(|_| anyhow!("`{part}` is not a pass number"))?;
                if n == 0 || n > items.len() + 1 {
                    bail!(
                        "pass {n} does not exist (the profile has {} passes; passes count from 1)",
                        items.len()
                    );
                }
                if n == items.len() + 1 {
                    items.push(toml::Value::Table(Default::default()));
                }
                if last {
                    items[n - 1] = value;
                    return Ok(());
                }
                &mut items[n - 1]
            }
            _ => bail!("`{part}` is inside a value that is not a table"),
        };
    }
    Ok(())
}

/// A path from a profile: relative ones are looked up beside the profile first, then in the
/// current folder.
pub fn resolve_path(base_dir: &Path, p: &str) -> PathBuf {
    let path = PathBuf::from(p);
    if path.is_absolute() {
        return path;
    }
    let beside = base_dir.join(&path);
    if beside.exists() {
        beside
    } else {
        path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_names_line_column_and_nearest_key() {
        let err = Profile::parse("seed = 1\n[[pass]]\nstpes = 3\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "p.toml:3:1: unknown key `stpes`; did you mean `steps`?"
        );
    }

    #[test]
    fn denoise_outside_range_is_reported_at_its_value() {
        let err = Profile::parse("[[pass]]\n[[pass]]\ndenoise = 1.5\n", "p.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("p.toml:3:11: denoise must be in [0, 1]"),
            "{err}"
        );
    }

    #[test]
    fn set_addresses_passes_from_one() {
        let p = Profile::parse("[[pass]]\nsteps = 4\n[[pass]]\ndenoise = 0.5\n", "p").unwrap();
        let p = p
            .with_overrides(&["pass.2.denoise=0.35".into(), "prompt=a red fox".into()])
            .unwrap();
        assert_eq!(p.passes[1].denoise, Some(0.35));
        assert_eq!(p.passes[0].steps, Some(4));
        assert_eq!(p.prompt, "a red fox");
    }

    #[test]
    fn later_passes_inherit_sampler_and_pass_one_steps() {
        let mut p =
            Profile::parse("[[pass]]\nsteps = 9\nsampler = \"ddim\"\n[[pass]]\n", "p").unwrap();
        p.resolve_defaults(512).unwrap();
        assert_eq!(p.passes[0].width, Some(512));
        assert_eq!(p.passes[1].steps, Some(9));
        assert_eq!(p.passes[1].sampler.as_deref(), Some("ddim"));
        assert_eq!(p.passes[1].scale, Some(2.0));
    }

    #[test]
    fn validate_names_the_key_and_value() {
        let mut p = Profile::empty();
        p.passes = vec![
            Pass::default(),
            Pass {
                denoise: Some(1.5),
                ..Default::default()
            },
        ];
        let e = p.validate().unwrap_err();
        assert_eq!(e.key, "pass.2.denoise");
        assert!(
            e.message
                .starts_with("pass.2.denoise = 1.5: denoise must be in [0, 1]"),
            "{e}"
        );
    }

    #[test]
    fn resolving_twice_changes_nothing_and_the_size_can_come_later() {
        let mut p = Profile::empty();
        p.passes = vec![Pass::default(), Pass::default()];
        p.resolve(None).unwrap();
        assert_eq!((p.passes[0].width, p.passes[0].height), (None, None));
        assert_eq!(p.passes[1].denoise, Some(defaults::HIRES_DENOISE));
        p.fill_native_size(768).unwrap();
        let once = p.clone();
        p.resolve_defaults(512).unwrap();
        assert_eq!(p, once);
        assert_eq!(p.passes[0].width, Some(768));
    }
}
