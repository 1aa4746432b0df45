//! One tiled super-resolution run, for `scripts/bench esrgan-cpu` (which runs Spandrel on the
//! same model, image and tiles in its own process):
//!
//! `cargo bench -p hiresfix-upscalers-pixel --bench esrgan -- MODEL SIDE TILE OVERLAP OUT.json`
//!
//! A seeded random `SIDE`² image in [0, 1] through the model (CPU, fp32), tiles of `TILE`
//! input pixels overlapping by `OVERLAP`, one tile per call (as Spandrel's caller does);
//! writes `{"seconds": ..., "peak_rss_mib": ...}` (VmHWM after the run).
use std::time::Instant;

use hiresfix_upscalers_pixel::models::{self, tiles};
use host_api::tch::{self, Device, Kind, Tensor};

fn vm_hwm_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let [model, side, tile, overlap, out] = args.as_slice() else {
        eprintln!("usage: esrgan MODEL SIDE TILE OVERLAP OUT.json");
        std::process::exit(2);
    };
    let side: i64 = side.parse().expect("SIDE");
    let tiling = tiles::Tiling {
        tile: tile.parse().expect("TILE"),
        overlap: overlap.parse().expect("OVERLAP"),
        batch: 1,
    };
    let net = models::load(std::path::Path::new(model)).unwrap_or_else(|e| panic!("{e}"));
    tch::manual_seed(0);
    let image = Tensor::rand([1, 3, side, side], (Kind::Float, Device::Cpu));
    let start = Instant::now();
    let up = tch::no_grad(|| tiles::run(&net, &image, tiling)).unwrap_or_else(|e| panic!("{e}"));
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(up.size(), [1, 3, side * net.scale(), side * net.scale()]);
    let json = format!(
        "{{\"seconds\": {seconds}, \"peak_rss_mib\": {}}}",
        vm_hwm_mib()
    );
    std::fs::write(out, json).expect("writing the result");
    println!("{}: {seconds:.2} s", net.describe());
}
