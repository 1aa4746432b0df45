//! Zero-copy CPU loading on the tiny SD 1.x model (an fp32 file): run in fp32, every
//! parameter views the file's mapping (its data inside a private mapping of that file, per
//! `/proc/self/maps`) and holds the file's values; run in fp16 every parameter is a copy.
//! LoRA copies on write: the file is never changed, the changed weights leave the mapping and
//! come back to it, bit for bit, when the set is removed; a VAE swapped in views its own file.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hiresfix_sd::lora::LoraSpec;
use hiresfix_sd::SdModel;
use tch::{Device, Kind, Tensor};

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(rel)
}

fn tiny() -> PathBuf {
    data("sd1-tiny/sd1-tiny.safetensors")
}

/// The address ranges where this process maps `file`.
fn mappings_of(file: &Path) -> Vec<(usize, usize)> {
    let file = file.canonicalize().unwrap();
    let file = file.to_str().unwrap();
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter(|line| line.ends_with(file))
        .filter_map(|line| {
            let (a, b) = line.split_whitespace().next()?.split_once('-')?;
            let parse = |h| usize::from_str_radix(h, 16).ok();
            Some((parse(a)?, parse(b)?))
        })
        .collect()
}

/// Whether the data of `t` lies in one of `ranges`.
fn inside(t: &Tensor, ranges: &[(usize, usize)]) -> bool {
    let start = t.data_ptr() as usize;
    let end = start + t.numel() * t.kind().elt_size_in_bytes();
    ranges.iter().any(|&(a, b)| a <= start && end <= b)
}

/// The model's parameters whose data lies in a mapping of `file`, by name.
fn viewing(model: &SdModel, file: &Path) -> Vec<String> {
    let ranges = mappings_of(file);
    let mut names: Vec<String> = model
        .var_store()
        .variables()
        .into_iter()
        .filter(|(_, t)| t.numel() > 0 && inside(t, &ranges))
        .map(|(k, _)| k)
        .collect();
    names.sort();
    names
}

fn stored() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(tiny())
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn parameters_view_the_file_when_the_dtype_matches_and_are_copies_when_it_does_not() {
    let model = SdModel::load(&tiny(), None, Device::Cpu, Kind::Float).unwrap();
    let vars = model.var_store().variables();
    let viewed = viewing(&model, &tiny());
    // Every parameter (none is transposed or misaligned in this file): zero copies.
    assert_eq!(viewed.len(), vars.len(), "only {viewed:?}");
    let file = stored();
    for (key, var) in &vars {
        assert!(var.equal(&file[key]), "{key} differs from the file");
    }
    let half = SdModel::load(&tiny(), None, Device::Cpu, Kind::Half).unwrap();
    assert_eq!(viewing(&half, &tiny()), Vec::<String>::new());
    for (key, var) in half.var_store().variables() {
        assert!(var.equal(&file[&key].to_kind(Kind::Half)), "{key} (fp16)");
    }
}

#[test]
fn lora_copies_on_write_the_file_is_unchanged_and_removing_it_views_the_file_again() {
    let before = std::fs::read(tiny()).unwrap();
    let model = SdModel::load(&tiny(), None, Device::Cpu, Kind::Float).unwrap();
    let all = viewing(&model, &tiny());
    let lora = LoraSpec {
        path: data("loras/sd1-kohya.safetensors"),
        name: "sd1-kohya".into(),
        te: 0.8,
        unet: 0.6,
    };
    model.set_loras(&[lora]).unwrap();
    let patched = viewing(&model, &tiny());
    let changed = all.len() - patched.len();
    assert!(changed >= 3, "{changed} weights left the mapping");
    let file = stored();
    let vars = model.var_store().variables();
    for key in &all {
        assert_eq!(vars[key].equal(&file[key]), patched.contains(key), "{key}");
    }
    model.set_loras(&[]).unwrap();
    assert_eq!(viewing(&model, &tiny()), all);
    for (key, var) in model.var_store().variables() {
        assert!(
            var.equal(&file[&key]),
            "{key} did not come back bit for bit"
        );
    }
    assert!(std::fs::read(tiny()).unwrap() == before, "the file changed");
}

#[test]
fn a_vae_swapped_in_views_its_own_file_and_the_checkpoint_vae_comes_back() {
    let model = SdModel::load(&tiny(), None, Device::Cpu, Kind::Float).unwrap();
    tch::manual_seed(3);
    let latent = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let before = model.decode(&latent).unwrap();
    let folder = tiny().with_file_name("diffusers").join("vae");
    let weights = folder.join("diffusion_pytorch_model.safetensors");
    model.set_vae(Some(&folder)).unwrap();
    let vae = viewing(&model, &weights);
    let vae_vars = model
        .var_store()
        .variables()
        .into_keys()
        .filter(|k| k.starts_with("first_stage_model."))
        .count();
    // The attention 1x1 convs stored as Linear weights are reshaped views too.
    assert_eq!(vae.len(), vae_vars, "{vae:?}");
    let swapped = model.decode(&latent).unwrap();
    let diff = f64::try_from((&swapped - &before).abs().max()).unwrap();
    assert!(diff < 1e-5, "{diff}");
    model.set_vae(None).unwrap();
    assert!(viewing(&model, &weights).is_empty());
    assert!(model.decode(&latent).unwrap().equal(&before));
}
