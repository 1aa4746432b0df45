//! Which model weight a LoRA layer name means. Tools name layers their own way: kohya's
//! `lora_unet_` + the module path with `.` → `_` (diffusers paths for SD 1.x/2.x, LDM paths
//! for SDXL), `lora_te_` / `lora_te1_` / `lora_te2_` + transformers' text-encoder path, and
//! diffusers / peft the dotted diffusers path, with or without `unet.` / `text_encoder.` /
//! `text_encoder_2.`. Every name of every model weight is listed once, as ComfyUI's
//! `model_lora_keys_*` does, so underscores need no guessing.
use std::collections::HashMap;

use crate::convert::diffusers_unet::{ldm_to_diffusers_unet_key, UnetLayout};
use crate::convert::UNET_PREFIX;
use crate::families::Family;
use crate::unet::UNetConfig;

/// LoRA layer name → the model key of the weight it changes (ending in `.weight`).
pub struct NameTable(HashMap<String, String>);

impl NameTable {
    /// The names of every weight in `keys` (the model's parameter keys).
    pub fn new<'a>(
        family: &Family,
        unet: &UNetConfig,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let layout = UnetLayout::from_config(&unet.num_res_blocks, &unet.transformer_depth);
        let mut names = HashMap::new();
        for key in keys {
            let Some(module) = key.strip_suffix(".weight") else {
                continue;
            };
            for alias in aliases(family, &layout, module) {
                names.insert(alias, key.to_owned());
            }
        }
        Self(names)
    }

    /// The model key a LoRA layer name means.
    pub fn weight(&self, layer: &str) -> Option<&str> {
        self.0.get(layer).map(String::as_str)
    }
}

/// kohya's underscore form of a dotted path.
fn underscored(path: &str) -> String {
    path.replace('.', "_")
}

fn aliases(family: &Family, layout: &UnetLayout, module: &str) -> Vec<String> {
    if let Some(ldm) = module.strip_prefix(UNET_PREFIX) {
        let mut out = vec![format!("lora_unet_{}", underscored(ldm))];
        let diffusers = ldm_to_diffusers_unet_key(&format!("{ldm}.weight"), layout)
            .and_then(|k| k.strip_suffix(".weight").map(str::to_owned));
        if let Some(diffusers) = diffusers {
            out.push(format!("lora_unet_{}", underscored(&diffusers)));
            out.push(format!("unet.{diffusers}"));
            out.push(diffusers);
        }
        return out;
    }
    let single = family.encoders.len() == 1;
    for (index, spec) in family.encoders.iter().enumerate() {
        let Some(path) = module.strip_prefix(spec.ldm_prefix) else {
            continue;
        };
        let (kohya, peft) = match (single, index) {
            (true, _) => ("lora_te".to_owned(), "text_encoder".to_owned()),
            (false, i) => (
                format!("lora_te{}", i + 1),
                match i {
                    0 => "text_encoder".to_owned(),
                    i => format!("text_encoder_{}", i + 1),
                },
            ),
        };
        let mut out = vec![
            format!("{kohya}_{}", underscored(path)),
            format!("{peft}.{path}"),
        ];
        // transformers 5 and old peft files leave out `text_model.`.
        if let Some(inner) = path.strip_prefix("text_model.") {
            out.push(format!("{peft}.{inner}"));
        }
        return out;
    }
    Vec::new()
}
