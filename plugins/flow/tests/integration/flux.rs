//! Flux parity: the tiny Flux.1-dev- and schnell-shaped transformers of
//! scripts/make_flux_reference.py, loaded from their diffusers folders, BFL single files and
//! (dev) an all-in-one `model.diffusion_model.*` file, against diffusers'
//! `FluxTransformer2DModel` outputs at two latent sizes (fp32 CPU); packing and ids against
//! FluxPipeline's; dev / schnell told apart by the weights; a missing tensor named in one line.
use std::path::{Path, PathBuf};

use hiresfix_flow::flux::{
    image_ids, load, load_with, open_weights, pack, text_ids, unpack, Layout, LoadedFlux, Variant,
};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;
/// The tiny models' RoPE axes (a BFL file does not name them; the folder's config.json does).
const TINY_AXES: [i64; 3] = [4, 6, 6];

fn dir(variant: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/flux-tiny")
        .join(variant)
}

fn bfl_file(variant: &str) -> PathBuf {
    dir(variant).join(format!("flux1-{variant}-tiny.safetensors"))
}

/// max |a − b| / max |b|
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

/// Both reference cases (16×16 and 16×24 latents: 64 and 96 tokens, different ids), batch 2.
fn assert_matches_diffusers(loaded: &LoadedFlux, variant: &str, label: &str) {
    let refs = open_weights(&dir(variant).join("reference.safetensors")).unwrap();
    for case in ["square", "wide"] {
        let get = |k: &str| refs.read(&format!("{case}.{k}")).unwrap();
        let guidance = (variant == "dev").then(|| get("guidance"));
        let out = tch::no_grad(|| {
            loaded.model.forward(
                &get("packed"),
                &get("timestep"),
                guidance.as_ref(),
                &get("context"),
                &get("pooled"),
                &get("img_ids"),
                &get("txt_ids"),
            )
        })
        .unwrap();
        let err = relative_error(&out, &get("output"));
        eprintln!("flux {variant:<7} {label:<10} {case:<6} relative error {err:.3e}");
        assert!(
            err <= TOLERANCE,
            "{variant} {label} {case}: relative error {err:e}"
        );
    }
}

#[test]
fn flux_dev_diffusers_folder_matches_diffusers() {
    let loaded = load(&dir("dev")).unwrap();
    assert_eq!(loaded.layout, Layout::Diffusers);
    assert_eq!(loaded.config().variant(), Variant::Dev);
    assert_eq!(loaded.config().axes_dims_rope, TINY_AXES);
    assert_matches_diffusers(&loaded, "dev", "diffusers");
}

#[test]
fn flux_dev_bfl_single_file_matches_diffusers() {
    let loaded = load_with(&bfl_file("dev"), Some(TINY_AXES)).unwrap();
    assert_eq!(
        loaded.layout,
        Layout::Bfl {
            prefix: String::new()
        }
    );
    assert_eq!(loaded.config().variant(), Variant::Dev);
    assert_matches_diffusers(&loaded, "dev", "bfl");
}

#[test]
fn flux_dev_all_in_one_file_matches_diffusers() {
    let file = dir("dev").join("flux1-dev-tiny-aio.safetensors");
    let loaded = load_with(&file, Some(TINY_AXES)).unwrap();
    assert_eq!(
        loaded.layout,
        Layout::Bfl {
            prefix: "model.diffusion_model.".into()
        }
    );
    assert_matches_diffusers(&loaded, "dev", "all-in-one");
}

/// A diffusers folder whose weights are split in two shards with an index (as the real
/// FLUX.1 repositories publish `transformer/`).
#[test]
fn flux_sharded_diffusers_folder_matches_diffusers() {
    let tmp = tempfile::tempdir().unwrap();
    let src = dir("dev").join("transformer");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let w = open_weights(&src.join("diffusion_pytorch_model.safetensors")).unwrap();
    let names: Vec<String> = w.keys().map(str::to_string).collect();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let shard = format!("diffusion_pytorch_model-0000{}-of-00002.safetensors", i + 1);
        let tensors: Vec<(String, Tensor)> = part
            .iter()
            .map(|n| (n.clone(), w.read(n).unwrap()))
            .collect();
        Tensor::write_safetensors(&tensors, tmp.path().join(&shard)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), shard.clone().into());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(
        tmp.path()
            .join("diffusion_pytorch_model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let loaded = load(tmp.path()).unwrap();
    assert_eq!(loaded.layout, Layout::Diffusers);
    assert_matches_diffusers(&loaded, "dev", "sharded");
}

#[test]
fn flux_schnell_diffusers_folder_and_bfl_file_match_diffusers() {
    let folder = load(&dir("schnell")).unwrap();
    assert_eq!(folder.config().variant(), Variant::Schnell);
    assert_eq!(folder.config().variant().family(), "flux-schnell");
    assert_matches_diffusers(&folder, "schnell", "diffusers");
    let file = load_with(&bfl_file("schnell"), Some(TINY_AXES)).unwrap();
    assert_eq!(file.config().variant(), Variant::Schnell);
    assert_eq!(file.config(), folder.config());
    assert_matches_diffusers(&file, "schnell", "bfl");
}

/// FluxPipeline's `_pack_latents`, `_prepare_latent_image_ids` (rows, columns of the packed
/// grid), zero text ids and `_unpack_latents`, exactly.
#[test]
fn flux_packing_and_ids_match_flux_pipeline() {
    let refs = open_weights(&dir("dev").join("reference.safetensors")).unwrap();
    for (case, h, w) in [("square", 16, 16), ("wide", 16, 24)] {
        let get = |k: &str| refs.read(&format!("{case}.{k}")).unwrap();
        assert!(
            pack(&get("latent")).unwrap().equal(&get("packed")),
            "{case}: pack"
        );
        assert!(
            image_ids(h, w, Device::Cpu).equal(&get("img_ids")),
            "{case}: img ids"
        );
        let tokens = get("txt_ids").size()[0];
        assert!(
            text_ids(tokens, Device::Cpu).equal(&get("txt_ids")),
            "{case}: txt ids"
        );
        let unpacked = unpack(&get("output"), h, w).unwrap();
        assert!(unpacked.equal(&get("output_unpacked")), "{case}: unpack");
    }
    let odd = Tensor::zeros([1, 16, 15, 16], (Kind::Float, Device::Cpu));
    let err = pack(&odd).unwrap_err().to_string();
    assert!(err.contains("15×16") && !err.contains('\n'), "{err}");
}

#[test]
fn flux_dev_without_guidance_is_refused_in_one_line() {
    let loaded = load(&dir("dev")).unwrap();
    let refs = open_weights(&dir("dev").join("reference.safetensors")).unwrap();
    let get = |k: &str| refs.read(&format!("square.{k}")).unwrap();
    let err = tch::no_grad(|| {
        loaded.model.forward(
            &get("packed"),
            &get("timestep"),
            None,
            &get("context"),
            &get("pooled"),
            &get("img_ids"),
            &get("txt_ids"),
        )
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("guidance") && !err.contains('\n'), "{err}");
}

/// A BFL file without one tensor, and a diffusers-layout one without one of the q/k/v parts of
/// a fused projection: each named in one line.
#[test]
fn flux_missing_tensor_is_named_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    for (src, drop) in [
        (bfl_file("dev"), "double_blocks.1.img_attn.qkv.weight"),
        (
            dir("dev").join("transformer/diffusion_pytorch_model.safetensors"),
            "single_transformer_blocks.1.attn.to_k.bias",
        ),
    ] {
        let w = open_weights(&src).unwrap();
        let kept: Vec<(String, Tensor)> = w
            .keys()
            .filter(|n| *n != drop)
            .map(|n| (n.to_string(), w.read(n).unwrap()))
            .collect();
        let path = tmp.path().join("broken.safetensors");
        Tensor::write_safetensors(&kept, &path).unwrap();
        let err = load_with(&path, Some(TINY_AXES)).unwrap_err().to_string();
        assert!(err.contains(&format!("missing tensor `{drop}`")), "{err}");
        assert!(
            err.contains("broken.safetensors") && !err.contains('\n'),
            "{err}"
        );
    }
}

/// A BFL file gives no RoPE axes: at a head dim other than Flux.1's 128 the loader asks for a
/// config instead of guessing.
#[test]
fn flux_bfl_file_with_unknown_rope_axes_is_refused_in_one_line() {
    let err = load(&bfl_file("schnell")).unwrap_err().to_string();
    assert!(
        err.contains("head dim 16") && err.contains("axes_dims_rope"),
        "{err}"
    );
    assert!(!err.contains('\n'), "{err}");
}
