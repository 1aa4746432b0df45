//! What is recognised but not supported, so that it is refused by name instead of being
//! loaded as a wrong family: other architectures or single components (by their markers) and
//! UNet variants with other inputs (instruct-pix2pix, depth, unCLIP; which input channels
//! run is the table [`crate::families::UNET_INPUTS`]: text-to-image and inpainting). Markers
//! from ComfyUI's `model_detection.py`, A1111's `sd_models_config.py` and diffusers'
//! `single_file_utils.py`. (Refused families, such as the SDXL refiner, are entries in
//! [`crate::families`].)
use anyhow::Result;

use crate::checkpoint::{Checkpoint, Format};
use crate::convert::UNET_PREFIX;
use crate::families::{Family, UNetInput, Vector};

/// Single-file key markers of other architectures and of files that are one component only:
/// (marker, whether it is a key prefix (else a substring), what the file is).
const FOREIGN: &[(&str, bool, &str)] = &[
    (
        "model.diffusion_model.joint_blocks.",
        true,
        "a Stable Diffusion 3 / 3.5 (MMDiT) checkpoint",
    ),
    ("double_blocks.", false, "a Flux checkpoint"),
    ("double_layers.", false, "an AuraFlow checkpoint"),
    ("clf.1.weight", true, "a Stable Cascade checkpoint"),
    ("t_block.1.weight", false, "a PixArt checkpoint"),
    ("mlp_t5.0.weight", false, "a Hunyuan-DiT checkpoint"),
    (".time_stack.", false, "a Stable Video Diffusion checkpoint"),
    ("edm_mean", true, "a Playground v2.5 (EDM) checkpoint"),
    (
        "edm_vpred.sigma_max",
        true,
        "an SDXL EDM v-prediction checkpoint",
    ),
    (
        "lora_unet_",
        true,
        "a LoRA, not a checkpoint — list it in [model] loras or write <lora:NAME:0.8> in a prompt",
    ),
    (
        "lora_te",
        true,
        "a LoRA, not a checkpoint — list it in [model] loras or write <lora:NAME:0.8> in a prompt",
    ),
    (
        ".lora_down.",
        false,
        "a LoRA, not a checkpoint — list it in [model] loras or write <lora:NAME:0.8> in a prompt",
    ),
    (
        ".lora_A.",
        false,
        "a LoRA, not a checkpoint — list it in [model] loras or write <lora:NAME:0.8> in a prompt",
    ),
    (
        ".hada_w1_a",
        false,
        "a LoHa (LyCORIS), not a checkpoint — list it in [model] loras",
    ),
    (
        "encoder.down.0.block.0.conv1.weight",
        true,
        "a VAE, not a checkpoint — set it as [model] vae",
    ),
    (
        "decoder.up_blocks.0.resnets.0.conv1.weight",
        true,
        "a VAE, not a checkpoint — set it as [model] vae",
    ),
    (
        "text_model.encoder.layers.0.",
        true,
        "a text encoder only, not a full checkpoint",
    ),
    (
        "input_blocks.0.0.weight",
        true,
        "a UNet only (no text encoder or VAE), not a full checkpoint",
    ),
    (
        "down_blocks.0.resnets.0.conv1.weight",
        true,
        "a UNet only (no text encoder or VAE), not a full checkpoint",
    ),
];

/// What a file is when it is not a Stable Diffusion checkpoint this crate knows of.
pub fn foreign_kind(ckpt: &Checkpoint) -> Option<String> {
    match ckpt.format() {
        Format::SingleFile => FOREIGN
            .iter()
            .find(|(marker, prefix, _)| match prefix {
                true => ckpt.raw_has_prefix(marker),
                false => ckpt.raw_keys().any(|k| k.contains(marker)),
            })
            .map(|(_, _, what)| what.to_string()),
        Format::Diffusers => {
            let class = ckpt.configs().pipeline_class();
            let ours = [
                "StableDiffusion",
                "StableDiffusionXL",
                "StableDiffusionImg2Img",
            ];
            let foreign = (!class.is_empty() && !ours.iter().any(|o| class.starts_with(o)))
                || class.starts_with("StableDiffusion3");
            foreign.then(|| format!("a {class} diffusers folder"))
        }
    }
}

/// A UNet variant of `family` that is not supported: input channels [`UNET_INPUTS`] does
/// not run (instruct-pix2pix, depth) or does not know, or vector conditioning the family
/// does not have (unCLIP). `Ok(None)` for a text-to-image or inpainting UNet.
pub fn unet_variant(ckpt: &Checkpoint, family: &Family) -> Result<Option<String>> {
    let conv_in = ckpt.require_shape(&format!("{UNET_PREFIX}input_blocks.0.0.weight"))?;
    let channels = conv_in.get(1).copied().unwrap_or(0);
    let name = family.name;
    let variant = match UNetInput::of(channels) {
        Some(input) if input.supported => None,
        Some(input) => Some(format!(
            "a {name} {} checkpoint ({channels} input channels)",
            input.kind
        )),
        None => Some(format!("a {name} UNet with {channels} input channels")),
    };
    if variant.is_some() {
        return Ok(variant);
    }
    let has_vector = ckpt.contains(&format!("{UNET_PREFIX}label_emb.0.0.weight"));
    Ok(match (family.vector, has_vector) {
        (Vector::None, true) => Some(format!(
            "a {name} UNet with class/image conditioning (label_emb: unCLIP or similar)"
        )),
        (Vector::PooledTextAndSizes | Vector::PooledTextSizesAndAesthetic, false) => Some(format!(
            "a {name} UNet without its label_emb vector conditioning (incomplete file?)"
        )),
        _ => None,
    })
}
