//! Key renames from foreign layouts to the original LDM (CompVis) weight keys, which are the
//! module paths of this crate. One function per foreign format; each returns `None` for keys
//! the LDM model has no place for (they are ignored).
//!
//! Layout correspondences follow diffusers' `convert_original_stable_diffusion_to_diffusers`
//! mapping, read in the other direction.
use std::collections::{BTreeMap, BTreeSet};

pub const UNET_PREFIX: &str = "model.diffusion_model.";
pub const VAE_PREFIX: &str = "first_stage_model.";
pub const CLIP_PREFIX: &str = "cond_stage_model.transformer.";

/// Where each diffusers UNet block lands among LDM `input_blocks` / `output_blocks`, worked out
/// from the key set itself so any depth or block count converts.
#[derive(Debug, Default)]
pub struct UnetLayout {
    /// Per down block: LDM input index of each resnet, then of its downsampler (if any).
    down: Vec<(Vec<usize>, Option<usize>)>,
    /// Per up block: LDM output index of its first resnet, resnet count, and whether it has attention.
    up: Vec<(usize, usize, bool)>,
}

impl UnetLayout {
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = &'a str> + Clone) -> Self {
        let count = |prefix: &str| indices_under(keys.clone(), prefix);
        let mut layout = UnetLayout::default();
        let mut next_input = 1;
        for i in 0..count("down_blocks.").len() {
            let resnets: Vec<usize> = (0..count(&format!("down_blocks.{i}.resnets.")).len())
                .map(|j| next_input + j)
                .collect();
            next_input += resnets.len();
            let has_down = keys
                .clone()
                .into_iter()
                .any(|k| k.starts_with(&format!("down_blocks.{i}.downsamplers.")));
            let down = has_down.then(|| {
                next_input += 1;
                next_input - 1
            });
            layout.down.push((resnets, down));
        }
        let mut next_output = 0;
        for i in 0..count("up_blocks.").len() {
            let resnets = count(&format!("up_blocks.{i}.resnets.")).len();
            let has_attn = keys
                .clone()
                .into_iter()
                .any(|k| k.starts_with(&format!("up_blocks.{i}.attentions.")));
            layout.up.push((next_output, resnets, has_attn));
            next_output += resnets;
        }
        layout
    }
}

/// The distinct integers `i` of keys `prefix{i}.…`, sorted.
pub fn indices_under<'a>(keys: impl IntoIterator<Item = &'a str>, prefix: &str) -> BTreeSet<usize> {
    keys.into_iter()
        .filter_map(|k| k.strip_prefix(prefix))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect()
}

/// diffusers `unet/` key → LDM key under `model.diffusion_model.`.
pub fn diffusers_unet_key(key: &str, layout: &UnetLayout) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let num = |s: &str| s.parse::<usize>().ok();
    let ldm = match parts.as_slice() {
        ["conv_in", rest @ ..] => format!("input_blocks.0.0.{}", rest.join(".")),
        ["time_embedding", "linear_1", rest @ ..] => format!("time_embed.0.{}", rest.join(".")),
        ["time_embedding", "linear_2", rest @ ..] => format!("time_embed.2.{}", rest.join(".")),
        ["conv_norm_out", rest @ ..] => format!("out.0.{}", rest.join(".")),
        ["conv_out", rest @ ..] => format!("out.2.{}", rest.join(".")),
        ["down_blocks", i, "resnets", j, rest @ ..] => {
            let idx = layout.down.get(num(i)?)?.0.get(num(j)?)?;
            format!("input_blocks.{idx}.0.{}", unet_resnet_part(rest)?)
        }
        ["down_blocks", i, "attentions", j, rest @ ..] => {
            let idx = layout.down.get(num(i)?)?.0.get(num(j)?)?;
            format!("input_blocks.{idx}.1.{}", rest.join("."))
        }
        ["down_blocks", i, "downsamplers", "0", "conv", rest @ ..] => {
            let idx = layout.down.get(num(i)?)?.1?;
            format!("input_blocks.{idx}.0.op.{}", rest.join("."))
        }
        ["mid_block", "resnets", j, rest @ ..] => {
            format!("middle_block.{}.{}", 2 * num(j)?, unet_resnet_part(rest)?)
        }
        ["mid_block", "attentions", "0", rest @ ..] => format!("middle_block.1.{}", rest.join(".")),
        ["up_blocks", i, "resnets", j, rest @ ..] => {
            let (first, _, _) = layout.up.get(num(i)?)?;
            format!(
                "output_blocks.{}.0.{}",
                first + num(j)?,
                unet_resnet_part(rest)?
            )
        }
        ["up_blocks", i, "attentions", j, rest @ ..] => {
            let (first, _, _) = layout.up.get(num(i)?)?;
            format!("output_blocks.{}.1.{}", first + num(j)?, rest.join("."))
        }
        ["up_blocks", i, "upsamplers", "0", "conv", rest @ ..] => {
            let (first, count, has_attn) = layout.up.get(num(i)?)?;
            let slot = if *has_attn { 2 } else { 1 };
            format!(
                "output_blocks.{}.{slot}.conv.{}",
                first + count - 1,
                rest.join(".")
            )
        }
        _ => return None,
    };
    Some(format!("{UNET_PREFIX}{ldm}"))
}

fn unet_resnet_part(rest: &[&str]) -> Option<String> {
    let (name, tail) = rest.split_first()?;
    let ldm = match *name {
        "norm1" => "in_layers.0",
        "conv1" => "in_layers.2",
        "time_emb_proj" => "emb_layers.1",
        "norm2" => "out_layers.0",
        "conv2" => "out_layers.3",
        "conv_shortcut" => "skip_connection",
        _ => return None,
    };
    Some(format!("{ldm}.{}", tail.join(".")))
}

/// diffusers `vae/` key → LDM key under `first_stage_model.`. `num_up` is the decoder's
/// `up_blocks` count: diffusers numbers decoder levels from the bottom, LDM from the top.
pub fn diffusers_vae_key(key: &str, num_up: usize) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let num = |s: &str| s.parse::<usize>().ok();
    let ldm = match parts.as_slice() {
        [coder @ ("encoder" | "decoder"), layer @ ("conv_in" | "conv_out"), rest @ ..] => {
            format!("{coder}.{layer}.{}", rest.join("."))
        }
        [coder @ ("encoder" | "decoder"), "conv_norm_out", rest @ ..] => {
            format!("{coder}.norm_out.{}", rest.join("."))
        }
        ["encoder", "down_blocks", i, "resnets", j, rest @ ..] => {
            format!("encoder.down.{i}.block.{j}.{}", vae_resnet_part(rest)?)
        }
        ["encoder", "down_blocks", i, "downsamplers", "0", "conv", rest @ ..] => {
            format!("encoder.down.{i}.downsample.conv.{}", rest.join("."))
        }
        ["decoder", "up_blocks", i, "resnets", j, rest @ ..] => {
            let level = num_up.checked_sub(1 + num(i)?)?;
            format!("decoder.up.{level}.block.{j}.{}", vae_resnet_part(rest)?)
        }
        ["decoder", "up_blocks", i, "upsamplers", "0", "conv", rest @ ..] => {
            let level = num_up.checked_sub(1 + num(i)?)?;
            format!("decoder.up.{level}.upsample.conv.{}", rest.join("."))
        }
        [coder @ ("encoder" | "decoder"), "mid_block", "resnets", j, rest @ ..] => {
            format!(
                "{coder}.mid.block_{}.{}",
                num(j)? + 1,
                vae_resnet_part(rest)?
            )
        }
        [coder @ ("encoder" | "decoder"), "mid_block", "attentions", "0", rest @ ..] => {
            format!("{coder}.mid.attn_1.{}", vae_attention_part(rest)?)
        }
        [conv @ ("quant_conv" | "post_quant_conv"), rest @ ..] => {
            format!("{conv}.{}", rest.join("."))
        }
        _ => return None,
    };
    Some(format!("{VAE_PREFIX}{ldm}"))
}

fn vae_resnet_part(rest: &[&str]) -> Option<String> {
    let (name, tail) = rest.split_first()?;
    let ldm = match *name {
        "norm1" | "conv1" | "norm2" | "conv2" => *name,
        "conv_shortcut" => "nin_shortcut",
        _ => return None,
    };
    Some(format!("{ldm}.{}", tail.join(".")))
}

/// Current (`to_q`, `to_out.0`) and older (`query`, `proj_attn`) diffusers attention names.
fn vae_attention_part(rest: &[&str]) -> Option<String> {
    let (ldm, tail) = match rest {
        ["group_norm", tail @ ..] => ("norm", tail),
        ["to_q" | "query", tail @ ..] => ("q", tail),
        ["to_k" | "key", tail @ ..] => ("k", tail),
        ["to_v" | "value", tail @ ..] => ("v", tail),
        ["to_out", "0", tail @ ..] | ["proj_attn", tail @ ..] => ("proj_out", tail),
        _ => return None,
    };
    Some(format!("{ldm}.{}", tail.join(".")))
}

/// diffusers `text_encoder/` (transformers `CLIPTextModel`) key → LDM key.
pub fn diffusers_text_encoder_key(key: &str) -> Option<String> {
    key.starts_with("text_model.")
        .then(|| format!("{CLIP_PREFIX}{key}"))
}

/// Single files saved with transformers < 4.19 lack the `text_model.` level inside the
/// text encoder (`cond_stage_model.transformer.encoder.…`); everything else is kept as is.
pub fn single_file_key(key: &str) -> String {
    match key.strip_prefix(CLIP_PREFIX) {
        Some(rest) if !rest.starts_with("text_model.") => format!("{CLIP_PREFIX}text_model.{rest}"),
        _ => key.to_string(),
    }
}

/// A standalone VAE file: LDM keys with or without `first_stage_model.`, or diffusers keys.
pub fn standalone_vae_keys<'a>(
    keys: impl IntoIterator<Item = &'a str> + Clone,
) -> BTreeMap<String, String> {
    let is_diffusers = keys
        .clone()
        .into_iter()
        .any(|k| k.starts_with("decoder.up_blocks."));
    let num_up = indices_under(keys.clone(), "decoder.up_blocks.").len();
    keys.into_iter()
        .filter_map(|k| {
            let ldm = if is_diffusers {
                diffusers_vae_key(k, num_up)?
            } else if k.starts_with(VAE_PREFIX) {
                k.to_string()
            } else if k.starts_with("encoder.")
                || k.starts_with("decoder.")
                || k.contains("quant_conv.")
            {
                format!("{VAE_PREFIX}{k}")
            } else {
                return None;
            };
            Some((ldm, k.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diffusers_decoder_levels_are_numbered_from_the_top_in_ldm() {
        assert_eq!(
            diffusers_vae_key("decoder.up_blocks.0.resnets.2.conv_shortcut.weight", 4).as_deref(),
            Some("first_stage_model.decoder.up.3.block.2.nin_shortcut.weight")
        );
        assert_eq!(
            diffusers_vae_key("encoder.mid_block.attentions.0.to_out.0.bias", 2).as_deref(),
            Some("first_stage_model.encoder.mid.attn_1.proj_out.bias")
        );
    }

    #[test]
    fn diffusers_upsampler_follows_the_attention_slot() {
        let keys = [
            "down_blocks.0.resnets.0.conv1.weight",
            "down_blocks.0.resnets.1.conv1.weight",
            "down_blocks.0.downsamplers.0.conv.weight",
            "down_blocks.1.resnets.0.conv1.weight",
            "down_blocks.1.resnets.1.conv1.weight",
            "up_blocks.0.resnets.0.conv1.weight",
            "up_blocks.0.resnets.1.conv1.weight",
            "up_blocks.0.resnets.2.conv1.weight",
            "up_blocks.0.upsamplers.0.conv.weight",
            "up_blocks.1.resnets.0.conv1.weight",
            "up_blocks.1.attentions.0.proj_in.weight",
        ];
        let layout = UnetLayout::from_keys(keys);
        let map = |k| diffusers_unet_key(k, &layout);
        assert_eq!(
            map("down_blocks.0.downsamplers.0.conv.weight").as_deref(),
            Some("model.diffusion_model.input_blocks.3.0.op.weight")
        );
        assert_eq!(
            map("down_blocks.1.resnets.1.norm1.bias").as_deref(),
            Some("model.diffusion_model.input_blocks.5.0.in_layers.0.bias")
        );
        assert_eq!(
            map("up_blocks.0.upsamplers.0.conv.bias").as_deref(),
            Some("model.diffusion_model.output_blocks.2.1.conv.bias")
        );
        assert_eq!(
            map("up_blocks.1.attentions.0.proj_in.weight").as_deref(),
            Some("model.diffusion_model.output_blocks.3.1.proj_in.weight")
        );
    }
}
