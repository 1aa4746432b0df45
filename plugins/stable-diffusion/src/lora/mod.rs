//! LoRA sets applied to a loaded model, per pass: each weight a set changes is kept as it was
//! before the first change and put back when the set changes, so the base weights return bit
//! for bit (restoring is no subtraction that rounds). Copy on write: the parameter gets a copy
//! of its own that the LoRA is added to, and the base tensor is kept untouched — a weight that
//! views the checkpoint file (zero-copy loading, [`crate::checkpoint::mapped`]) is never
//! written, and restoring swaps the base back in without a copy. The memory is one copy of
//! each changed weight, as a saved copy beside a patched weight would be.
mod names;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
pub use hiresfix_model_parts::lora::shapes;
use hiresfix_model_parts::lora::{add_each, cut, formats, read_layers, Originals};
use tch::Tensor;

use crate::convert::UNET_PREFIX;
use crate::families::Family;
use crate::health;
use crate::unet::UNetConfig;
pub use names::NameTable;

/// One LoRA of a set: the file, its name for messages, and A1111's two multipliers.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub name: String,
    /// Multiplier of the text-encoder layers.
    pub te: f64,
    /// Multiplier of the UNet layers.
    pub unet: f64,
}

impl LoraSpec {
    /// The file's name in backquotes, cut to 80 characters, for messages.
    pub fn shown(&self) -> String {
        let file = self
            .path
            .file_name()
            .map_or_else(|| self.name.clone(), |n| n.to_string_lossy().into_owned());
        format!("`{}`", cut(&file))
    }

    /// The multiplier, or both (`te/unet`) when they differ.
    fn weights(&self) -> String {
        match self.te == self.unet || self.te.is_nan() && self.unet.is_nan() {
            true => health::number(self.unet),
            false => format!("{}/{}", health::number(self.te), health::number(self.unet)),
        }
    }
}

/// The LoRA state of one model.
pub struct LoraState {
    names: NameTable,
    family: &'static Family,
    /// The weights the current set changed, as they were before, by model key.
    originals: Originals,
    current: Vec<LoraSpec>,
}

impl LoraState {
    pub fn new<'a>(
        family: &'static Family,
        unet: &UNetConfig,
        keys: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self {
            names: NameTable::new(family, unet, keys),
            family,
            originals: Originals::default(),
            current: Vec::new(),
        }
    }

    /// Drops the saved base weights: the weights they would restore are gone
    /// ([`crate::model::SdModel::release`]).
    pub fn forget(&mut self) {
        // Base weights that view the checkpoint file hand their pages back.
        crate::checkpoint::mapped::drop_mapped_pages(self.originals.tensors());
        self.originals.clear();
        self.current.clear();
    }

    /// The set now applied.
    pub fn current(&self) -> &[LoraSpec] {
        &self.current
    }

    /// Makes `set` the applied set: back to the base weights, then each LoRA added. Returns
    /// warnings (layers that match no weight). On an error the model is left on its base
    /// weights.
    pub fn apply(
        &mut self,
        vars: &HashMap<String, Tensor>,
        set: &[LoraSpec],
    ) -> Result<Vec<String>> {
        if set == self.current.as_slice() {
            return Ok(Vec::new());
        }
        self.restore(vars);
        let added = add_each(set, LoraSpec::shown, |spec| {
            Ok(self.add(vars, spec)?.into_iter().collect())
        });
        match added {
            Ok(_) => self.current = set.to_vec(),
            Err(_) => self.restore(vars),
        }
        added
    }

    /// Puts every changed weight's base tensor back.
    fn restore(&mut self, vars: &HashMap<String, Tensor>) {
        self.originals.restore(vars);
        self.current.clear();
    }

    /// Adds one LoRA to the weights; `Ok(Some(warning))` when some of its layers match nothing.
    /// Its tensors must be finite, its shapes fit the weights ([`shapes::check`]), and every
    /// weight it changes must stay finite: else an error naming the LoRA and the tensor (the
    /// caller restores the base weights).
    fn add(&mut self, vars: &HashMap<String, Tensor>, spec: &LoraSpec) -> Result<Option<String>> {
        let name = spec.shown();
        let read = read_layers(&spec.path, &name, peft_component)?;
        let (layers, stray) = (read.layers, read.stray);
        self.check_family(&name, layers.keys().map(String::as_str))?;
        let mut unmatched: Vec<&str> = stray.iter().map(String::as_str).collect();
        let mut changes: BTreeMap<&str, (Tensor, f64)> = BTreeMap::new();
        for (layer, parts) in &layers {
            let Some(key) = self.names.weight(layer) else {
                unmatched.push(layer);
                continue;
            };
            let var = vars
                .get(key)
                .ok_or_else(|| anyhow!("LoRA {name}: the model has no weight `{key}`"))?;
            let delta = formats::delta(layer, parts, key, &var.size())
                .map_err(|e| anyhow!("LoRA {name}: {e}"))?;
            let multiplier = match key.starts_with(UNET_PREFIX) {
                true => spec.unet,
                false => spec.te,
            };
            if !multiplier.is_finite() {
                bail!(
                    "LoRA {name}: weight {} is not a finite number — use a weight like 0.8",
                    health::number(multiplier)
                );
            }
            changes.insert(key, (delta * multiplier, multiplier));
        }
        if changes.is_empty() {
            bail!("LoRA {name}: none of its {} layers matches a weight of this {} model — is it for another family?", layers.len(), self.family.name);
        }
        tch::no_grad(|| -> Result<()> {
            for (key, (delta, multiplier)) in changes {
                self.originals
                    .add(key, &vars[key], &[(None, delta)], &name, multiplier)?;
            }
            Ok(())
        })?;
        Ok(match unmatched.len() {
            0 => None,
            n => Some(format!(
                "LoRA {name}: {n} of its {} layers match no weight of this {} model and were skipped (first: {})",
                layers.len() + stray.len(),
                self.family.name,
                unmatched.iter().take(3).map(|l| cut(l)).collect::<Vec<_>>().join(", ")
            )),
        })
    }

    /// Whether the current set changed the weight `key`.
    pub fn changed(&self, key: &str) -> bool {
        self.originals.contains(key)
    }

    /// The current set for messages: "LoRA `a.safetensors` (weight 0.8), ...", `None` when
    /// empty.
    pub fn describe(&self) -> Option<String> {
        let each: Vec<String> = self
            .current
            .iter()
            .map(|s| format!("LoRA {} (weight {})", s.shown(), s.weights()))
            .collect();
        (!each.is_empty()).then(|| each.join(", "))
    }

    /// SDXL LoRAs name two text encoders (`lora_te1_`, `lora_te2_`, `text_encoder_2.`), SD 1.x
    /// and 2.x LoRAs one (`lora_te_`): a LoRA for the other kind is refused by name.
    fn check_family<'a>(
        &self,
        name: &str,
        layers: impl Iterator<Item = &'a str> + Clone,
    ) -> Result<()> {
        let two = layers.clone().any(|l| {
            l.starts_with("lora_te1_")
                || l.starts_with("lora_te2_")
                || l.starts_with("text_encoder_2.")
        });
        let one = layers.clone().any(|l| l.starts_with("lora_te_"));
        let model_two = self.family.encoders.len() == 2;
        if two && !model_two {
            bail!("LoRA {name} is an SDXL LoRA (two text encoders: lora_te1_/lora_te2_) but this checkpoint is {} — use a LoRA made for it", self.family.name);
        }
        if one && model_two {
            bail!("LoRA {name} is an SD 1.x/2.x LoRA (one text encoder: lora_te_) but this checkpoint is {} — use an SDXL LoRA", self.family.name);
        }
        Ok(())
    }
}

/// The diffusers component a peft layer belongs to, whose `lora_alpha` the metadata keeps:
/// `text_encoder*` or `unet` by its first part, bare diffusers UNet names `unet`.
fn peft_component(layer: &str) -> String {
    match layer.split_once('.') {
        Some((first, _)) if first.starts_with("text_encoder") || first == "unet" => first.into(),
        _ => "unet".into(),
    }
}
