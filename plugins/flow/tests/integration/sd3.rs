//! SD3 backend parity: the tiny SD 3.5-shaped pipeline of scripts/make_sd3_reference.py
//! (CLIP-L, CLIP-G, T5, MMDiT with dual attention, 16-channel VAE) loaded from its diffusers
//! folder, its single file and ComfyUI-style split files, against diffusers (fp32 CPU): the
//! text conditioning of `encode_prompt` (prompt and negative, pooled), one transformer call
//! through the backend's denoiser, VAE decode and encode; and `info` per layout.
use std::path::{Path, PathBuf};

use hiresfix_flow::common::{LoadOptions, TEXT_ENCODER_OPTION};
use hiresfix_flow::sd3::plugin::Sd3Backend;
use hiresfix_flow::sd3::{Sd3Files, Sd3Model};
use hiresfix_model_parts::weights::safetensors::SafetensorsFile;
use host_api::{Backend, LoadRequest, MemoryRequest, OptionEntry, OptionValue};
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
                ..Default::default()
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

/// `request` with the option `key = value` added.
fn with_option(mut request: LoadRequest, key: &str, value: &str) -> LoadRequest {
    let mut options = request.options.to_vec();
    options.push(OptionEntry {
        key: key.into(),
        value: OptionValue::Text(value.into()),
    });
    request.options = options.into();
    request
}

/// `[model] t5 = "cpu"`: T5 is built on the CPU and its output joins CLIP's on the run's device
/// (here both are the CPU: the conditioning must still equal diffusers'); an unknown value is
/// refused in one line naming the key and both values.
#[test]
fn sd3_t5_on_the_cpu_keeps_the_conditioning_and_unknown_values_are_refused() {
    for layout in [Layout::SingleFile, Layout::Split] {
        let label = format!("{layout:?} t5=cpu");
        let backend = Sd3Backend::load(&with_option(request(layout), "t5", "cpu")).unwrap();
        assert_eq!(backend.0.t5_device(), Some(Device::Cpu));
        assert_text_matches(&backend.0, &label);
    }
    let refused = Sd3Backend::load(&with_option(request(Layout::Folder), "t5", "gpu"));
    let message = match refused {
        Ok(_) => panic!("t5 = \"gpu\" was accepted"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        message,
        "`[model] t5 = \"gpu\"`: expected \"cpu\" (T5 on the CPU, its output moved to the run's \
         device) or \"device\" (the run's device, the default)"
    );
}

/// A memory request for `path` at 64 px (CFG batch), with `t5 = value` when given.
pub(crate) fn memory_request(
    path: &Path,
    device: &str,
    dtype: &str,
    t5: Option<&str>,
) -> MemoryRequest {
    let options: Vec<OptionEntry> = t5
        .map(|v| OptionEntry {
            key: "t5".into(),
            value: OptionValue::Text(v.into()),
        })
        .into_iter()
        .collect();
    MemoryRequest {
        checkpoint: path.to_string_lossy().as_ref().into(),
        width: 64,
        height: 64,
        unet_batch: 2,
        dtype: dtype.into(),
        device: device.into(),
        vae_tile_size: 512,
        vae_tile_overlap: 64,
        options: options.into(),
    }
}

/// `check`'s memory table on a CUDA device: with `t5 = "cpu"` the weights column loses T5's
/// parameters (the tiny single file's, at 4 bytes in fp32, 2 in fp16); on the CPU nothing
/// moves. (No GPU is needed: the estimate reads headers only.)
#[test]
fn sd3_memory_estimate_leaves_t5_off_the_device_with_t5_on_the_cpu() {
    use hiresfix_flow::sd3::estimate::estimate;
    use hiresfix_flow::sd3::inspect::Sd3Headers;
    let path = data().join("sd3-tiny.safetensors");
    let t5 = Sd3Headers::read(&path).unwrap().other_parameters()[2];
    assert!(t5 > 0);
    let weights = |device: &str, dtype: &str, t5: Option<&str>| {
        estimate(&memory_request(&path, device, dtype, t5))
            .unwrap()
            .weights
    };
    for (dtype, bytes) in [("fp32", 4), ("fp16", 2)] {
        let whole = weights("cuda", dtype, None);
        assert_eq!(weights("cuda", dtype, Some("device")), whole);
        assert_eq!(
            whole - weights("cuda", dtype, Some("cpu")),
            t5 * bytes,
            "{dtype}"
        );
        assert_eq!(
            weights("cpu", dtype, Some("cpu")),
            weights("cpu", dtype, None)
        );
    }
    let bad = match estimate(&memory_request(&path, "cpu", "fp32", Some("gpu"))) {
        Ok(_) => panic!("t5 = \"gpu\" was estimated"),
        Err(e) => e.to_string(),
    };
    assert!(bad.contains("`[model] t5 = \"gpu\"`"), "{bad}");
}

/// The host's `release`: the text encoders go whole (CLIP-L, CLIP-G, T5), the transformer still
/// runs bit for bit and a new prompt is refused; then everything but the VAE decoder goes and
/// the decode is unchanged.
#[test]
fn sd3_released_parts_are_freed_and_the_rest_runs_the_same() {
    use host_api::backend::release::{ALL_BUT_DECODER, TEXT_ENCODERS};
    let backend = Sd3Backend::load(&request(Layout::Folder)).unwrap();
    let model = &backend.0;
    let e = model.encode_prompt("a photo of a cat", 1).unwrap();
    let cond = [e.context, e.pooled];
    tch::manual_seed(5);
    let x = Tensor::randn([1, 16, 8, 8], (Kind::Float, Device::Cpu));
    let latent = Tensor::randn([1, 16, 8, 8], (Kind::Float, Device::Cpu));
    let denoised = backend.denoise(&x, 0.6, &[cond.as_slice()]).unwrap();
    let decoded = model.decode(&latent).unwrap();
    let before = model.held();
    eprintln!("held before any release: {before:?}");
    for (part, n) in [
        ("clip_l", before.clip_l),
        ("clip_g", before.clip_g),
        ("t5", before.t5),
        ("transformer", before.transformer),
        ("vae encoder", before.vae_encoder),
        ("vae decoder", before.vae_decoder),
    ] {
        assert!(n > 0, "{part} holds nothing before the release");
    }
    backend.release(TEXT_ENCODERS).unwrap();
    let after = model.held();
    assert_eq!((after.clip_l, after.clip_g, after.t5), (0, 0, 0));
    assert_eq!(
        (after.transformer, after.vae_encoder, after.vae_decoder),
        (before.transformer, before.vae_encoder, before.vae_decoder)
    );
    assert!(backend.denoise(&x, 0.6, &[cond.as_slice()]).unwrap()[0].equal(&denoised[0]));
    let message = match model.encode_prompt("a dog", 1) {
        Ok(_) => panic!("a prompt was encoded after the release"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        message.contains("freed for the run's last steps"),
        "{message}"
    );
    backend.release(ALL_BUT_DECODER).unwrap();
    let last = model.held();
    assert_eq!((last.transformer, last.vae_encoder), (0, 0));
    assert_eq!(last.vae_decoder, before.vae_decoder);
    assert!(model.decode(&latent).unwrap().equal(&decoded));
    let refusals = [
        backend
            .denoise(&x, 0.6, &[cond.as_slice()])
            .err()
            .map(|e| e.to_string()),
        model.encode(&decoded).err().map(|e| e.to_string()),
    ];
    for refusal in refusals {
        let message = refusal.expect("refused after the release");
        assert!(
            message.contains("freed for the run's last steps"),
            "{message}"
        );
    }
}

/// A prompt longer than one 75-token CLIP chunk (extras.json `long_prompt`, 87 tokens): two
/// chunks one after the other as A1111 lays them out, the pooled vector the first chunk's, then
/// T5's 256 tokens as diffusers (extras.safetensors `long.*`, built from diffusers' encoders by
/// `make_sd3_reference.py --extras`; diffusers' own pipeline would cut CLIP at 77 tokens).
#[test]
fn sd3_long_prompt_takes_two_clip_chunks_as_a1111() {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data().join("extras.json")).unwrap())
            .unwrap();
    let prompt = json["settings"]["long_prompt"].as_str().unwrap();
    let extras = SafetensorsFile::open(&data().join("extras.safetensors")).unwrap();
    for layout in [Layout::Folder, Layout::SingleFile] {
        let label = format!("{layout:?}");
        let model = Sd3Backend::load(&request(layout)).unwrap().0;
        let e = model.encode_prompt(prompt, 1).unwrap();
        assert_eq!(e.context.size(), [1, 2 * 77 + 256, 96], "{label}");
        check(
            &label,
            "long prompt",
            &e.context,
            &extras.read("long.prompt").unwrap(),
        );
        let pooled = extras.read("long.prompt_pooled").unwrap();
        check(&label, "long prompt pooled", &e.pooled, &pooled);
    }
}

/// ComfyUI's scaled-fp8 T5 (`t5xxl_fp8_e4m3fn_scaled`, made by scripts/
/// make_flux_fp8_reference.py from the same tiny T5 as SD3 tiny's) inside a single file reads
/// as the split file does: each weight times its scale, scales not taken for weights. The split
/// file's reading matches diffusers on the dequantized weights (the host's `flux_fp8` run).
#[test]
fn sd3_single_file_with_a_scaled_fp8_t5_reads_it_as_the_split_file() {
    let scaled = data().join("../flux-tiny/pipeline/dev/fp8/t5xxl_fp8_e4m3fn_scaled.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let single = dir.path().join("sd3-tiny-t5-scaled.safetensors");
    // The single file with its T5 swapped for the scaled one, raw bytes as stored.
    let base = std::fs::read(data().join("sd3-tiny.safetensors")).unwrap();
    let t5 = std::fs::read(&scaled).unwrap();
    let (base, t5) = (
        safetensors::SafeTensors::deserialize(&base).unwrap(),
        safetensors::SafeTensors::deserialize(&t5).unwrap(),
    );
    let prefix = "text_encoders.t5xxl.transformer.";
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = base
        .tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with(prefix))
        .collect();
    views.extend(
        t5.tensors()
            .into_iter()
            .map(|(k, v)| (format!("{prefix}{k}"), v)),
    );
    safetensors::serialize_to_file(views, None, &single).unwrap();

    let tokenizer = Some(data().join("diffusers/tokenizer_3"));
    let load = |path: &Path, options: LoadOptions| {
        Sd3Model::load(
            Sd3Files::open(path, &options).unwrap(),
            Device::Cpu,
            Kind::Float,
        )
        .unwrap()
    };
    let from_single = load(
        &single,
        LoadOptions {
            t5_tokenizer: tokenizer.clone(),
            ..Default::default()
        },
    );
    let (path, mut options) = files(Layout::Split);
    let t5_file = options
        .text_encoders
        .iter_mut()
        .find(|p| p.ends_with("t5xxl.safetensors"))
        .unwrap();
    *t5_file = scaled.clone();
    let from_split = load(&path, options);
    let (a, b) = (
        from_single.encode_prompt("a photo of a cat", 1).unwrap(),
        from_split.encode_prompt("a photo of a cat", 1).unwrap(),
    );
    let t5 = |c: &Tensor| c.narrow(1, 77, 256);
    assert!(t5(&a.context).equal(&t5(&b.context)));
    // And the scaled T5 is not the fp16 one (a loader ignoring the scales could not match).
    let plain = load(&files(Layout::Split).0, files(Layout::Split).1);
    let fp16 = plain.encode_prompt("a photo of a cat", 1).unwrap();
    assert!(relative_error(&t5(&a.context), &t5(&fp16.context)) > 1e-2);
}
