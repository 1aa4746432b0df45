//! `hiresfix info`: what each tiny model of every family is, read by the backend plugin; and
//! refused files get one line saying what they are, exit 1.

use std::path::{Path, PathBuf};

use crate::common::*;
use host_api::tch::{Device, Kind, Tensor};

fn data(rel: &str) -> PathBuf {
    repo().join("tests/data").join(rel)
}

/// `label: value` lines of `hiresfix info PATH`.
pub(crate) fn info(path: &Path) -> Vec<(String, String)> {
    let out = hiresfix(&repo(), &["info", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

pub(crate) fn field<'a>(lines: &'a [(String, String)], key: &str) -> &'a str {
    &lines
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no {key}"))
        .1
}

#[test]
fn info_names_family_prediction_latent_and_text_encoders_of_every_tiny_model() {
    let cases = [
        (
            "sd1-tiny/sd1-tiny.safetensors",
            "sd1 (Stable Diffusion 1.x)",
            "eps (family default)",
            "0.18215",
            "CLIP-L (2 layers, 32)",
            "F32",
        ),
        (
            "sd1-tiny/diffusers",
            "sd1 (Stable Diffusion 1.x)",
            "eps (scheduler config)",
            "0.18215",
            "CLIP-L (2 layers, 32)",
            "F32",
        ),
        (
            "sd2-tiny/sd2-tiny.safetensors",
            "sd2 (Stable Diffusion 2.x)",
            "eps (UNet probe (A1111))",
            "0.18215",
            "OpenCLIP ViT-H (2 layers, 16)",
            "F16",
        ),
        (
            "sd2-tiny/diffusers",
            "sd2 (Stable Diffusion 2.x)",
            "eps (scheduler config)",
            "0.18215",
            "OpenCLIP ViT-H (2 layers, 16)",
            "F16",
        ),
        (
            "sd2v-tiny/sd2v-tiny.safetensors",
            "sd2 (Stable Diffusion 2.x)",
            "v (v_pred key)",
            "0.18215",
            "OpenCLIP ViT-H (2 layers, 16)",
            "F16",
        ),
        (
            "sd2v-tiny/diffusers",
            "sd2 (Stable Diffusion 2.x)",
            "v (scheduler config)",
            "0.18215",
            "OpenCLIP ViT-H (2 layers, 16)",
            "F16",
        ),
        (
            "sdxl-tiny/sdxl-tiny.safetensors",
            "sdxl (Stable Diffusion XL)",
            "eps (family default)",
            "0.13025",
            "CLIP-L (2 layers, 16) + OpenCLIP ViT-bigG (3 layers, 16)",
            "F16",
        ),
        (
            "sdxl-tiny/diffusers",
            "sdxl (Stable Diffusion XL)",
            "eps (scheduler config)",
            "0.13025",
            "CLIP-L (2 layers, 16) + OpenCLIP ViT-bigG (3 layers, 16)",
            "F16",
        ),
        // The refiner: bigG alone, SDXL's latent space (scripts/make_refiner_reference.py).
        (
            "sdxl-refiner-tiny/sdxl-refiner-tiny.safetensors",
            "sdxl-refiner (Stable Diffusion XL refiner)",
            "eps (family default)",
            "0.13025",
            "OpenCLIP ViT-bigG (3 layers, 16)",
            "F16",
        ),
        (
            "sdxl-refiner-tiny/diffusers",
            "sdxl-refiner (Stable Diffusion XL refiner)",
            "eps (scheduler config)",
            "0.13025",
            "OpenCLIP ViT-bigG (3 layers, 16)",
            "F16",
        ),
    ];
    for (rel, family, prediction, scale, encoders, dtype) in cases {
        let lines = info(&data(rel));
        assert_eq!(field(&lines, "family"), family, "{rel}");
        assert_eq!(field(&lines, "prediction"), prediction, "{rel}");
        let latent = field(&lines, "latent");
        assert!(
            latent.starts_with("4 channels, 1/2 of the image side") && latent.ends_with(scale),
            "{rel}: {latent}"
        );
        assert_eq!(field(&lines, "text encoders"), encoders, "{rel}");
        assert_eq!(field(&lines, "stored dtype"), dtype, "{rel}");
        assert!(field(&lines, "unet").ends_with("parameters"), "{rel}");
    }
    let sdxl = info(&data("sdxl-tiny/sdxl-tiny.safetensors"));
    assert_eq!(field(&sdxl, "native size"), "1024 px");
    assert_eq!(field(&sdxl, "format"), "single file");
    let bytes = std::fs::metadata(data("sdxl-tiny/sdxl-tiny.safetensors"))
        .unwrap()
        .len();
    assert!(field(&sdxl, "file size").ends_with(&format!("({bytes} bytes)")));
}

/// `hiresfix info PATH` fails with exit 1 and one line; returns it.
fn refused(path: &Path) -> String {
    let out = hiresfix(&repo(), &["info", path.to_str().unwrap()], &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(out.stdout.is_empty());
    lines[0].to_owned()
}

#[test]
fn info_refuses_instruct_pix2pix_and_pickle_files_with_one_line_reasons() {
    let scratch = Scratch::new("info-refused");
    // (An inpainting UNet, 9 input channels, is supported: inpaint_model.rs.)
    let pix2pix = scratch.path("pix2pix.safetensors");
    let mut tensors = Tensor::read_safetensors(tiny_ldm()).unwrap();
    for (key, t) in tensors.iter_mut() {
        if key == "model.diffusion_model.input_blocks.0.0.weight" {
            *t = Tensor::zeros([32, 8, 3, 3], (Kind::Float, Device::Cpu));
        }
    }
    Tensor::write_safetensors(&tensors, &pix2pix).unwrap();
    let pickle = scratch.path("model.ckpt");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    for (path, reason) in [
        (
            &pix2pix,
            "not supported yet: a Stable Diffusion 1.x instruct-pix2pix checkpoint (8 input channels)",
        ),
        (
            &pickle,
            "pickle checkpoints are refused; convert to .safetensors",
        ),
    ] {
        let line = refused(path);
        assert!(
            line.starts_with("error: ") && line.contains(reason),
            "{line}"
        );
        assert!(line.contains(&path.display().to_string()), "{line}");
    }
}
