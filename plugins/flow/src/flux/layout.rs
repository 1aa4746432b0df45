//! The two key layouts of Flux transformer weights. The model is built under Black Forest Labs'
//! names (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`, `final_layer.*`), bare or
//! under `model.diffusion_model.` (Forge / ComfyUI all-in-one files); a diffusers folder's names
//! are renamed into them — the inverse of diffusers' `convert_flux_transformer_checkpoint_to_
//! diffusers`: q, k, v (and the single blocks' MLP input) concatenated into the fused linears,
//! the final layer's `(scale, shift)` halves swapped back to `(shift, scale)`.
use anyhow::Result;
use tch::Tensor;

use crate::common::weights::TensorSource;

/// The all-in-one checkpoints' transformer prefix.
pub const SINGLE_FILE_PREFIX: &str = "model.diffusion_model.";

/// Which names a file uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// BFL names behind `prefix` (empty or [`SINGLE_FILE_PREFIX`]).
    Bfl { prefix: String },
    /// diffusers `FluxTransformer2DModel` names.
    Diffusers,
}

/// How one BFL-named tensor is read from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipe {
    One(String),
    /// Concatenated along the first dimension (fused projections).
    Cat(Vec<String>),
    /// The two halves of the first dimension swapped.
    SwapHalves(String),
}

/// Per-block renames BFL → diffusers: a BFL name part and the diffusers part(s) it is made of;
/// `.weight` / `.bias` follow both unless the entry names the whole tensor.
const DOUBLE: &[(&str, &[&str])] = &[
    ("img_mod.lin", &["norm1.linear"]),
    ("txt_mod.lin", &["norm1_context.linear"]),
    ("img_attn.qkv", &["attn.to_q", "attn.to_k", "attn.to_v"]),
    (
        "txt_attn.qkv",
        &["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
    ),
    ("img_attn.norm.query_norm.scale", &["attn.norm_q.weight"]),
    ("img_attn.norm.key_norm.scale", &["attn.norm_k.weight"]),
    (
        "txt_attn.norm.query_norm.scale",
        &["attn.norm_added_q.weight"],
    ),
    (
        "txt_attn.norm.key_norm.scale",
        &["attn.norm_added_k.weight"],
    ),
    ("img_attn.proj", &["attn.to_out.0"]),
    ("txt_attn.proj", &["attn.to_add_out"]),
    ("img_mlp.0", &["ff.net.0.proj"]),
    ("img_mlp.2", &["ff.net.2"]),
    ("txt_mlp.0", &["ff_context.net.0.proj"]),
    ("txt_mlp.2", &["ff_context.net.2"]),
];
const SINGLE: &[(&str, &[&str])] = &[
    ("modulation.lin", &["norm.linear"]),
    (
        "linear1",
        &["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
    ),
    ("linear2", &["proj_out"]),
    ("norm.query_norm.scale", &["attn.norm_q.weight"]),
    ("norm.key_norm.scale", &["attn.norm_k.weight"]),
];
const TOP: &[(&str, &[&str])] = &[
    ("img_in", &["x_embedder"]),
    ("txt_in", &["context_embedder"]),
    (
        "time_in.in_layer",
        &["time_text_embed.timestep_embedder.linear_1"],
    ),
    (
        "time_in.out_layer",
        &["time_text_embed.timestep_embedder.linear_2"],
    ),
    (
        "guidance_in.in_layer",
        &["time_text_embed.guidance_embedder.linear_1"],
    ),
    (
        "guidance_in.out_layer",
        &["time_text_embed.guidance_embedder.linear_2"],
    ),
    (
        "vector_in.in_layer",
        &["time_text_embed.text_embedder.linear_1"],
    ),
    (
        "vector_in.out_layer",
        &["time_text_embed.text_embedder.linear_2"],
    ),
    ("final_layer.linear", &["proj_out"]),
];

impl Layout {
    /// The layout of `w`: diffusers if it has `x_embedder.weight`, else BFL behind the prefix
    /// its `img_in.weight` has (none when absent: the missing tensor is named at load).
    pub fn detect(w: &dyn TensorSource) -> Layout {
        if w.contains("x_embedder.weight") {
            return Layout::Diffusers;
        }
        let prefix = w
            .names()
            .iter()
            .find_map(|n| n.strip_suffix("img_in.weight").map(String::from))
            .unwrap_or_default();
        Layout::Bfl { prefix }
    }

    /// Where the BFL-named tensor `name` lies in a file of this layout.
    pub fn recipe(&self, name: &str) -> Recipe {
        match self {
            Layout::Bfl { prefix } => Recipe::One(format!("{prefix}{name}")),
            Layout::Diffusers => diffusers_recipe(name),
        }
    }

    /// The name blocks are counted under: `double_blocks.` / `transformer_blocks.` (with the
    /// prefix), for `single` the single-stream ones.
    pub fn block_prefix(&self, single: bool) -> String {
        match (self, single) {
            (Layout::Bfl { prefix }, false) => format!("{prefix}double_blocks."),
            (Layout::Bfl { prefix }, true) => format!("{prefix}single_blocks."),
            (Layout::Diffusers, false) => "transformer_blocks.".into(),
            (Layout::Diffusers, true) => "single_transformer_blocks.".into(),
        }
    }

    pub fn describe(&self) -> &'static str {
        match self {
            Layout::Bfl { prefix } if prefix.is_empty() => "Black Forest Labs single file",
            Layout::Bfl { .. } => "all-in-one checkpoint (model.diffusion_model.*)",
            Layout::Diffusers => "diffusers",
        }
    }
}

fn diffusers_recipe(name: &str) -> Recipe {
    if let Some(rest) = name.strip_prefix("final_layer.adaLN_modulation.1") {
        return Recipe::SwapHalves(format!("norm_out.linear{rest}"));
    }
    let block = |kind: &str, table: &[(&str, &[&str])], to: &str| -> Option<Recipe> {
        let rest = name.strip_prefix(kind)?;
        let (index, part) = rest.split_once('.')?;
        renamed(part, table, &format!("{to}.{index}."))
    };
    block("double_blocks.", DOUBLE, "transformer_blocks")
        .or_else(|| block("single_blocks.", SINGLE, "single_transformer_blocks"))
        .or_else(|| renamed(name, TOP, ""))
        .unwrap_or_else(|| Recipe::One(name.to_string()))
}

/// `part` renamed by `table` under `prefix`, `.weight` / `.bias` carried over.
fn renamed(part: &str, table: &[(&str, &[&str])], prefix: &str) -> Option<Recipe> {
    table.iter().find_map(|(bfl, diff)| {
        let suffix = part.strip_prefix(bfl)?;
        if !(suffix.is_empty() || suffix == ".weight" || suffix == ".bias") {
            return None;
        }
        let names: Vec<String> = diff
            .iter()
            .map(|d| format!("{prefix}{d}{suffix}"))
            .collect();
        Some(match names.len() {
            1 => Recipe::One(names.into_iter().next().unwrap_or_default()),
            _ => Recipe::Cat(names),
        })
    })
}

impl Recipe {
    /// The file names it reads.
    pub fn sources(&self) -> Vec<&str> {
        match self {
            Recipe::One(n) | Recipe::SwapHalves(n) => vec![n],
            Recipe::Cat(ns) => ns.iter().map(|s| s.as_str()).collect(),
        }
    }

    /// The tensor's shape, `None` if a part is missing.
    pub fn shape(&self, w: &dyn TensorSource) -> Option<Vec<i64>> {
        let shapes: Option<Vec<Vec<i64>>> = self.sources().iter().map(|n| w.shape(n)).collect();
        let mut shapes = shapes?.into_iter();
        let mut first = shapes.next()?;
        for s in shapes {
            first[0] += s.first()?;
        }
        Some(first)
    }

    pub fn read(&self, w: &dyn TensorSource) -> Result<Tensor> {
        Ok(match self {
            Recipe::One(n) => w.read(n)?,
            Recipe::Cat(ns) => {
                let parts = ns.iter().map(|n| w.read(n)).collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)
            }
            Recipe::SwapHalves(n) => {
                let halves = w.read(n)?.chunk(2, 0);
                Tensor::cat(&[&halves[1], &halves[0]], 0)
            }
        })
    }
}
