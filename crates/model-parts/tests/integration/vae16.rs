//! The 16-channel VAE of SD 3.x and Flux (no quant convs, latents `(z − shift) × scale`)
//! against diffusers' `AutoencoderKL` on a tiny random one: its diffusers folder (scale and
//! shift from `config.json`) and its LDM single-file layouts (`first_stage_model.*`, `vae.*`;
//! scale and shift the caller's defaults). References: scripts/make_vae16_reference.py.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hiresfix_model_parts::vae::files::replace_vae;
use hiresfix_model_parts::vae::{AutoencoderKL, LatentScale, VaeConfig};
use hiresfix_model_parts::weights::Weights;
use tch::nn::VarStore;
use tch::{Device, Tensor};

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/vae16-tiny")
}

fn reference() -> BTreeMap<String, Tensor> {
    Tensor::read_safetensors(data().join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// The VAE at `path` (a file in any layout, or a diffusers folder), its config inferred.
fn load(path: &Path, default: LatentScale) -> (VarStore, AutoencoderKL) {
    let mut weights = Weights::new(path);
    let json = replace_vae(&mut weights, path).unwrap();
    let cfg = VaeConfig::infer(&weights, json.as_ref(), default).unwrap();
    let vs = VarStore::new(Device::Cpu);
    let vae = AutoencoderKL::new(vs.root() / "first_stage_model", &cfg).unwrap();
    weights.copy_into(&vs, "").unwrap();
    (vs, vae)
}

/// max |ours − reference| / max |reference|.
fn relative(ours: &Tensor, reference: &Tensor) -> f64 {
    assert_eq!(ours.size(), reference.size());
    let diff = (ours - reference).abs().max().double_value(&[]);
    diff / reference.abs().max().double_value(&[])
}

/// Decode of the reference latent and encode of the reference image against the references
/// `decoded_{name}` / `encoded_{name}`.
fn assert_matches(vae: &AutoencoderKL, name: &str) {
    let r = reference();
    let decoded = vae.decode(&r["latent"]).unwrap();
    let encoded = vae.encode(&r["image"]).unwrap();
    let (d, e) = (
        relative(&decoded, &r[&format!("decoded_{name}")]),
        relative(&encoded, &r[&format!("encoded_{name}")]),
    );
    println!("{name}: decode relative error {d:.2e}, encode {e:.2e}");
    assert!(d < 1e-4, "decode: {d}");
    assert!(e < 1e-4, "encode: {e}");
}

#[test]
fn vae16_diffusers_folder_matches_diffusers() {
    // The folder's config.json (SD 3.x) wins over the default passed.
    let (_vs, vae) = load(&data().join("diffusers"), LatentScale::FLUX);
    let cfg = vae.config();
    assert_eq!(
        (cfg.z_channels, cfg.embed_dim, cfg.quant_conv),
        (16, 16, false)
    );
    assert_eq!(cfg.latent_scale(), LatentScale::SD3);
    assert_eq!(
        (cfg.ch, cfg.ch_mult.clone(), cfg.spatial_factor()),
        (32, vec![1, 1], 2)
    );
    assert_matches(&vae, "sd3");
}

#[test]
fn vae16_ldm_single_file_matches_diffusers_with_the_flux_scale() {
    let (_vs, vae) = load(&data().join("ldm.safetensors"), LatentScale::FLUX);
    assert_eq!(vae.config().latent_scale(), LatentScale::FLUX);
    assert_matches(&vae, "flux");
}

#[test]
fn vae16_under_the_vae_prefix_matches_diffusers() {
    // Flux all-in-one files store the VAE as `vae.*` (diffusers' LDM_VAE_KEYS).
    let tensors = Tensor::read_safetensors(data().join("ldm.safetensors")).unwrap();
    let renamed: Vec<(String, Tensor)> = tensors
        .into_iter()
        .map(|(k, t)| (k.replacen("first_stage_model.", "vae.", 1), t))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flux-vae-prefix.safetensors");
    Tensor::write_safetensors(&renamed, &file).unwrap();
    let (_vs, vae) = load(&file, LatentScale::SD3);
    assert_matches(&vae, "sd3");
}

#[test]
fn sd_vae_keeps_its_quant_convs_and_no_shift() {
    let cfg = VaeConfig::default();
    assert_eq!((cfg.quant_conv, cfg.shift_factor), (true, 0.0));
    let vs = VarStore::new(Device::Cpu);
    let sixteen = VaeConfig {
        z_channels: 16,
        embed_dim: 4,
        quant_conv: false,
        ..VaeConfig::default()
    };
    let err = AutoencoderKL::new(vs.root(), &sixteen).err().unwrap();
    assert!(err.to_string().contains("without quant convs"), "{err}");
}
