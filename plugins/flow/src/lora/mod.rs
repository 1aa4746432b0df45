//! LoRAs on a loaded Flux transformer, per pass: merged into its weights (`W += weight · ΔW`,
//! ΔW with its alpha/rank scale as kohya, peft and ComfyUI compute it), the weights a set
//! changed kept as they were and put back when the set changes, bit for bit (model-parts'
//! `lora::Originals`, as the SD plugin does). Reading the file, the formats' deltas (LoRA,
//! LoCon, LoHa, LoKr), the shape checks and the NaN checks are model-parts' `lora`; what is
//! Flux's is the names ([`names`]: kohya `lora_unet_double_blocks_…`, ComfyUI / BFL
//! `diffusion_model.…`, diffusers / peft `transformer.transformer_blocks.…` with q, k, v as
//! rows of the fused weight) and telling a LoRA of another family by its names ([`family`]).
//!
//! What a backend calls: [`FluxLoras::new`] on the transformer's parameters once, then
//! [`FluxLoras::apply`] with each pass's set ([`LoraFile::from_spec`] of the host's specs; the
//! same set again does nothing; an empty set is the base weights).
pub mod family;
pub mod names;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use anyhow::{anyhow, bail, Result};
use hiresfix_model_parts::health;
use hiresfix_model_parts::lora::{add_each, cut, formats, read_layers, Originals};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use tch::Tensor;

pub use family::{check_family, lora_family, refuse, LoraFamily};
pub use names::{Target, Targets};

/// One LoRA of a pass's set: the file and its weight (A1111's UNet multiplier).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraFile {
    pub path: PathBuf,
    pub weight: f64,
}

impl LoraFile {
    pub fn new(path: impl Into<PathBuf>, weight: f64) -> Self {
        Self {
            path: path.into(),
            weight,
        }
    }

    /// The host's LoRA of a pass: its UNet multiplier weighs the transformer (the text-encoder
    /// one would weigh CLIP-L layers, which are skipped for now).
    pub fn from_spec(spec: &host_api::LoraSpec) -> Self {
        Self::new(spec.path.as_str(), spec.unet)
    }

    /// The file's name in backquotes, for messages.
    pub fn shown(&self) -> String {
        family::shown(&self.path)
    }
}

/// The LoRA state of one Flux transformer.
pub struct FluxLoras {
    targets: Targets,
    /// How messages name the model ("Flux.1-dev").
    model_name: String,
    originals: Originals,
    current: Vec<LoraFile>,
}

/// One file's changes: per model key, (rows, ΔW · weight).
type Changes = BTreeMap<String, Vec<(Option<(i64, i64)>, Tensor)>>;

impl FluxLoras {
    /// The state of the transformer whose parameters (BFL names) are `vars`
    /// (`LoadedFlux::vs.variables()`); `model_name` for messages.
    pub fn new(vars: &HashMap<String, Tensor>, model_name: &str) -> Self {
        Self {
            targets: Targets::new(vars),
            model_name: model_name.to_owned(),
            originals: Originals::default(),
            current: Vec::new(),
        }
    }

    /// The set now applied.
    pub fn current(&self) -> &[LoraFile] {
        &self.current
    }

    /// Whether the current set changed the weight `key`.
    pub fn changed(&self, key: &str) -> bool {
        self.originals.contains(key)
    }

    /// Makes `set` the applied set: back to the base weights, then each LoRA added. Returns
    /// warnings (layers that match no weight). On an error — one line naming the file — the
    /// model is left on its base weights.
    pub fn apply(
        &mut self,
        vars: &HashMap<String, Tensor>,
        set: &[LoraFile],
    ) -> Result<Vec<String>> {
        if set == self.current.as_slice() {
            return Ok(Vec::new());
        }
        self.restore(vars);
        let added = add_each(set, LoraFile::shown, |lora| self.add(vars, lora));
        match added {
            Ok(_) => self.current = set.to_vec(),
            Err(_) => self.restore(vars),
        }
        added
    }

    /// Drops the saved base weights (the weights they would restore are gone).
    pub fn forget(&mut self) {
        self.originals.clear();
        self.current.clear();
    }

    /// The current set for messages: "LoRA `a.safetensors` (weight 0.8), ...", `None` when
    /// empty.
    pub fn describe(&self) -> Option<String> {
        let each: Vec<String> = self
            .current
            .iter()
            .map(|l| format!("LoRA {} (weight {})", l.shown(), health::number(l.weight)))
            .collect();
        (!each.is_empty()).then(|| each.join(", "))
    }

    fn restore(&mut self, vars: &HashMap<String, Tensor>) {
        self.originals.restore(vars);
        self.current.clear();
    }

    /// Adds one LoRA; returns warnings (layers skipped). Its family must be Flux's (by its
    /// names, before any tensor is read), its tensors finite, its shapes fit the weights and
    /// every changed weight stay finite: else an error naming the file and the tensor.
    fn add(&mut self, vars: &HashMap<String, Tensor>, lora: &LoraFile) -> Result<Vec<String>> {
        let name = lora.shown();
        if !lora.weight.is_finite() {
            bail!(
                "LoRA {name}: weight {} is not a finite number — use a weight like 0.8",
                health::number(lora.weight)
            );
        }
        let header = SafetensorsFile::open(&lora.path)?;
        let found = lora_family(header.entries().keys().map(String::as_str));
        check_family(&name, found, LoraFamily::Flux, &self.model_name)?;
        drop(header);
        let read = read_layers(&lora.path, &name, |_| "transformer".into())?;
        let (changes, skipped) = self.changes(vars, &name, &read.layers, lora.weight)?;
        if changes.is_empty() {
            bail!(
                "LoRA {name}: none of its {} layers matches a weight of this {} transformer — is it for another model?",
                read.layers.len(),
                self.model_name
            );
        }
        tch::no_grad(|| self.merge(vars, &name, lora.weight, changes))?;
        let mut warnings = Vec::new();
        let (te, other): (Vec<&str>, Vec<&str>) = skipped
            .into_iter()
            .chain(read.stray.iter().map(String::as_str))
            .partition(|l| is_text_encoder(l));
        if !te.is_empty() {
            warnings.push(format!(
                "LoRA {name}: its {} text-encoder layers were skipped (Flux LoRAs apply to the transformer only for now)",
                te.len()
            ));
        }
        if !other.is_empty() {
            warnings.push(format!(
                "LoRA {name}: {} of its {} layers match no weight of this {} transformer and were skipped (first: {})",
                other.len(),
                read.layers.len() + read.stray.len(),
                self.model_name,
                other.iter().take(3).map(|l| cut(l)).collect::<Vec<_>>().join(", ")
            ));
        }
        Ok(warnings)
    }

    /// Each matched layer's scaled change (shapes checked first), and the layers matching none.
    fn changes<'a>(
        &self,
        vars: &HashMap<String, Tensor>,
        name: &str,
        layers: &'a BTreeMap<String, formats::LayerParts>,
        weight: f64,
    ) -> Result<(Changes, Vec<&'a str>)> {
        let mut changes = Changes::new();
        let mut skipped = Vec::new();
        for (layer, parts) in layers {
            let Some(target) = self.targets.get(layer) else {
                skipped.push(layer.as_str());
                continue;
            };
            let var = vars
                .get(&target.key)
                .ok_or_else(|| anyhow!("LoRA {name}: the model has no weight `{}`", target.key))?;
            let mut shape = var.size();
            if let Some((_, rows)) = target.rows {
                shape[0] = rows;
            }
            let delta = formats::delta(layer, parts, &target.key, &shape)
                .map_err(|e| anyhow!("LoRA {name}: {e}"))?;
            let delta = match target.swap_halves {
                true => {
                    let halves = delta.f_chunk(2, 0)?;
                    Tensor::f_cat(&[&halves[1], &halves[0]], 0)?
                }
                false => delta,
            };
            changes
                .entry(target.key.clone())
                .or_default()
                .push((target.rows, delta * weight));
        }
        Ok((changes, skipped))
    }

    /// Adds `changes` to the weights (copy on write); a weight made NaN / inf is an error.
    fn merge(
        &mut self,
        vars: &HashMap<String, Tensor>,
        name: &str,
        weight: f64,
        changes: Changes,
    ) -> Result<()> {
        for (key, deltas) in changes {
            self.originals
                .add(&key, &vars[&key], &deltas, name, weight)?;
        }
        Ok(())
    }
}

/// A LoRA layer of a text encoder (CLIP-L or T5), which the transformer's LoRA state skips.
fn is_text_encoder(layer: &str) -> bool {
    ["lora_te", "text_encoder", "text_encoders."]
        .iter()
        .any(|p| layer.starts_with(p))
}
