//! What a live preview costs against the sampling step it follows: real-size SD 1.5 at
//! 1024 × 1024 px (a 1×4×128×128 latent) on the CPU, fp32.
//!
//! - step: one CFG UNet call (batch of 2, as the backend makes it: `forward_cfg` with the two
//!   rows sharing the latent) of the SD 1.5 UNet built from the family registry
//!   (`hiresfix_sd::families::sd1`, 859,520,964 parameters), random weights;
//! - latent2rgb: `PassPreview::image` without a decoder (ComfyUI's factors, 128 × 128 px);
//! - TAESD: `PassPreview::image` with a real-size TAESD decoder (64 channels, random
//!   He-normal weights written to `target/bench-data/taesd_decoder.safetensors`), the latent
//!   averaged to 64 × 64 cells first (512 px, `MAX_TAESD_SIDE`), and for comparison the same
//!   decoder on the whole 128 × 128 latent (1024 px, what ComfyUI decodes before shrinking).
//!
//! Each preview time is the best of ROUNDS (default 5) after one warm-up (which loads the
//! decoder); the step is timed once (about a minute here). Prints the times and each
//! preview's share of the step; asserts nothing (BENCHMARKS.md records the figures).
//!
//! `cargo bench -p hiresfix-engine --bench live_preview [-- ROUNDS]`
use std::path::{Path, PathBuf};
use std::time::Instant;

use hiresfix_engine::live_preview::{taesd::Taesd, PassPreview};
use hiresfix_sd::families::sd1;
use hiresfix_sd::random::randomize;
use hiresfix_sd::unet::UNetModel;
use host_api::tch::nn::VarStore;
use host_api::tch::{self, Device, Kind, Tensor};

/// A 64-channel TAESD decoder with random weights, in madebyollin's layout.
fn write_taesd(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).expect("target/bench-data");
    let path = dir.join("taesd_decoder.safetensors");
    tch::manual_seed(28);
    let he = |o: i64, i: i64, k: i64| {
        Tensor::randn([o, i, k, k], (Kind::Float, Device::Cpu)) * (2.0 / (i * k * k) as f64).sqrt()
    };
    let bias = |n: i64| Tensor::randn([n], (Kind::Float, Device::Cpu)) * 0.1;
    let mut tensors: Vec<(String, Tensor)> = vec![
        ("1.weight".into(), he(64, 4, 3)),
        ("1.bias".into(), bias(64)),
        ("19.weight".into(), he(3, 64, 3)),
        ("19.bias".into(), bias(3)),
    ];
    for i in [7, 12, 17] {
        tensors.push((format!("{i}.weight"), he(64, 64, 3)));
    }
    for i in [3, 4, 5, 8, 9, 10, 13, 14, 15, 18] {
        for k in [0, 2, 4] {
            tensors.push((format!("{i}.conv.{k}.weight"), he(64, 64, 3)));
            tensors.push((format!("{i}.conv.{k}.bias"), bias(64)));
        }
    }
    let named: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
    Tensor::write_safetensors(&named, &path).expect("writing the TAESD decoder");
    path
}

/// The best of `rounds` timings of `f`, after one warm-up call.
fn best(rounds: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let _guard = tch::no_grad_guard();
    let opts = (Kind::Float, Device::Cpu);
    tch::manual_seed(0);
    let latent = Tensor::randn([1, 4, 128, 128], opts);

    let cheap = PassPreview::new("sd1", &[]);
    let latent2rgb = best(rounds, || {
        cheap.image(&latent).expect("a preview");
    });
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-data");
    let file = write_taesd(&dir);
    let dirs = [dir];
    let taesd = PassPreview::new("sd1", &dirs);
    let size = {
        let image = taesd.image(&latent).expect("a preview");
        (image.width, image.height)
    };
    let taesd_capped = best(rounds, || {
        taesd.image(&latent).expect("a preview");
    });
    let decoder = Taesd::load(&file, Device::Cpu).expect("the decoder");
    let taesd_full = best(rounds.min(2), || {
        let _ = decoder.decode(&latent);
    });
    println!("latent2rgb preview (128 x 128 px):  {:.4} s", latent2rgb);
    println!(
        "TAESD preview ({} x {} px):       {:.3} s",
        size.0, size.1, taesd_capped
    );
    println!("TAESD on the whole latent (1024 px): {taesd_full:.3} s");

    let start = Instant::now();
    let mut vs = VarStore::new(Device::Cpu);
    let unet = UNetModel::new(vs.root() / "model" / "diffusion_model", &sd1::unet()).expect("UNet");
    vs.freeze();
    randomize(&vs, 0);
    println!(
        "UNet built and filled in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let x = latent.repeat([2, 1, 1, 1]);
    let t = Tensor::from_slice(&[500.0f32, 500.0]);
    let context = Tensor::randn([2, 77, 768], opts);
    let start = Instant::now();
    let out = unet
        .forward_cfg(&x, &t, &context, None, None, 2)
        .expect("UNet call");
    let step = start.elapsed().as_secs_f64();
    assert!(bool::try_from(out.isfinite().all()).unwrap_or(false));
    println!("one CFG UNet call (batch 2, 128 x 128 latent): {step:.1} s");
    println!(
        "latent2rgb / step: {:.5} %   TAESD (512 px) / step: {:.2} %   TAESD (1024 px) / step: {:.2} %",
        100.0 * latent2rgb / step,
        100.0 * taesd_capped / step,
        100.0 * taesd_full / step
    );
}
