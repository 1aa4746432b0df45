//! The plugin boundary's cost: the same tiny-model Euler run with the sampler's loop written
//! in process against the `euler` sampler called through its dylib (its denoise and noise
//! calls cross the ABI each step), as a ratio. Both use the same backend and CFG callbacks.
//!
//! `cargo bench --bench plugin_boundary [-- STEPS ROUNDS]` (needs the plugins built:
//! `cargo build --release --workspace`). Prints per-step times and the overhead; asserts
//! nothing (BENCHMARKS.md records the figures).
use std::time::Instant;

use hiresfix::generate::prepare;
use hiresfix::profile::Profile;
use hiresfix::registry::Registry;
use host_api::tch::{Kind, Tensor};
use host_api::{ModelBox, SamplerCallbacks};

/// CFG over the backend, as the host's own callbacks do.
struct Cfg<'a> {
    model: &'a ModelBox,
    uncond: &'a [Tensor],
    cond: &'a [Tensor],
}

impl SamplerCallbacks for Cfg<'_> {
    fn denoise(&mut self, x: &Tensor, sigma: f64) -> host_api::Result<Tensor> {
        let out = self.model.denoise(x, sigma, &[self.uncond, self.cond])?;
        Ok(&out[0] + (&out[1] - &out[0]) * 5.0)
    }
    fn noise_like(&mut self, x: &Tensor) -> host_api::Result<Tensor> {
        Ok(x.randn_like())
    }
    fn step(&mut self, _: usize, _: usize) -> bool {
        true
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let steps: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(200);
    let rounds: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let checkpoint = root.join("tests/data/sd1-tiny/sd1-tiny.safetensors");
    let text = format!(
        "seed = 1\nprompt = \"a cat\"\ndevice = \"cpu\"\n[model]\ncheckpoint = \"{}\"\n[[pass]]\nwidth = 32\nheight = 32\nsteps = {steps}\nsampler = \"euler\"\n",
        checkpoint.display()
    );
    let profile = Profile::parse(&text, "bench").expect("profile");
    let registry = Registry::load(&[], &Default::default());
    let mut job = prepare(profile, &registry, root).expect("prepare");
    let (model, _) = job
        .models
        .get(&job.settings, &job.plans[0].checkpoint, None, &[])
        .expect("tiny model");
    let request = host_api::EncodeRequest::pair("", "a cat", 1, 32, 32);
    let conds = model.encode_prompts(&request).expect("encode");
    let sampler = job.plans[0].sampler;
    let sigmas: Vec<f64> = (0..=steps)
        .map(|i| 14.6 * (1.0 - i as f64 / steps as f64))
        .collect();
    let start =
        Tensor::randn([1, 4, 16, 16], (Kind::Float, host_api::tch::Device::Cpu)) * sigmas[0];
    let mut cfg = Cfg {
        model: &model,
        uncond: &conds[0],
        cond: &conds[1],
    };
    let (mut direct, mut plugin) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..rounds {
        let t = Instant::now();
        let mut x = start.shallow_clone();
        for i in 0..steps {
            let (s, next) = (sigmas[i], sigmas[i + 1]);
            let denoised = cfg.denoise(&x, s).expect("denoise");
            x = &x + (&x - denoised) / s * (next - s);
            cfg.step(i, steps);
        }
        direct = direct.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let y = sampler
            .decl
            .run(&mut cfg, &[], start.shallow_clone(), &sigmas)
            .expect("plugin run");
        plugin = plugin.min(t.elapsed().as_secs_f64());
        let diff = f64::try_from((&y - &x).abs().max()).unwrap_or(f64::NAN);
        assert!(diff < 1e-4, "the two loops disagree by {diff}");
    }
    println!("tiny SD 1.x model, 32 px, CFG 5, {steps} Euler steps, best of {rounds}:");
    println!(
        "  in process: {:.3} ms/step; through the dylib: {:.3} ms/step; overhead {:+.2} %",
        direct / steps as f64 * 1e3,
        plugin / steps as f64 * 1e3,
        (plugin / direct - 1.0) * 100.0
    );
}
