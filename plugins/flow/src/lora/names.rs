//! Which transformer weight (and which rows of it) a Flux LoRA layer name means. The model's
//! weights are under Black Forest Labs' names; tools name LoRA layers four ways:
//! - kohya / sd-scripts: `lora_unet_` + the BFL path with `.` → `_`
//!   (`lora_unet_double_blocks_0_img_attn_qkv`), fused q/k/v whole;
//! - ComfyUI and BFL-style files: the dotted BFL path behind `diffusion_model.` (or bare);
//! - diffusers / peft / ai-toolkit: the diffusers path behind `transformer.` (or bare), q, k
//!   and v (and the single blocks' MLP input) separate: each is a block of rows of BFL's fused
//!   `qkv` / `linear1`, and `norm_out.linear` is the final modulation with its halves in
//!   diffusers' (scale, shift) order;
//! - OneTrainer's `lora_transformer_` and SimpleTuner's LyCORIS `lycoris_` + the diffusers path
//!   with `.` → `_` (as ComfyUI's `model_lora_keys_unet` lists them for Flux).
//!
//! The renames are those of `flux::Layout` (the model loader's), so LoRA and model agree on
//! every name. Every name of every weight is listed once, as ComfyUI's `model_lora_keys_unet`
//! does, so underscores need no guessing.
use std::collections::HashMap;

use tch::Tensor;

use crate::flux::{Layout, Recipe};

/// The part of a model weight a LoRA layer changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The model key (BFL name ending in `.weight`).
    pub key: String,
    /// `(first row, rows)` of a fused weight, or the whole weight.
    pub rows: Option<(i64, i64)>,
    /// The change comes in diffusers' (scale, shift) order: its halves are swapped.
    pub swap_halves: bool,
}

/// LoRA layer name → the weight it changes.
#[derive(Debug, Default)]
pub struct Targets(HashMap<String, Target>);

impl Targets {
    /// The names of every weight of `vars` (the transformer's parameters, BFL names).
    pub fn new(vars: &HashMap<String, Tensor>) -> Self {
        let hidden = vars.get("img_in.weight").map(|w| w.size()[0]);
        let mut names = HashMap::new();
        for (key, var) in vars {
            let Some(module) = key.strip_suffix(".weight") else {
                continue;
            };
            let whole = Target {
                key: key.clone(),
                rows: None,
                swap_halves: false,
            };
            for alias in [
                format!("lora_unet_{}", module.replace('.', "_")),
                format!("diffusion_model.{module}"),
                module.to_owned(),
            ] {
                names.insert(alias, whole.clone());
            }
            let (parts, swap_halves) = match Layout::Diffusers.recipe(key) {
                Recipe::One(n) => (vec![n], false),
                Recipe::SwapHalves(n) => (vec![n], true),
                Recipe::Cat(ns) => (ns, false),
            };
            let rows = row_blocks(var.size()[0], parts.len(), hidden);
            for (part, rows) in parts.iter().zip(rows) {
                let Some(diffusers) = part.strip_suffix(".weight") else {
                    continue;
                };
                let target = Target {
                    key: key.clone(),
                    rows,
                    swap_halves,
                };
                let underscored = diffusers.replace('.', "_");
                for alias in [
                    format!("transformer.{diffusers}"),
                    format!("lora_transformer_{underscored}"),
                    format!("lycoris_{underscored}"),
                    diffusers.to_owned(),
                ] {
                    names.insert(alias, target.clone());
                }
            }
        }
        Self(names)
    }

    /// The weight a LoRA layer name means.
    pub fn get(&self, layer: &str) -> Option<&Target> {
        self.0.get(layer)
    }
}

/// The rows of each of `n` parts of a fused weight of `total` rows: q, k, v of the hidden size
/// each, the last part (v, or the single blocks' MLP input) the rest. One part: the whole.
fn row_blocks(total: i64, n: usize, hidden: Option<i64>) -> Vec<Option<(i64, i64)>> {
    let (Some(d), true) = (hidden, n > 1) else {
        return vec![None; n];
    };
    let n = n as i64;
    (0..n)
        .map(|i| Some((i * d, if i == n - 1 { total - (n - 1) * d } else { d })))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn vars(list: &[(&str, &[i64])]) -> HashMap<String, Tensor> {
        list.iter()
            .map(|(k, s)| (k.to_string(), Tensor::zeros(*s, (Kind::Float, Device::Cpu))))
            .collect()
    }

    #[test]
    fn every_layout_names_the_same_weight_and_rows() {
        let v = vars(&[
            ("img_in.weight", &[8, 4]),
            ("double_blocks.0.img_attn.qkv.weight", &[24, 8]),
            ("single_blocks.1.linear1.weight", &[56, 8]),
            ("final_layer.adaLN_modulation.1.weight", &[16, 8]),
        ]);
        let t = Targets::new(&v);
        let whole = |key: &str| Target {
            key: key.into(),
            rows: None,
            swap_halves: false,
        };
        let qkv = "double_blocks.0.img_attn.qkv.weight";
        for name in [
            "lora_unet_double_blocks_0_img_attn_qkv",
            "diffusion_model.double_blocks.0.img_attn.qkv",
        ] {
            assert_eq!(t.get(name), Some(&whole(qkv)), "{name}");
        }
        let rows = |key: &str, first, n| Target {
            key: key.into(),
            rows: Some((first, n)),
            swap_halves: false,
        };
        assert_eq!(
            t.get("transformer.transformer_blocks.0.attn.to_k"),
            Some(&rows(qkv, 8, 8))
        );
        assert_eq!(
            t.get("lora_transformer_transformer_blocks_0_attn_to_v"),
            Some(&rows(qkv, 16, 8))
        );
        assert_eq!(
            t.get("lycoris_transformer_blocks_0_attn_to_q"),
            Some(&rows(qkv, 0, 8))
        );
        let linear1 = "single_blocks.1.linear1.weight";
        assert_eq!(
            t.get("transformer.single_transformer_blocks.1.proj_mlp"),
            Some(&rows(linear1, 24, 32))
        );
        assert_eq!(
            t.get("x_embedder"),
            Some(&whole("img_in.weight")),
            "bare diffusers names"
        );
        let final_mod = t.get("transformer.norm_out.linear").unwrap();
        assert!(final_mod.swap_halves && final_mod.rows.is_none());
        assert!(
            !t.get("lora_unet_final_layer_adaLN_modulation_1")
                .unwrap()
                .swap_halves
        );
        assert_eq!(t.get("lora_unet_down_blocks_0_attentions_0_proj_in"), None);
    }
}
