//! diffusers `vae/` keys (and standalone VAE files) → LDM keys under `first_stage_model.`.
use std::collections::BTreeMap;

use super::{indices_under, VAE_PREFIX};

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
            let level = num_up.checked_sub(num(i)?.checked_add(1)?)?;
            format!("decoder.up.{level}.block.{j}.{}", vae_resnet_part(rest)?)
        }
        ["decoder", "up_blocks", i, "upsamplers", "0", "conv", rest @ ..] => {
            let level = num_up.checked_sub(num(i)?.checked_add(1)?)?;
            format!("decoder.up.{level}.upsample.conv.{}", rest.join("."))
        }
        [coder @ ("encoder" | "decoder"), "mid_block", "resnets", j, rest @ ..] => {
            let block = num(j)?.checked_add(1)?;
            format!("{coder}.mid.block_{block}.{}", vae_resnet_part(rest)?)
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

/// A standalone VAE file, or the VAE of a single file: LDM keys with or without
/// `first_stage_model.` or diffusers' `vae.` (both in diffusers' `LDM_VAE_KEYS`), or diffusers
/// keys. Model key → stored key.
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
            } else if let Some(rest) = k.strip_prefix("vae.").filter(|r| is_ldm_vae_key(r)) {
                format!("{VAE_PREFIX}{rest}")
            } else if is_ldm_vae_key(k) {
                format!("{VAE_PREFIX}{k}")
            } else {
                return None;
            };
            Some((ldm, k.to_string()))
        })
        .collect()
}

/// Stored key → model key of every VAE tensor among `keys` ([`standalone_vae_keys`] turned
/// around: what [`crate::weights::Weights::add_file`] renames by).
pub fn vae_renames<'a>(
    keys: impl IntoIterator<Item = &'a str> + Clone,
) -> BTreeMap<String, String> {
    standalone_vae_keys(keys)
        .into_iter()
        .map(|(model_key, stored)| (stored, model_key))
        .collect()
}

/// An LDM VAE key without prefix.
fn is_ldm_vae_key(key: &str) -> bool {
    key.starts_with("encoder.") || key.starts_with("decoder.") || key.contains("quant_conv.")
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
    fn ldm_vae_keys_are_read_under_either_prefix_or_none() {
        let keys = [
            "vae.decoder.conv_in.weight",
            "first_stage_model.encoder.conv_in.weight",
            "post_quant_conv.bias",
            "vae.text_model.x",
            "model.diffusion_model.x",
        ];
        let renamed = vae_renames(keys.iter().copied());
        let model = |k: &str| renamed.get(k).map(String::as_str);
        assert_eq!(
            model("vae.decoder.conv_in.weight"),
            Some("first_stage_model.decoder.conv_in.weight")
        );
        assert_eq!(
            model("first_stage_model.encoder.conv_in.weight"),
            Some("first_stage_model.encoder.conv_in.weight")
        );
        assert_eq!(
            model("post_quant_conv.bias"),
            Some("first_stage_model.post_quant_conv.bias")
        );
        assert_eq!(renamed.len(), 3, "{renamed:?}");
    }

    #[test]
    fn block_numbers_past_usize_are_not_mapped() {
        let max = usize::MAX;
        for key in [
            format!("decoder.up_blocks.{max}.resnets.0.conv1.weight"),
            format!("decoder.up_blocks.{max}.upsamplers.0.conv.weight"),
            format!("decoder.mid_block.resnets.{max}.conv1.weight"),
        ] {
            assert_eq!(diffusers_vae_key(&key, 4), None, "{key}");
        }
    }
}
