//! Loading a Flux transformer from a diffusers folder, a BFL single file or an all-in-one
//! checkpoint: detect the layout, read the shape from the weights, fill every parameter.
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Result};
use tch::{nn, Device, Kind};

use super::config::FluxConfig;
use super::layout::Layout;
use super::model::Flux;
use crate::common::weights::{open, TensorSource};
use hiresfix_model_parts::weights::Weights;

/// A loaded transformer, its weights' home and what was found.
#[derive(Debug)]
pub struct LoadedFlux {
    pub model: Flux,
    pub vs: nn::VarStore,
    pub layout: Layout,
}

impl LoadedFlux {
    pub fn config(&self) -> &FluxConfig {
        self.model.config()
    }
}

/// [`load_with`] without RoPE axes: from a folder's config.json, else Flux.1's.
pub fn load(path: &Path) -> Result<LoadedFlux> {
    load_with(path, None)
}

/// Loads `path` (a `.safetensors` file, a `.safetensors.index.json`, a diffusers pipeline or
/// transformer folder) on the CPU in fp32; `axes` gives the RoPE axes a file cannot tell.
pub fn load_with(path: &Path, axes: Option<[i64; 3]>) -> Result<LoadedFlux> {
    load_on(path, axes, Device::Cpu, Kind::Float)
}

/// [`load_with`] onto `device` in `kind`.
pub fn load_on(
    path: &Path,
    axes: Option<[i64; 3]>,
    device: Device,
    kind: Kind,
) -> Result<LoadedFlux> {
    load_held(path, axes, device, (kind, kind))
}

/// [`load_on`] with the linear weights (every 2-D `.weight`) held in `linear_kind` (fp8 for
/// `[model] weight_dtype = "fp8_e4m3fn"`), the other parameters in `kind`: each variable is
/// made in its own dtype and filled straight from the file, so the model never exists in
/// `kind` whole (libtorch's round to nearest, as torch's `.to(float8_e4m3fn)`; an fp8 file's
/// values are kept exactly).
pub fn load_held(
    path: &Path,
    axes: Option<[i64; 3]>,
    device: Device,
    (kind, linear_kind): (Kind, Kind),
) -> Result<LoadedFlux> {
    let (w, layout, config) = read(path, axes)?;
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(linear_kind);
    let model = Flux::new(&vs.root(), &config);
    if linear_kind != kind {
        tch::no_grad(|| {
            for (name, mut var) in vs.variables() {
                if !(name.ends_with(".weight") && var.dim() == 2) {
                    // Not yet filled: only its dtype changes (one bias or scale at a time).
                    var.set_data(&var.to_kind(kind));
                }
            }
        });
    }
    fill(&vs, &w, &layout)?;
    Ok(LoadedFlux { model, vs, layout })
}

/// The weights of `path`, their layout and the transformer's shape (headers only).
fn read(path: &Path, axes: Option<[i64; 3]>) -> Result<(Weights, Layout, FluxConfig)> {
    let (file, config_json) = resolve(path)?;
    let w = open(&file)?;
    let layout = Layout::detect(&w);
    let axes = axes.or_else(|| {
        let text = std::fs::read_to_string(config_json?).ok()?;
        FluxConfig::axes_from_diffusers_json(&text)
    });
    let config = infer_config(&w, &layout, axes)?;
    Ok((w, layout, config))
}

/// The transformer's shape and layout of `path` (as [`load`] reads it), without building it.
pub fn read_config(path: &Path) -> Result<(FluxConfig, Layout)> {
    let (_, layout, config) = read(path, None)?;
    Ok((config, layout))
}

/// The weight file (or index) of `path` and the config.json beside it, if any.
fn resolve(path: &Path) -> Result<(PathBuf, Option<PathBuf>)> {
    if !path.is_dir() {
        if !path.exists() {
            bail!("{}: no such file", path.display());
        }
        return Ok((path.to_path_buf(), None));
    }
    let dir = if path.join("transformer").is_dir() {
        path.join("transformer")
    } else {
        path.to_path_buf()
    };
    let config = Some(dir.join("config.json")).filter(|p| p.exists());
    for name in [
        "diffusion_pytorch_model.safetensors",
        "diffusion_pytorch_model.safetensors.index.json",
    ] {
        if dir.join(name).exists() {
            return Ok((dir.join(name), config));
        }
    }
    bail!(
        "{}: no diffusion_pytorch_model.safetensors (or .index.json): not a diffusers Flux \
         transformer folder",
        dir.display()
    )
}

/// The shape of BFL-named `name`, or an error naming the missing tensor.
fn shape(w: &dyn TensorSource, layout: &Layout, name: &str) -> Result<Vec<i64>> {
    let recipe = layout.recipe(name);
    recipe.shape(w).ok_or_else(|| {
        let missing = recipe
            .sources()
            .into_iter()
            .find(|n| !w.contains(n))
            .unwrap_or(name);
        anyhow!(
            "{}: missing tensor `{missing}` ({} layout of a Flux transformer)",
            w.describe(),
            layout.describe()
        )
    })
}

/// Blocks under `prefix`: the highest index + 1 (a missing middle block is then named).
fn count_blocks(w: &dyn TensorSource, prefix: &str) -> i64 {
    w.names()
        .iter()
        .filter_map(|n| {
            n.strip_prefix(prefix)?
                .split('.')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .max()
        .map_or(0, |m| m + 1)
}

fn infer_config(
    w: &dyn TensorSource,
    layout: &Layout,
    axes: Option<[i64; 3]>,
) -> Result<FluxConfig> {
    let img_in = shape(w, layout, "img_in.weight")?;
    let d = img_in[0];
    let num_layers = count_blocks(w, &layout.block_prefix(false));
    let num_single_layers = count_blocks(w, &layout.block_prefix(true));
    let (head_dim, mlp_hidden) = if num_layers > 0 {
        (
            shape(w, layout, "double_blocks.0.img_attn.norm.query_norm.scale")?[0],
            shape(w, layout, "double_blocks.0.img_mlp.0.weight")?[0],
        )
    } else {
        (
            shape(w, layout, "single_blocks.0.norm.query_norm.scale")?[0],
            shape(w, layout, "single_blocks.0.linear1.weight")?[0] - 3 * d,
        )
    };
    if head_dim <= 0 || d % head_dim != 0 {
        bail!(
            "{}: hidden size {d} is not a multiple of the head dim {head_dim}",
            w.describe()
        );
    }
    let guidance_embeds = layout
        .recipe("guidance_in.in_layer.weight")
        .shape(w)
        .is_some();
    Ok(FluxConfig {
        in_channels: img_in[1],
        out_channels: shape(w, layout, "final_layer.linear.weight")?[0],
        num_layers,
        num_single_layers,
        heads: d / head_dim,
        head_dim,
        mlp_hidden,
        joint_attention_dim: shape(w, layout, "txt_in.weight")?[1],
        pooled_projection_dim: shape(w, layout, "vector_in.in_layer.weight")?[1],
        guidance_embeds,
        axes_dims_rope: FluxConfig::axes_for(&w.describe(), head_dim, axes)?,
        theta: 10000.0,
    })
}

/// Copies every parameter of `vs` from `w` (shape-checked).
fn fill(vs: &nn::VarStore, w: &dyn TensorSource, layout: &Layout) -> Result<()> {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        let found = shape(w, layout, &name)?;
        if found != var.size() {
            bail!(
                "{}: tensor `{}` is {found:?}, a Flux transformer of this shape needs {:?}",
                w.describe(),
                layout.recipe(&name).sources().join(" + "),
                var.size()
            );
        }
        var.copy_(&layout.recipe(&name).read(w)?);
    }
    Ok(())
}
