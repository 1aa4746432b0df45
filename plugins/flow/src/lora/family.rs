//! Which model family a LoRA file was made for, from its tensor names alone (the header: no
//! tensor is read), so a LoRA for another family is refused in one line naming the file and
//! both families before anything is applied. Layer names tell:
//! - Flux: `double_blocks` / `single_blocks` (kohya `lora_unet_double_blocks_0_…`, ComfyUI
//!   `diffusion_model.single_blocks.0.…`) or diffusers' `single_transformer_blocks`;
//! - SD 3.x: `joint_blocks` (kohya `lora_unet_joint_blocks_0_x_block_…`, SAI's `context_block` /
//!   `x_block`) or a third text encoder (`lora_te3_`, `text_encoder_3.`);
//! - SD 1.x/2.x and SDXL: UNet blocks (`down_blocks`, `input_blocks`, `mid_block`, …) or kohya's
//!   text-encoder prefixes: SDXL has two (`lora_te1_`, `lora_te2_`, `text_encoder_2.`, and its
//!   kohya UNet names are LDM's `input_blocks`), SD 1.x/2.x one (`lora_te_`).
//!
//! A diffusers LoRA of double blocks only (`transformer.transformer_blocks.N.attn.to_q`) is
//! named alike for Flux and SD 3.x: it is [`LoraFamily::Unknown`] here and the shape checks at
//! apply time tell (a layer that does not fit the weight is an error naming it).
use std::path::Path;

use anyhow::{bail, Result};
use hiresfix_model_parts::lora::cut;
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;

/// The model family a LoRA file's names say it is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraFamily {
    Flux,
    Sd3,
    Sdxl,
    Sd1,
    /// UNet layers without a text encoder that tells SD 1.x/2.x from SDXL.
    Unet,
    Unknown,
}

impl LoraFamily {
    /// The family as messages name it.
    pub fn name(self) -> &'static str {
        match self {
            LoraFamily::Flux => "Flux",
            LoraFamily::Sd3 => "SD 3.x",
            LoraFamily::Sdxl => "SDXL",
            LoraFamily::Sd1 => "SD 1.x/2.x",
            LoraFamily::Unet => "SD 1.x/2.x/SDXL",
            LoraFamily::Unknown => "unknown",
        }
    }

    /// The names that told, for messages.
    fn evidence(self) -> &'static str {
        match self {
            LoraFamily::Flux => "double_blocks/single_blocks layers",
            LoraFamily::Sd3 => "joint_blocks layers",
            LoraFamily::Sdxl => "two text encoders or LDM UNet names",
            LoraFamily::Sd1 => "one text encoder: lora_te_",
            LoraFamily::Unet => "UNet layers",
            LoraFamily::Unknown => "",
        }
    }
}

/// The family a LoRA's tensor names say (see the module's list).
pub fn lora_family<'a>(keys: impl IntoIterator<Item = &'a str>) -> LoraFamily {
    let (mut flux, mut sd3, mut xl, mut one, mut unet) = (false, false, false, false, false);
    for key in keys {
        let has = |s: &[&str]| s.iter().any(|p| key.contains(p));
        flux |= has(&[
            "double_blocks",
            "single_blocks",
            "single_transformer_blocks",
        ]);
        sd3 |= has(&["joint_blocks", "context_block", "x_block"])
            || key.starts_with("lora_te3_")
            || key.starts_with("text_encoder_3.");
        xl |= key.starts_with("lora_te1_")
            || key.starts_with("lora_te2_")
            || key.starts_with("text_encoder_2.")
            || has(&["input_blocks", "output_blocks", "middle_block"]);
        one |= key.starts_with("lora_te_");
        unet |= has(&["down_blocks", "up_blocks", "mid_block"]);
    }
    match () {
        _ if flux => LoraFamily::Flux,
        _ if sd3 => LoraFamily::Sd3,
        _ if xl => LoraFamily::Sdxl,
        _ if one => LoraFamily::Sd1,
        _ if unet => LoraFamily::Unet,
        _ => LoraFamily::Unknown,
    }
}

/// Refuses a LoRA whose names say another family than `model` (`model_name`: how the model is
/// named to the user, e.g. "Flux.1-dev", "SD 3.5"); `shown` names the file.
pub fn check_family(
    shown: &str,
    found: LoraFamily,
    model: LoraFamily,
    model_name: &str,
) -> Result<()> {
    if found == model || found == LoraFamily::Unknown {
        return Ok(());
    }
    bail!(
        "LoRA {shown} is {} {} LoRA ({}) but this model is {model_name} — use a LoRA made for {}",
        article(found.name()),
        found.name(),
        found.evidence(),
        model.name()
    )
}

/// "a" or "an" before a family name.
fn article(name: &str) -> &'static str {
    match name.starts_with("SD") {
        true => "an",
        false => "a",
    }
}

/// The file name of `path` in backquotes, cut to 80 characters, for messages.
pub fn shown(path: &Path) -> String {
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    format!("`{}`", cut(&file))
}

/// [`check_family`] of the file at `path` from its header (no tensor read).
pub fn check_file(path: &Path, model: LoraFamily, model_name: &str) -> Result<()> {
    let file = SafetensorsFile::open(path)?;
    let found = lora_family(file.entries().keys().map(String::as_str));
    check_family(&shown(path), found, model, model_name)
}

/// For a model whose backend applies no LoRA yet (SD 3.5): the one-line refusal of the LoRA at
/// `path` — naming its family when it is another model's.
pub fn refuse(path: &Path, model: LoraFamily, model_name: &str) -> anyhow::Error {
    match check_file(path, model, model_name) {
        Err(e) => e,
        Ok(()) => anyhow::anyhow!(
            "LoRA {}: LoRAs on {model_name} are not supported yet — remove the <lora:…> tag",
            shown(path)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_tell_the_family() {
        let cases: &[(&[&str], LoraFamily)] = &[
            (
                &[
                    "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight",
                    "lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight",
                ],
                LoraFamily::Flux,
            ),
            (
                &["diffusion_model.single_blocks.3.linear1.lora_A.weight"],
                LoraFamily::Flux,
            ),
            (
                &["transformer.single_transformer_blocks.0.attn.to_q.lora_A.weight"],
                LoraFamily::Flux,
            ),
            (
                &["lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight"],
                LoraFamily::Sd3,
            ),
            (
                &["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"],
                LoraFamily::Sdxl,
            ),
            (
                &[
                    "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
                    "lora_te_text_model_encoder_layers_0_mlp_fc1.alpha",
                ],
                LoraFamily::Sd1,
            ),
            (
                &["unet.down_blocks.0.attentions.0.proj_in.lora_A.weight"],
                LoraFamily::Unet,
            ),
            (
                &["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"],
                LoraFamily::Unknown,
            ),
        ];
        for (keys, want) in cases {
            assert_eq!(lora_family(keys.iter().copied()), *want, "{keys:?}");
        }
    }

    #[test]
    fn a_foreign_lora_is_refused_in_one_line_naming_file_and_families() {
        let err = check_family(
            "`a.safetensors`",
            LoraFamily::Flux,
            LoraFamily::Sd3,
            "SD 3.5",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "LoRA `a.safetensors` is a Flux LoRA (double_blocks/single_blocks layers) but this \
             model is SD 3.5 — use a LoRA made for SD 3.x"
        );
        let err = check_family("`b`", LoraFamily::Sdxl, LoraFamily::Flux, "Flux.1-dev")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("LoRA `b` is an SDXL LoRA") && err.contains("this model is Flux.1-dev"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        assert!(check_family("`c`", LoraFamily::Unknown, LoraFamily::Flux, "Flux").is_ok());
        assert!(check_family("`d`", LoraFamily::Flux, LoraFamily::Flux, "Flux").is_ok());
    }
}
