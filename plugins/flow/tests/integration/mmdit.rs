//! MMDiT parity: the tiny SD 3.5-shaped transformer of scripts/make_mmdit_reference.py (dual
//! attention in block 0, q/k RMSNorm, pre-only last block), loaded from its diffusers folder and
//! from its single file, against diffusers' `SD3Transformer2DModel` outputs (fp32 CPU); and the
//! one-line refusals of files that do not fit.
use std::path::{Path, PathBuf};

use hiresfix_flow::mmdit::{
    load, open_safetensors, Layout, LoadedMmDit, MmDitConfig, TensorSource,
};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn single_file() -> PathBuf {
    data().join("sd3-tiny-transformer.safetensors")
}

fn diffusers_folder() -> PathBuf {
    data().join("sd3-tiny")
}

/// max |a − b| / max |b|
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

fn load_cpu(path: &Path) -> anyhow::Result<LoadedMmDit> {
    load(path, Device::Cpu, Kind::Float)
}

/// Runs both reference cases (8×8 and 12×16 latents, batch 2, two timesteps each).
fn assert_matches_diffusers(loaded: &LoadedMmDit, label: &str) {
    let refs =
        open_safetensors(&diffusers_folder().join("transformer/reference.safetensors")).unwrap();
    for case in ["square", "wide"] {
        let get = |k: &str| refs.read(&format!("{case}.{k}")).unwrap();
        let out = tch::no_grad(|| {
            loaded.model.forward(
                &get("latent"),
                &get("timestep"),
                &get("context"),
                &get("pooled"),
            )
        })
        .unwrap();
        let err = relative_error(&out, &get("output"));
        eprintln!("mmdit {label:<12} {case:<7} relative error {err:.3e}");
        assert!(
            err <= TOLERANCE,
            "{label} {case}: relative error {err:e} > {TOLERANCE:e}"
        );
    }
}

#[test]
fn mmdit_diffusers_folder_matches_diffusers() {
    let loaded = load_cpu(&diffusers_folder()).unwrap();
    assert_eq!(loaded.layout, Layout::Diffusers);
    assert_matches_diffusers(&loaded, "diffusers");
}

/// A diffusers folder whose weights are split in two shards with an index, as large
/// transformers are published.
#[test]
fn mmdit_sharded_diffusers_folder_matches_diffusers() {
    let dir = tempfile::tempdir().unwrap();
    let src = diffusers_folder().join("transformer");
    std::fs::copy(src.join("config.json"), dir.path().join("config.json")).unwrap();
    let file = open_safetensors(&src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let names = file.names();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let shard = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        let tensors: Vec<(String, Tensor)> = part
            .iter()
            .map(|n| (n.clone(), file.read(n).unwrap()))
            .collect();
        Tensor::write_safetensors(&tensors, dir.path().join(&shard)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), shard.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        dir.path()
            .join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let loaded = load_cpu(dir.path()).unwrap();
    assert_matches_diffusers(&loaded, "shards");
}

#[test]
fn mmdit_single_file_matches_diffusers() {
    let loaded = load_cpu(&single_file()).unwrap();
    assert_eq!(
        loaded.layout,
        Layout::Original {
            prefix: "model.diffusion_model.".into()
        }
    );
    assert_matches_diffusers(&loaded, "single file");
}

/// The comparison can fail: the same inputs with the two images' timesteps swapped are far off.
#[test]
fn mmdit_parity_check_sees_a_swapped_timestep() {
    let loaded = load_cpu(&single_file()).unwrap();
    let refs =
        open_safetensors(&diffusers_folder().join("transformer/reference.safetensors")).unwrap();
    let get = |k: &str| refs.read(&format!("square.{k}")).unwrap();
    let swapped = get("timestep").flip([0]);
    let out = tch::no_grad(|| {
        loaded
            .model
            .forward(&get("latent"), &swapped, &get("context"), &get("pooled"))
    })
    .unwrap();
    let err = relative_error(&out, &get("output"));
    assert!(err > 1e-2, "swapped timesteps: relative error only {err:e}");
}

#[test]
fn mmdit_single_file_config_is_inferred_as_diffusers_states_it() {
    let text = std::fs::read_to_string(diffusers_folder().join("transformer/config.json")).unwrap();
    let stated = MmDitConfig::from_diffusers_json(&text, "config.json").unwrap();
    let inferred = load_cpu(&single_file()).unwrap().model.config().clone();
    assert_eq!(inferred, stated);
    assert_eq!(stated.dual_attention_layers, vec![0]);
    assert!(stated.qk_norm);
}

/// The single file rewritten by `edit` (a name → tensor list) into a temporary file.
fn edited_single_file(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let file = open_safetensors(&single_file()).unwrap();
    let mut tensors: Vec<(String, Tensor)> = file
        .names()
        .into_iter()
        .map(|n| (n.clone(), file.read(&n).unwrap()))
        .collect();
    edit(&mut tensors);
    let path = dir.join("edited.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

/// The error of loading `path`, checked to be one line naming `needle`.
fn one_line_error(path: &Path, needle: &str) -> String {
    let err = match load_cpu(path) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => format!("{e:#}"),
    };
    eprintln!("refused: {err}");
    assert!(!err.contains('\n'), "not one line: {err}");
    assert!(err.contains(needle), "`{needle}` not named: {err}");
    err
}

/// Also a block's `qkv`, which the block count must not be read from (a middle block with
/// none would otherwise end the model early).
#[test]
fn mmdit_missing_single_file_tensor_is_named() {
    for key in [
        "model.diffusion_model.joint_blocks.1.context_block.mlp.fc2.bias",
        "model.diffusion_model.joint_blocks.1.x_block.attn.qkv.weight",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = edited_single_file(dir.path(), |t| t.retain(|(n, _)| n != key));
        let err = one_line_error(&path, &format!("missing tensor `{key}`"));
        assert!(err.starts_with(&path.display().to_string()), "{err}");
    }
}

#[test]
fn mmdit_misshapen_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let key = "model.diffusion_model.joint_blocks.2.x_block.mlp.fc1.weight";
    let path = edited_single_file(dir.path(), |t| {
        for (n, v) in t.iter_mut() {
            if n == key {
                *v = v.narrow(0, 0, 100);
            }
        }
    });
    one_line_error(
        &path,
        &format!("`{key}` [100, 32] does not fit this transformer, which needs [128, 32]"),
    );
}

#[test]
fn mmdit_missing_diffusers_tensor_names_both_keys() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("transformer");
    std::fs::create_dir(&folder).unwrap();
    let src = diffusers_folder().join("transformer");
    std::fs::copy(src.join("config.json"), folder.join("config.json")).unwrap();
    let file = open_safetensors(&src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let gone = "transformer_blocks.0.attn2.to_k.weight";
    let tensors: Vec<(String, Tensor)> = file
        .names()
        .into_iter()
        .filter(|n| n != gone)
        .map(|n| (n.clone(), file.read(&n).unwrap()))
        .collect();
    Tensor::write_safetensors(&tensors, folder.join("diffusion_pytorch_model.safetensors"))
        .unwrap();
    one_line_error(
        dir.path(),
        &format!(
            "missing tensor `{gone}` (the transformer's `joint_blocks.0.x_block.attn2.qkv.weight`)"
        ),
    );
}

#[test]
fn mmdit_file_without_a_transformer_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vae.safetensors");
    Tensor::write_safetensors(
        &[(
            "first_stage_model.decoder.conv_in.weight",
            Tensor::zeros([4, 4], (Kind::Float, Device::Cpu)),
        )],
        &path,
    )
    .unwrap();
    one_line_error(&path, "no SD3 transformer in it");
}

#[test]
fn mmdit_inputs_that_do_not_fit_are_refused_not_panicking() {
    let loaded = load_cpu(&single_file()).unwrap();
    let f = (Kind::Float, Device::Cpu);
    let (latent, t) = (Tensor::zeros([1, 16, 8, 8], f), Tensor::zeros([1], f));
    let (context, pooled) = (Tensor::zeros([1, 3, 32], f), Tensor::zeros([1, 64], f));
    let run = |l: &Tensor, t: &Tensor, c: &Tensor, p: &Tensor| {
        loaded.model.forward(l, t, c, p).unwrap_err().to_string()
    };
    assert!(run(&Tensor::zeros([1, 4, 8, 8], f), &t, &context, &pooled).contains("4 channels"));
    assert!(run(&Tensor::zeros([1, 16, 7, 8], f), &t, &context, &pooled)
        .contains("multiples of 2 up to 32"));
    assert!(
        run(&Tensor::zeros([1, 16, 34, 8], f), &t, &context, &pooled)
            .contains("multiples of 2 up to 32")
    );
    assert!(run(&latent, &Tensor::zeros([2], f), &context, &pooled).contains("timestep"));
    assert!(run(&latent, &t, &Tensor::zeros([1, 3, 16], f), &pooled).contains("text tokens"));
    assert!(run(&latent, &t, &context, &Tensor::zeros([1, 32], f)).contains("pooled"));
}
