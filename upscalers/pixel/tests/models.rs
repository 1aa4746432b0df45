//! ESRGAN-family networks against Spandrel (scripts/make_esrgan_reference.py, files in
//! tests/data/upscalers/models): every architecture and key layout, whole image and tiled
//! (the script transcribes the tiling rule of `models::tiles`), CPU fp32.
use std::collections::HashMap;
use std::path::PathBuf;

use hiresfix_upscalers_pixel::models::{self, tiles};
use host_api::tch::{Kind, Tensor};

const MODELS: [(&str, &str); 5] = [
    (
        "esrgan-old-x4",
        "RRDBNet (ESRGAN layout), 4x, 1 block, 12 features",
    ),
    (
        "realesrgan-x4",
        "RRDBNet (Real-ESRGAN layout), 4x, 2 blocks, 8 features",
    ),
    (
        "realesrgan-x2",
        "RRDBNet (Real-ESRGAN layout), 2x, 1 block, 8 features",
    ),
    (
        "realesrgan-x1",
        "RRDBNet (Real-ESRGAN layout), 1x, 1 block, 8 features",
    ),
    ("compact-x4", "SRVGGNetCompact, 4x, 4 convs, 16 features"),
];

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/upscalers/models")
}

fn reference() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data().join("reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

#[test]
fn every_layout_matches_spandrel_whole_and_tiled() {
    let r = reference();
    let input = &r["input"];
    for (name, description) in MODELS {
        let net = models::load(&data().join(format!("{name}.safetensors"))).unwrap();
        assert!(
            net.describe().starts_with(description),
            "{name}: {}",
            net.describe()
        );
        let whole = host_api::tch::no_grad(|| net.forward(input)).unwrap();
        let err = relative_error(&whole, &r[&format!("{name}.raw")]);
        println!("{name} whole: {err:.2e}");
        assert!(err < 1e-4, "{name} whole: {err:e}");
        let tiling = tiles::Tiling {
            tile: 12,
            overlap: 4,
            batch: 3,
        };
        let tiled = host_api::tch::no_grad(|| tiles::run(&net, input, tiling)).unwrap();
        let err = relative_error(&tiled, &r[&format!("{name}.tiled_raw")]);
        println!("{name} tiled: {err:.2e}");
        assert!(err < 1e-4, "{name} tiled: {err:e}");
        // Odd sizes: Real-ESRGAN ×2 reflect-pads before its unshuffle and crops after.
        let odd = host_api::tch::no_grad(|| net.forward(&r["input_odd"])).unwrap();
        let err = relative_error(&odd, &r[&format!("{name}.odd_raw")]);
        assert!(err < 1e-4, "{name} odd size: {err:e}");
        if net.scale() == 1 {
            // ×1 runs on the image unshuffled by 4: its receptive field in image pixels is 4×
            // the others', more than this small image can give a dead margin for.
            continue;
        }
        // Tiled against whole at a size where tiles matter (72x60 px, 6 tiles of 40 with 24 px
        // overlap; a quarter of it is the dead margin), in 8-bit levels: the seams vanish.
        let big = input.upsample_bilinear2d([72, 60], false, None, None);
        let whole = host_api::tch::no_grad(|| net.forward(&big)).unwrap();
        let tiling = tiles::Tiling {
            tile: 40,
            overlap: 24,
            batch: 4,
        };
        let tiled = host_api::tch::no_grad(|| tiles::run(&net, &big, tiling)).unwrap();
        let levels = |t: &Tensor| (t.clamp(0.0, 1.0) * 255.0).round();
        let diff = f64::try_from((levels(&tiled) - levels(&whole)).abs().max()).unwrap();
        println!("{name} tiled vs whole: {diff} / 255");
        assert!(
            diff <= 2.0,
            "{name}: tiled differs from whole by {diff}/255"
        );
    }
}

#[test]
fn a_pickle_reads_in_place_as_its_safetensors_and_an_evil_one_is_refused() {
    let x = Tensor::rand([1, 3, 6, 5], (Kind::Float, host_api::tch::Device::Cpu));
    for (name, describe) in MODELS {
        let pth = data().join(format!("{name}.pth"));
        let from_pickle = models::load(&pth).unwrap_or_else(|e| panic!("{name}: {}", e.0));
        let from_safetensors = models::load(&data().join(format!("{name}.safetensors"))).unwrap();
        assert_eq!(from_pickle.describe(), describe);
        let probed = models::probe::arch_of(&pth).unwrap();
        assert_eq!(probed.scale(), from_pickle.scale(), "{name}");
        let (a, b) = (
            from_pickle.forward(&x).unwrap(),
            from_safetensors.forward(&x).unwrap(),
        );
        assert_eq!(a.size(), b.size());
        assert_eq!(f64::try_from((a - b).abs().max()).unwrap(), 0.0, "{name}");
    }
    // torch's legacy (pre-1.6) format, as a `.pt`.
    let legacy = data().join("../pth/compact-x4-legacy.pt");
    let (a, b) = (
        models::load(&legacy).unwrap().forward(&x).unwrap(),
        models::load(&data().join("compact-x4.safetensors"))
            .unwrap()
            .forward(&x)
            .unwrap(),
    );
    assert_eq!(f64::try_from((a - b).abs().max()).unwrap(), 0.0);
    assert_eq!(models::probe::arch_of(&legacy).unwrap().scale(), 4);
    // params_ema-wrapped, as Real-ESRGAN's releases are.
    let ema = models::load(&data().join("realesrgan-x4-params-ema.pth")).unwrap();
    assert_eq!(ema.scale(), 4);
    for (file, global) in [
        ("evil-os-system.pth", "os.system"),
        ("evil-builtins-eval.pth", "builtins.eval"),
    ] {
        let err = models::load(&data().join(file)).err().unwrap().0;
        assert!(
            err.starts_with(&format!("`{file}`: refused: the pickle calls {global} — ")),
            "{err}"
        );
        assert!(!err.contains('\n'), "{err}");
        let probed = models::probe::arch_of(&data().join(file)).unwrap_err();
        assert!(probed.contains(global), "{probed}");
    }
}

#[test]
fn a_file_of_another_architecture_is_refused_by_its_keys() {
    let dir = tempfile_dir("not-esrgan");
    let path = dir.join("sd.safetensors");
    let t = Tensor::zeros([4, 4], (Kind::Float, host_api::tch::Device::Cpu));
    Tensor::write_safetensors(&[("first_stage_model.encoder.conv_in.weight", &t)], &path).unwrap();
    let err = models::load(&path).err().unwrap();
    assert!(err.0.contains("not an ESRGAN-family model"), "{}", err.0);
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
