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
    fn sdxl_add_embedding_is_label_emb() {
        let layout = UnetLayout::default();
        assert_eq!(
            diffusers_unet_key("add_embedding.linear_2.bias", &layout).as_deref(),
            Some("model.diffusion_model.label_emb.0.2.bias")
        );
    }
}
