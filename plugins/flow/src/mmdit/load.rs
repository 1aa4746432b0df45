//! Loading a transformer from what people have: a diffusers folder (the pipeline's, or its
//! `transformer/`), a single file in the original layout (`model.diffusion_model.*`, or a
//! transformer-only file without the prefix), or any [`TensorSource`] with a known layout.
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

use super::config::MmDitConfig;
use super::layout::{Layout, Recipe};
use super::model::MmDit;
use crate::common::weights::{open, TensorSource};

/// A transformer and the store holding its parameters.
pub struct LoadedMmDit {
    pub var_store: VarStore,
    pub model: MmDit,
    pub layout: Layout,
}

/// Loads the transformer at `path` onto `device` in `kind`.
pub fn load(path: &Path, device: Device, kind: Kind) -> Result<LoadedMmDit> {
    let shown = path.display();
    if path.is_dir() {
        let dir = match path.join("transformer").is_dir() {
            true => path.join("transformer"),
            false => path.to_path_buf(),
        };
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).with_context(|| {
            format!(
                "{}: cannot read (a diffusers transformer folder has one)",
                config_path.display()
            )
        })?;
        let config = MmDitConfig::from_diffusers_json(&text, &config_path.display().to_string())?;
        let single = dir.join("diffusion_pytorch_model.safetensors");
        let index = dir.join("diffusion_pytorch_model.safetensors.index.json");
        let source: Box<dyn TensorSource> = match (single.is_file(), index.is_file()) {
            (true, _) => Box::new(open(&single)?),
            (false, true) => Box::new(open(&index)?),
            _ => bail!(
                "{}: no diffusion_pytorch_model.safetensors (a diffusers transformer folder)",
                dir.display()
            ),
        };
        let layout = detect(source.as_ref())?;
        return load_from(source.as_ref(), layout, &config, device, kind);
    }
    let file = open(path)?;
    let layout = detect(&file)?;
    let config = match &layout {
        Layout::Original { prefix } => MmDitConfig::infer(&file, prefix)?,
        Layout::Diffusers => {
            let config_path = path.with_file_name("config.json");
            let text = std::fs::read_to_string(&config_path).map_err(|_| {
                anyhow!("{shown}: a diffusers-layout transformer file needs its config.json beside it; give the folder")
            })?;
            MmDitConfig::from_diffusers_json(&text, &config_path.display().to_string())?
        }
    };
    load_from(&file, layout, &config, device, kind)
}

fn detect(source: &dyn TensorSource) -> Result<Layout> {
    Layout::detect(&source.names()).ok_or_else(|| {
        anyhow!(
            "{}: no SD3 transformer in it (neither `model.diffusion_model.x_embedder.proj.weight` \
             nor diffusers' `pos_embed.proj.weight`)",
            source.describe()
        )
    })
}

/// Builds the transformer for `config` and fills every parameter from `source`.
pub fn load_from(
    source: &dyn TensorSource,
    layout: Layout,
    config: &MmDitConfig,
    device: Device,
    kind: Kind,
) -> Result<LoadedMmDit> {
    let mut var_store = VarStore::new(device);
    var_store.set_kind(kind);
    let model = MmDit::new(&var_store.root(), config);
    var_store.freeze();
    let mut variables = var_store.variables().into_iter().collect::<Vec<_>>();
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, var) in variables {
        let recipe = layout.recipe(&key, config)?;
        let tensor = make(source, &recipe, &key, &var.size())?;
        tch::no_grad(|| var.shallow_clone().f_copy_(&tensor))
            .with_context(|| format!("{}: cannot copy `{key}`", source.describe()))?;
    }
    Ok(LoadedMmDit {
        var_store,
        model,
        layout,
    })
}

/// The model tensor `key` of shape `want`, made from `source` by `recipe`.
fn make(source: &dyn TensorSource, recipe: &Recipe, key: &str, want: &[i64]) -> Result<Tensor> {
    let what = source.describe();
    let names = recipe.sources();
    for name in &names {
        if source.shape(name).is_none() {
            // A prefix is no rename: the model key is named only when it differs otherwise.
            let model_key = match name.ends_with(key) {
                true => String::new(),
                false => format!(" (the transformer's `{key}`)"),
            };
            bail!("{what}: missing tensor `{name}`{model_key}");
        }
    }
    let shapes: Vec<Vec<i64>> = names.iter().filter_map(|n| source.shape(n)).collect();
    // Concatenated parts are equal slices of the model tensor along dim 0.
    let mut stored = shapes[0].clone();
    if let Some(rows) = stored.first_mut() {
        *rows *= names.len() as i64;
    }
    if stored != want || shapes.iter().any(|s| s != &shapes[0]) {
        let listed: Vec<String> = names
            .iter()
            .zip(&shapes)
            .map(|(n, s)| format!("`{n}` {s:?}"))
            .collect();
        let parts = match names.len() {
            1 => String::new(),
            n => format!(" from {n} equal parts"),
        };
        bail!(
            "{what}: tensor {} does not fit this transformer, which needs {want:?}{parts}",
            listed.join(" + ")
        );
    }
    let parts = names
        .iter()
        .map(|n| source.read(n))
        .collect::<Result<Vec<_>>>()?;
    Ok(match recipe {
        Recipe::Key(_) => parts[0].shallow_clone(),
        Recipe::Concat(_) => Tensor::cat(&parts, 0),
        Recipe::SwapHalves(_) => {
            let halves = parts[0].chunk(2, 0);
            Tensor::cat(&[&halves[1], &halves[0]], 0)
        }
    })
}
