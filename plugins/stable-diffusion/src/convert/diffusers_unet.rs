//! diffusers `unet/` keys → LDM keys under `model.diffusion_model.`, for any block layout.
use super::{indices_under, UNET_PREFIX};

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

    /// The layout of a UNet with these levels (LDM `channel_mult` length), ResBlocks per level
    /// and transformer depths, as diffusers would lay it out.
    pub fn from_config(num_res_blocks: &[usize], transformer_depth: &[usize]) -> Self {
        let levels = num_res_blocks.len();
        let mut layout = UnetLayout::default();
        let mut next_input = 1;
        for (level, count) in num_res_blocks.iter().enumerate() {
            let resnets: Vec<usize> = (next_input..next_input + count).collect();
            next_input += count;
            let down = (level + 1 < levels).then(|| {
                next_input += 1;
                next_input - 1
            });
            layout.down.push((resnets, down));
        }
        let mut next_output = 0;
        for level in (0..levels).rev() {
            let count = num_res_blocks[level] + 1;
            let has_attn = transformer_depth.get(level).is_some_and(|d| *d > 0);
            layout.up.push((next_output, count, has_attn));
            next_output += count;
        }
        layout
    }
}

/// LDM key (under `model.diffusion_model.`, prefix stripped) → diffusers `unet/` key: the
/// inverse of [`diffusers_unet_key`], for names written in diffusers' terms (LoRA files).
pub fn ldm_to_diffusers_unet_key(ldm: &str, layout: &UnetLayout) -> Option<String> {
    let parts: Vec<&str> = ldm.split('.').collect();
    let num = |s: &str| s.parse::<usize>().ok();
    let join = |rest: &[&str]| rest.join(".");
    let down_block = |k: usize| {
        layout
            .down
            .iter()
            .enumerate()
            .find_map(|(i, (resnets, _))| resnets.iter().position(|r| *r == k).map(|j| (i, j)))
    };
    let up_block = |k: usize| {
        layout
            .up
            .iter()
            .enumerate()
            .find(|(_, (first, count, _))| (*first..first + count).contains(&k))
            .map(|(i, (first, count, attn))| (i, k - first, first + count - 1 == k, *attn))
    };
    Some(match parts.as_slice() {
        ["input_blocks", "0", "0", rest @ ..] => format!("conv_in.{}", join(rest)),
        ["time_embed", "0", rest @ ..] => format!("time_embedding.linear_1.{}", join(rest)),
        ["time_embed", "2", rest @ ..] => format!("time_embedding.linear_2.{}", join(rest)),
        ["label_emb", "0", "0", rest @ ..] => format!("add_embedding.linear_1.{}", join(rest)),
        ["label_emb", "0", "2", rest @ ..] => format!("add_embedding.linear_2.{}", join(rest)),
        ["out", "0", rest @ ..] => format!("conv_norm_out.{}", join(rest)),
        ["out", "2", rest @ ..] => format!("conv_out.{}", join(rest)),
        ["input_blocks", k, "0", "op", rest @ ..] => {
            let k = num(k)?;
            let i = layout.down.iter().position(|(_, d)| *d == Some(k))?;
            format!("down_blocks.{i}.downsamplers.0.conv.{}", join(rest))
        }
        ["input_blocks", k, "0", rest @ ..] => {
            let (i, j) = down_block(num(k)?)?;
            format!(
                "down_blocks.{i}.resnets.{j}.{}",
                diffusers_resnet_part(rest)?
            )
        }
        ["input_blocks", k, "1", rest @ ..] => {
            let (i, j) = down_block(num(k)?)?;
            format!("down_blocks.{i}.attentions.{j}.{}", join(rest))
        }
        ["middle_block", "0", rest @ ..] => {
            format!("mid_block.resnets.0.{}", diffusers_resnet_part(rest)?)
        }
        ["middle_block", "1", rest @ ..] => format!("mid_block.attentions.0.{}", join(rest)),
        ["middle_block", "2", rest @ ..] => {
            format!("mid_block.resnets.1.{}", diffusers_resnet_part(rest)?)
        }
        ["output_blocks", k, "0", rest @ ..] => {
            let (i, j, _, _) = up_block(num(k)?)?;
            format!("up_blocks.{i}.resnets.{j}.{}", diffusers_resnet_part(rest)?)
        }
        ["output_blocks", k, slot, "conv", rest @ ..] if matches!(*slot, "1" | "2") => {
            let (i, _, last, attn) = up_block(num(k)?)?;
            let expected = if attn { "2" } else { "1" };
            if !last || *slot != expected {
                return None;
            }
            format!("up_blocks.{i}.upsamplers.0.conv.{}", join(rest))
        }
        ["output_blocks", k, "1", rest @ ..] => {
            let (i, j, _, attn) = up_block(num(k)?)?;
            if !attn {
                return None;
            }
            format!("up_blocks.{i}.attentions.{j}.{}", join(rest))
        }
        _ => return None,
    })
}

/// diffusers ResnetBlock2D leaf ↔ LDM ResBlock leaf.
const RESNET_PARTS: [(&str, &str); 6] = [
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

fn diffusers_resnet_part(rest: &[&str]) -> Option<String> {
    let ldm = rest.join(".");
    RESNET_PARTS.iter().find_map(|(diffusers, ours)| {
        let tail = ldm.strip_prefix(ours)?;
        (tail.is_empty() || tail.starts_with('.')).then(|| format!("{diffusers}{tail}"))
    })
}

/// diffusers `unet/` key → LDM key under `model.diffusion_model.`.
pub fn diffusers_unet_key(key: &str, layout: &UnetLayout) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    let num = |s: &str| s.parse::<usize>().ok();
    let ldm = match parts.as_slice() {
        ["conv_in", rest @ ..] => format!("input_blocks.0.0.{}", rest.join(".")),
        ["time_embedding", "linear_1", rest @ ..] => format!("time_embed.0.{}", rest.join(".")),
        ["time_embedding", "linear_2", rest @ ..] => format!("time_embed.2.{}", rest.join(".")),
        ["add_embedding", "linear_1", rest @ ..] => format!("label_emb.0.0.{}", rest.join(".")),
        ["add_embedding", "linear_2", rest @ ..] => format!("label_emb.0.2.{}", rest.join(".")),
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
            let idx = num(j)?.checked_mul(2)?;
            format!("middle_block.{idx}.{}", unet_resnet_part(rest)?)
        }
        ["mid_block", "attentions", "0", rest @ ..] => format!("middle_block.1.{}", rest.join(".")),
        ["up_blocks", i, "resnets", j, rest @ ..] => {
            let (first, _, _) = layout.up.get(num(i)?)?;
            let idx = first.checked_add(num(j)?)?;
            format!("output_blocks.{idx}.0.{}", unet_resnet_part(rest)?)
        }
        ["up_blocks", i, "attentions", j, rest @ ..] => {
            let (first, _, _) = layout.up.get(num(i)?)?;
            let idx = first.checked_add(num(j)?)?;
            format!("output_blocks.{idx}.1.{}", rest.join("."))
        }
        ["up_blocks", i, "upsamplers", "0", "conv", rest @ ..] => {
            let (first, count, has_attn) = layout.up.get(num(i)?)?;
            let slot = if *has_attn { 2 } else { 1 };
            // An up block without resnets has no output block for its upsampler.
            let last = (first + count).checked_sub(1)?;
            format!("output_blocks.{last}.{slot}.conv.{}", rest.join("."))
        }
        _ => return None,
    };
    Some(format!("{UNET_PREFIX}{ldm}"))
}

fn unet_resnet_part(rest: &[&str]) -> Option<String> {
    let (name, tail) = rest.split_first()?;
    let (_, ldm) = RESNET_PARTS.iter().find(|(d, _)| d == name)?;
    Some(format!("{ldm}.{}", tail.join(".")))
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ldm_keys_map_back_to_the_diffusers_keys_of_real_tiny_folders() {
        for folder in ["sd1-tiny", "sdxl-tiny", "sd2-tiny"] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/data")
                .join(folder)
                .join("diffusers/unet/diffusion_pytorch_model.safetensors");
            let file = crate::checkpoint::safetensors::SafetensorsFile::open(&path).unwrap();
            let keys: Vec<&str> = file.entries().keys().map(String::as_str).collect();
            let from_keys = UnetLayout::from_keys(keys.iter().copied());
            let config: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(path.with_file_name("config.json")).unwrap(),
            )
            .unwrap();
            let levels = config["block_out_channels"].as_array().unwrap().len();
            let res = config["layers_per_block"].as_u64().unwrap() as usize;
            let depth: Vec<usize> = config["down_block_types"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| usize::from(t.as_str().unwrap().starts_with("CrossAttn")))
                .collect();
            let layout = UnetLayout::from_config(&vec![res; levels], &depth);
            for key in keys {
                let ldm = diffusers_unet_key(key, &from_keys).unwrap();
                let relative = ldm.strip_prefix(UNET_PREFIX).unwrap();
                assert_eq!(
                    ldm_to_diffusers_unet_key(relative, &layout).as_deref(),
                    Some(key),
                    "{folder}"
                );
            }
        }
    }

    #[test]
    fn sdxl_add_embedding_is_label_emb() {
        let layout = UnetLayout::default();
        assert_eq!(
            diffusers_unet_key("add_embedding.linear_2.bias", &layout).as_deref(),
            Some("model.diffusion_model.label_emb.0.2.bias")
        );
    }

    #[test]
    fn an_upsampler_in_an_up_block_without_resnets_is_not_mapped() {
        // Fuzzing (safetensors target) found this one panicking with a subtraction overflow.
        let layout = UnetLayout::from_keys(["up_blocks.0.upsamplers.0.conv.weight"]);
        assert_eq!(
            diffusers_unet_key("up_blocks.0.upsamplers.0.conv.weight", &layout),
            None
        );
    }

    #[test]
    fn block_numbers_past_usize_are_not_mapped() {
        let layout = UnetLayout::from_keys([
            "up_blocks.0.resnets.0.conv1.weight",
            "up_blocks.1.resnets.0.conv1.weight",
        ]);
        let max = usize::MAX;
        for key in [
            format!("mid_block.resnets.{max}.conv1.weight"),
            format!("up_blocks.1.resnets.{max}.conv1.weight"),
            format!("up_blocks.1.attentions.{max}.proj_in.weight"),
        ] {
            assert_eq!(diffusers_unet_key(&key, &layout), None, "{key}");
        }
    }
}
