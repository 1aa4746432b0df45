//! What every backend's LoRA support shares: reading a LoRA file into layers (each layer's
//! tensors by suffix, finite-checked, peft alphas from the metadata: [`read_layers`]), the
//! formats' weight deltas with their alpha/rank scale (`formats`), the shape checks before any
//! tensor operation (`shapes`), and the copy-on-write keeping of the weights a set changed so
//! the next pass gets the base weights back bit for bit ([`Originals`]). Which model weight a
//! layer name means is the backend's (each family names its layers its own way).
pub mod formats;
pub mod fp8_round;
pub mod shapes;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use tch::{Kind, Tensor};

use crate::guard::guarded;
use crate::health;
use crate::weights::safetensors::SafetensorsFile;
pub use formats::LayerParts;
pub use shapes::cut;

/// A LoRA file's tensors grouped by layer name, and the keys with no known suffix.
pub struct Layers {
    pub layers: BTreeMap<String, LayerParts>,
    pub stray: Vec<String>,
}

/// Reads the LoRA file `path` (`name`: how messages show it) into layers. A tensor holding NaN
/// or inf is an error naming it; peft layers get the `lora_alpha` of their component from the
/// file's `lora_adapter_metadata` ([`peft_alphas`]; `component` names a layer's component).
pub fn read_layers(path: &Path, name: &str, component: impl Fn(&str) -> String) -> Result<Layers> {
    let file = SafetensorsFile::open(path)?;
    let tensors = file
        .entries()
        .keys()
        .map(|k| Ok((k.clone(), file.read(k)?)))
        .collect::<Result<Vec<_>>>()?;
    if let Some((key, _)) = tensors.iter().find(|(_, t)| !health::is_finite(t)) {
        bail!(
            "LoRA {name}: tensor `{}` holds NaN or inf — the file is damaged; re-download it",
            cut(key)
        );
    }
    let (mut layers, stray) = formats::group(tensors);
    peft_alphas(&mut layers, file.metadata(), component)
        .map_err(|e| anyhow!("LoRA {name}: {e}"))?;
    Ok(Layers { layers, stray })
}

/// diffusers' `save_lora_weights` keeps peft's `lora_alpha` per component (`unet.lora_alpha`,
/// `text_encoder.lora_alpha`, `transformer.lora_alpha`, ...) in the `lora_adapter_metadata`
/// JSON; without it the scale is 1, as in every tool.
pub fn peft_alphas(
    layers: &mut BTreeMap<String, LayerParts>,
    metadata: &BTreeMap<String, String>,
    component: impl Fn(&str) -> String,
) -> Result<()> {
    let Some(text) = metadata.get("lora_adapter_metadata") else {
        return Ok(());
    };
    let json: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| anyhow!("its lora_adapter_metadata is not JSON ({e})"))?;
    for (name, parts) in layers.iter_mut().filter(|(_, p)| p.is_peft()) {
        let key = format!("{}.lora_alpha", component(name));
        if let Some(alpha) = json.get(key.as_str()).and_then(|v| v.as_f64()) {
            if !alpha.is_finite() {
                bail!("its lora_adapter_metadata `{key}` is not a finite number");
            }
            parts.default_alpha(alpha);
        }
    }
    Ok(())
}

/// Adds each LoRA of `set` with `add` (a libtorch failure an error naming the LoRA by
/// `shown`), the warnings of all; the first error ends it (the caller then restores the base
/// weights).
pub fn add_each<S>(
    set: &[S],
    shown: impl Fn(&S) -> String,
    mut add: impl FnMut(&S) -> Result<Vec<String>>,
) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for lora in set {
        let what = format!("applying LoRA {}", shown(lora));
        warnings.extend(guarded(&what, || add(lora))?);
    }
    Ok(warnings)
}

/// The weights a LoRA set changed, as they were before, by model key. Copy on write: a changed
/// parameter gets a copy of its own to add to and the base tensor is kept untouched (a weight
/// that views the checkpoint file is never written); restoring swaps the base back in.
#[derive(Default)]
pub struct Originals(HashMap<String, Tensor>);

impl Originals {
    /// The parameter `var` (model key `key`) ready to be added to: on its first change its base
    /// tensor is kept and it gets a copy of its own. Call under `no_grad`.
    pub fn writable(&mut self, key: &str, var: &Tensor) -> Result<Tensor> {
        let mut var = var.shallow_clone();
        if !self.0.contains_key(key) {
            let base = var.f_detach()?;
            var.f_set_data(&base.copy())?;
            self.0.insert(key.to_owned(), base);
        }
        Ok(var)
    }

    /// Adds `deltas` to the parameter `var` (model key `key`; each delta to the rows
    /// `(first, n)` or to the whole), copy on write; an error naming the LoRA `name` and its
    /// `weight` when the weight becomes NaN or inf (the caller restores). Call under `no_grad`.
    pub fn add(
        &mut self,
        key: &str,
        var: &Tensor,
        deltas: &[(Option<(i64, i64)>, Tensor)],
        name: &str,
        weight: f64,
    ) -> Result<()> {
        let var = self.writable(key, var)?;
        // fp8 weights (Flux's `weight_dtype = "fp8_e4m3fn"`) have no arithmetic kernels: the
        // sum is made in fp32 and rounded back to fp8 — stochastically for E4M3, as ComfyUI
        // patches fp8 weights ([`fp8_round`]), so the LoRA's small changes survive on average.
        let fp8 = matches!(var.kind(), Kind::Float8e4m3fn | Kind::Float8e5m2);
        for (rows, delta) in deltas {
            let mut dst = match rows {
                Some((first, n)) => var.f_narrow(0, *first, *n)?,
                None => var.shallow_clone(),
            };
            let delta = delta.f_to_device(var.device())?;
            match fp8 {
                true => {
                    let sum = dst
                        .f_to_kind(Kind::Float)?
                        .f_add(&delta.f_to_kind(Kind::Float)?)?;
                    let rounded = match var.kind() {
                        Kind::Float8e4m3fn => {
                            let first = rows.map_or(0, |(first, _)| first);
                            fp8_round::stochastic_e4m3(&sum, fp8_round::seed_of(key) + first)
                        }
                        _ => sum,
                    };
                    dst.f_copy_(&rounded)?;
                }
                false => {
                    let _ = dst.f_add_(&delta.f_to_kind(var.kind())?)?;
                }
            }
        }
        let checked = match fp8 {
            true => var.f_to_kind(Kind::Float)?,
            false => var.shallow_clone(),
        };
        if !health::is_finite(&checked) {
            bail!(
                "LoRA {name} (weight {}) makes `{key}` NaN or inf in {} — lower its weight",
                health::number(weight),
                health::dtype(var.kind())
            );
        }
        Ok(())
    }

    /// Puts every changed weight's base tensor back into `vars`.
    pub fn restore(&mut self, vars: &HashMap<String, Tensor>) {
        tch::no_grad(|| {
            for (key, original) in self.0.drain() {
                if let Some(var) = vars.get(&key) {
                    // Every module holds this same tensor: the base data is back for all.
                    var.shallow_clone().set_data(&original);
                }
            }
        });
    }

    /// Whether `key` was changed.
    pub fn contains(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// The kept base tensors.
    pub fn tensors(&self) -> impl Iterator<Item = &Tensor> {
        self.0.values()
    }

    /// Forgets the kept tensors (the weights they would restore are gone).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}
