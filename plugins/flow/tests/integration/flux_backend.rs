//! Flux backend parity: the tiny Flux.1 dev- and schnell-shaped pipelines of
//! scripts/make_flux_pipeline_reference.py (CLIP-L, T5, the transformer, the 16-channel `ae`)
//! loaded from the diffusers folder, the BFL transformer file with the split clip_l / t5xxl /
//! ae files and (dev) the all-in-one file, against diffusers' FluxPipeline (fp32 CPU): the text
//! conditioning of `encode_prompt` (T5 sequence, pooled CLIP-L) and VAE decode. The full 2-pass
//! run goes through the host (tests/integration/flux_run.rs).
use std::path::{Path, PathBuf};

use hiresfix_flow::common::LoadOptions;
use hiresfix_flow::flux::Variant;
use hiresfix_flow::flux_backend::{FluxFiles, FluxLayout, FluxModel};
use hiresfix_flow::t5::T5Placement;
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/flux-tiny/pipeline")
}

fn reference(variant: &str) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(data().join(variant).join("reference.safetensors")).unwrap()
}

fn get(r: &[(String, Tensor)], name: &str) -> Tensor {
    r.iter().find(|(k, _)| k == name).unwrap().1.shallow_clone()
}

/// max |a − b| / max |b|
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

/// Each layout of `variant`: a label, the checkpoint and what a profile adds.
pub fn layouts(variant: &str) -> Vec<(&'static str, PathBuf, LoadOptions)> {
    let (d, v) = (data(), data().join(variant));
    let split = LoadOptions {
        vae: Some(d.join("ae.safetensors")),
        // The list's order does not matter.
        text_encoders: vec![d.join("t5xxl.safetensors"), d.join("clip_l.safetensors")],
        t5_tokenizer: Some(v.join("diffusers/tokenizer_2")),
        ..LoadOptions::default()
    };
    let mut all = vec![
        ("folder", v.join("diffusers"), LoadOptions::default()),
        (
            "BFL + split",
            v.join(format!("flux1-{variant}-tiny.safetensors")),
            split,
        ),
    ];
    if variant == "dev" {
        let aio = LoadOptions {
            t5_tokenizer: Some(v.join("diffusers/tokenizer_2")),
            ..Default::default()
        };
        all.push(("all-in-one", v.join("flux1-dev-tiny-aio.safetensors"), aio));
    }
    all
}

/// The conditioning of `prompt` and the decode of the reference latent match diffusers'.
fn assert_text_and_decode_match(model: &FluxModel, r: &[(String, Tensor)], label: &str) {
    let e = model.encode_prompt("a photo of a cat").unwrap();
    let context = relative_error(&e.context, &get(r, "text.prompt"));
    let pooled = relative_error(&e.pooled, &get(r, "text.pooled"));
    let decoded = model.decode(&get(r, "vae.latent")).unwrap();
    let vae = relative_error(&decoded, &get(r, "vae.decoded"));
    eprintln!("flux {label:<20} T5 {context:.2e}, pooled {pooled:.2e}, VAE decode {vae:.2e}");
    assert!(
        context <= TOLERANCE && pooled <= TOLERANCE && vae <= TOLERANCE,
        "{label}: {context} {pooled} {vae}"
    );
}

#[test]
fn flux_text_embeddings_and_vae_decode_match_diffusers_in_every_layout() {
    for (variant, expected) in [("dev", Variant::Dev), ("schnell", Variant::Schnell)] {
        let r = reference(variant);
        for (label, path, options) in layouts(variant) {
            let files = FluxFiles::open(&path, &options).unwrap();
            assert_eq!(files.variant, expected, "{variant} {label}");
            let layout = files.layout;
            let model = FluxModel::load(files, Device::Cpu, Kind::Float).unwrap();
            assert_eq!(layout == FluxLayout::Folder, label == "folder");
            assert_eq!(model.t5_device(), Some(Device::Cpu));
            assert_text_and_decode_match(&model, &r, &format!("{variant} {label}"));
        }
    }
}

/// `[model] t5 = "cpu"` (`LoadOptions::t5_placement`, from the load request's `t5` option as
/// SD3's): T5 is built on the CPU and its output joins CLIP-L's on the run's device (here both
/// are the CPU: the conditioning must still equal diffusers').
#[test]
fn flux_t5_on_the_cpu_keeps_the_conditioning() {
    let r = reference("dev");
    for (label, path, options) in layouts("dev").into_iter().take(2) {
        let options = LoadOptions {
            t5_placement: T5Placement::Cpu,
            ..options
        };
        let files = FluxFiles::open(&path, &options).unwrap();
        assert_eq!(files.t5_placement, T5Placement::Cpu);
        let model = FluxModel::load(files, Device::Cpu, Kind::Float).unwrap();
        assert_eq!(model.t5_device(), Some(Device::Cpu));
        assert_text_and_decode_match(&model, &r, &format!("dev {label} t5=cpu"));
    }
}

/// `check`'s memory table on a CUDA device: with `t5 = "cpu"` the weights column loses T5's
/// parameters — the all-in-one file's own T5, a transformer file's T5 at the published size
/// (4.76 G) — at 4 bytes in fp32, 2 in bf16; on the CPU nothing moves. (Headers only: no GPU.)
#[test]
fn flux_memory_estimate_leaves_t5_off_the_device_with_t5_on_the_cpu() {
    use crate::sd3::memory_request;
    use hiresfix_flow::flux_backend::estimate::{estimate, PUBLISHED};
    use hiresfix_flow::flux_backend::inspect::FluxHeaders;
    let dev = data().join("dev");
    let aio = dev.join("flux1-dev-tiny-aio.safetensors");
    let own = FluxHeaders::read(&aio).unwrap().other_parameters()[1];
    assert!(own > 0);
    for (path, t5) in [
        (aio, own),
        (dev.join("flux1-dev-tiny.safetensors"), PUBLISHED[1]),
    ] {
        let weights = |device: &str, dtype: &str, t5: Option<&str>| {
            estimate(&memory_request(&path, device, dtype, t5))
                .unwrap()
                .weights
        };
        for (dtype, bytes) in [("fp32", 4), ("bf16", 2)] {
            let whole = weights("cuda", dtype, None);
            assert_eq!(weights("cuda", dtype, Some("device")), whole);
            assert_eq!(whole - weights("cuda", dtype, Some("cpu")), t5 * bytes);
            assert_eq!(
                weights("cpu", dtype, Some("cpu")),
                weights("cpu", dtype, None)
            );
        }
    }
}

/// A prompt asked for again (each hires pass asks) is the kept encoding, not a second T5 run;
/// after `release(TEXT_ENCODERS)` the model still denoises and decodes; encoding is refused in
/// one line.
#[test]
fn flux_released_text_encoders_refuse_encoding_in_one_line() {
    let (_, path, options) = layouts("schnell").remove(0);
    let model = FluxModel::load(
        FluxFiles::open(&path, &options).unwrap(),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let e = model.encode_prompt("a cat").unwrap();
    let again = model.encode_prompt("a cat").unwrap();
    assert_eq!(again.context.data_ptr(), e.context.data_ptr(), "kept");
    let other = model.encode_prompt("a dog").unwrap();
    assert!(!other.context.equal(&e.context));
    model.release_text_encoders();
    assert_eq!(model.describe_text_encoders(), "released");
    let err = format!("{:#}", model.encode_prompt("a cat").err().unwrap());
    assert!(err.contains("released") && !err.contains('\n'), "{err}");
    let x = Tensor::zeros([1, 16, 4, 4], (Kind::Float, Device::Cpu));
    let g = Tensor::from_slice(&[0f32]);
    let cond = [e.context, e.pooled, g];
    assert_eq!(
        model.denoise(&x, 0.5, &[&cond]).unwrap()[0].size(),
        [1, 16, 4, 4]
    );
}

#[test]
fn flux_files_missing_a_part_are_refused_in_one_line() {
    let v = data().join("dev");
    let bare = v.join("flux1-dev-tiny.safetensors");
    let tokenizer = Some(v.join("diffusers/tokenizer_2"));
    let cases = [
        (
            LoadOptions {
                t5_tokenizer: tokenizer.clone(),
                ..Default::default()
            },
            "`[model] text_encoders`",
        ),
        (
            LoadOptions {
                text_encoders: vec![data().join("clip_l.safetensors")],
                vae: Some(data().join("ae.safetensors")),
                t5_tokenizer: tokenizer.clone(),
                ..LoadOptions::default()
            },
            "no T5 text encoder",
        ),
        (
            LoadOptions {
                text_encoders: vec![
                    data().join("clip_l.safetensors"),
                    data().join("t5xxl.safetensors"),
                ],
                vae: None,
                t5_tokenizer: tokenizer,
                ..LoadOptions::default()
            },
            "`[model] vae`",
        ),
    ];
    for (options, expected) in cases {
        let e = format!("{:#}", FluxFiles::open(&bare, &options).err().unwrap());
        assert!(e.contains(expected) && !e.contains('\n'), "{e}");
    }
}

/// `weight_dtype = "fp8_e4m3fn"`: the transformer's linear weights are held in fp8 (biases and
/// norm scales in the run's dtype), the rest of the model as before.
#[test]
fn flux_fp8_weight_storage_holds_linear_weights_in_fp8() {
    let (_, path, mut options) = layouts("dev").remove(0);
    options.fp8_weights = true;
    let model = FluxModel::load(
        FluxFiles::open(&path, &options).unwrap(),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    let vars = model.transformer.vs.variables();
    let kind = |name: &str| vars[name].kind();
    assert_eq!(
        kind("double_blocks.0.img_attn.qkv.weight"),
        Kind::Float8e4m3fn
    );
    assert_eq!(kind("single_blocks.1.linear1.weight"), Kind::Float8e4m3fn);
    assert_eq!(kind("img_in.weight"), Kind::Float8e4m3fn);
    assert_eq!(kind("double_blocks.0.img_attn.qkv.bias"), Kind::Float);
    assert_eq!(
        kind("double_blocks.0.img_attn.norm.query_norm.scale"),
        Kind::Float
    );
    let x = Tensor::zeros([1, 16, 4, 4], (Kind::Float, Device::Cpu));
    let e = model.encode_prompt("a cat").unwrap();
    let cond = [e.context, e.pooled, Tensor::from_slice(&[3.5f32])];
    let d = model.denoise(&x, 0.5, &[&cond]).unwrap();
    assert_eq!(d[0].kind(), Kind::Float);
}
