//! SD3 backend parity: the tiny SD 3.5-shaped pipeline of scripts/make_sd3_reference.py
//! (CLIP-L, CLIP-G, T5, MMDiT with dual attention, 16-channel VAE) loaded from its diffusers
//! folder, its single file and ComfyUI-style split files, against diffusers (fp32 CPU): the
//! text conditioning of `encode_prompt` (prompt and negative, pooled), one transformer call
//! through the backend's denoiser, VAE decode and encode; and `info` per layout.
use std::path::{Path, PathBuf};

use hiresfix_flow::sd3::plugin::{Sd3Backend, TEXT_ENCODER_OPTION};
use hiresfix_flow::sd3::{LoadOptions, Sd3Files, Sd3Model};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use host_api::{Backend, LoadRequest, OptionEntry, OptionValue};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-4;

fn data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/sd3-tiny")
}

fn reference() -> SafetensorsFile {
    SafetensorsFile::open(&data().join("reference.safetensors")).unwrap()
}

/// max |a − b| / max |b|
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

fn check(label: &str, what: &str, got: &Tensor, want: &Tensor) {
    let err = relative_error(got, want);
    eprintln!("sd3 {label:<11} {what:<22} relative error {err:.3e}");
    assert!(err <= TOLERANCE, "{label} {what}: relative error {err:e}");
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    Folder,
    SingleFile,
    Split,
}

const LAYOUTS: [Layout; 3] = [Layout::Folder, Layout::SingleFile, Layout::Split];

/// The checkpoint and what a profile adds for `layout`.
fn files(layout: Layout) -> (PathBuf, LoadOptions) {
    let (d, split) = (data(), data().join("split"));
    let tokenizer = Some(d.join("diffusers/tokenizer_3"));
    match layout {
        Layout::Folder => (d.join("diffusers"), LoadOptions::default()),
        Layout::SingleFile => (
            d.join("sd3-tiny.safetensors"),
            LoadOptions {
                t5_tokenizer: tokenizer,
                ..Default::default()
            },
        ),
        // The list's order does not matter: CLIP-G first.
        Layout::Split => (
            split.join("transformer.safetensors"),
            LoadOptions {
                vae: Some(split.join("vae.safetensors")),
                text_encoders: ["clip_g", "t5xxl", "clip_l"]
                    .iter()
                    .map(|n| split.join(format!("{n}.safetensors")))
                    .collect(),
                t5_tokenizer: tokenizer,
            },
        ),
    }
}

/// The host's view: a load request as the engine makes it from a profile.
fn request(layout: Layout) -> LoadRequest {
    let (path, options) = files(layout);
    let text = |key: &str, p: &Path| OptionEntry {
        key: key.into(),
        value: OptionValue::Text(p.to_string_lossy().as_ref().into()),
    };
    let mut entries: Vec<OptionEntry> = options
        .text_encoders
        .iter()
        .map(|p| text(TEXT_ENCODER_OPTION, p))
        .collect();
    entries.extend(options.t5_tokenizer.iter().map(|p| text("t5_tokenizer", p)));
    LoadRequest {
        checkpoint: path.to_string_lossy().as_ref().into(),
        vae: options
            .vae
            .map(|v| v.to_string_lossy().as_ref().into())
            .into(),
        device: "cpu".into(),
        dtype: "fp32".into(),
        vae_tiling: "off".into(),
        vae_tile_size: 0,
        vae_tile_overlap: 0,
        prediction: "".into(),
        seamless: false,
        merge: Default::default(),
        options: entries.into(),
    }
}

fn assert_text_matches(model: &Sd3Model, label: &str) {
    let refs = reference();
    for (name, text) in [("prompt", "a photo of a cat"), ("negative", "blurry")] {
        let e = model.encode_prompt(text, 1).unwrap();
        check(
            label,
            name,
            &e.context,
            &refs.read(&format!("text.{name}")).unwrap(),
        );
        check(
            label,
            &format!("{name}_pooled"),
            &e.pooled,
            &refs.read(&format!("text.{name}_pooled")).unwrap(),
        );
    }
}

/// One transformer call through the denoiser: D(x, σ) = x − σ·v at σ = t / 1000.
fn assert_denoise_matches(backend: &Sd3Backend, label: &str) {
    let refs = reference();
    let get = |k: &str| refs.read(k).unwrap();
    let (x, t, v) = (
        get("transformer.x"),
        get("transformer.t"),
        get("transformer.out"),
    );
    let conds = [
        vec![get("text.negative"), get("text.negative_pooled")],
        vec![get("text.prompt"), get("text.prompt_pooled")],
    ];
    // Reference row i is [negative, prompt][i] at t[i].
    for (i, cond) in conds.iter().enumerate() {
        let i = i as i64;
        let sigma = f64::try_from(t.get(i)).unwrap() / 1000.0;
        let xi = x.narrow(0, i, 1);
        let out = backend.denoise(&xi, sigma, &[cond.as_slice()]).unwrap();
        let want = &xi - v.narrow(0, i, 1) * sigma;
        check(label, &format!("denoise row {i}"), &out[0], &want);
    }
}

fn assert_vae_matches(model: &Sd3Model, label: &str) {
    let refs = reference();
    let get = |k: &str| refs.read(k).unwrap();
    check(
        label,
        "vae decode",
        &model.decode(&get("vae.latent")).unwrap(),
        &get("vae.decoded"),
    );
    check(
        label,
        "vae encode",
        &model.encode(&get("vae.image")).unwrap(),
        &get("vae.encoded_mean"),
    );
}

#[test]
fn sd3_parts_match_diffusers_in_every_layout() {
    for layout in LAYOUTS {
        let label = format!("{layout:?}");
        let backend = Sd3Backend::load(&request(layout)).unwrap();
        assert_text_matches(&backend.0, &label);
        assert_denoise_matches(&backend, &label);
        assert_vae_matches(&backend.0, &label);
    }
}

#[test]
fn sd3_info_shows_family_shift_and_text_encoders() {
    for layout in LAYOUTS {
        let info = Sd3Backend::load(&request(layout)).unwrap().info();
        let text = info.text_encoders.to_string();
        let sampling = info
            .extra
            .iter()
            .find(|e| e.key.as_str() == host_api::keys::MODEL_SAMPLING)
            .map(|e| format!("{:?}", e.value))
            .unwrap_or_default();
        eprintln!("{layout:?}: {} | {sampling} | {text}", info.family);
        assert_eq!(info.family.as_str(), "sd3");
        assert_eq!(info.prediction.as_str(), "flow");
        assert_eq!((info.latent_channels, info.vae_scale_factor), (16, 2));
        assert!(sampling.contains("flow (shift 3)"), "{sampling}");
        assert_eq!(
            text,
            "CLIP-L (2 layers, 32) + OpenCLIP bigG (2 layers, 48) + T5 (2 layers, 96)"
        );
    }
}

/// A single file with T5 weights but no tokenizer runs without T5: its tokens are zeros (as
/// diffusers' with `text_encoder_3=None`), the CLIP part unchanged, and `info` says so.
#[test]
fn sd3_without_t5_tokenizer_runs_with_zero_t5_tokens() {
    let path = data().join("sd3-tiny.safetensors");
    let model = Sd3Model::load(
        Sd3Files::open(&path, &LoadOptions::default()).unwrap(),
        Device::Cpu,
        Kind::Float,
    )
    .unwrap();
    assert!(model.describe_text_encoders().ends_with("+ T5 absent"));
    let note = model.t5_absent.clone().unwrap();
    assert!(note.contains("t5_tokenizer"), "{note}");
    let e = model.encode_prompt("a photo of a cat", 1).unwrap();
    let want = reference().read("text.prompt").unwrap();
    check(
        "NoT5",
        "clip tokens",
        &e.context.narrow(1, 0, 77),
        &want.narrow(1, 0, 77),
    );
    let t5 = e.context.narrow(1, 77, 256);
    assert_eq!(f64::try_from(t5.abs().max()).unwrap(), 0.0);
}

#[test]
fn sd3_detect_tells_layouts_and_refuses_others() {
    use hiresfix_flow::sd3::{detect, Sd3Layout};
    assert_eq!(
        detect(&data().join("diffusers")).unwrap(),
        Some(Sd3Layout::Folder)
    );
    for f in ["sd3-tiny.safetensors", "split/transformer.safetensors"] {
        assert_eq!(
            detect(&data().join(f)).unwrap(),
            Some(Sd3Layout::SingleFile)
        );
    }
    // Another family's file is not ours; a text-encoder file alone is no SD3 checkpoint.
    let sd1 = data().join("../sd1-tiny");
    if let Some(file) = std::fs::read_dir(&sd1)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "safetensors"))
    {
        assert_eq!(detect(&file).unwrap(), None, "{}", file.display());
    }
    assert_eq!(
        detect(&data().join("split/clip_l.safetensors")).unwrap(),
        None
    );
}
