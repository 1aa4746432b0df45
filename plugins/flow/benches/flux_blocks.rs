//! One real-size Flux.1 double-stream block and one single-stream block (hidden 3072, 24 heads ×
//! 128, MLP 4 × 3072, q/k RMSNorm, RoPE axes 16/56/56; [`FluxConfig::flux1`]) with random
//! weights at 1024 px token counts (a 128 × 128 latent packed 2×2: 4096 image tokens, 512 T5
//! tokens), fp32 on the CPU: call time and peak RSS per block, against diffusers'
//! `FluxTransformerBlock` / `FluxSingleTransformerBlock` on the same weights in the same run.
//!
//!     cargo bench -p hiresfix-flow --bench flux_blocks [-- --side LATENT --txt TOKENS]
//!
//! Each side of each block runs in its own process, so a peak RSS is one block's: ours is this
//! binary re-run with `--child double|single`, theirs `python3 scripts/bench_flux_blocks.py`.
//! Weights: tensor `i` of the block's sorted BFL names is `randn(shape)` after `manual_seed(i)`,
//! scaled (weights `N(0, 1/fan_in)`, norm scales `1 + N(0, 0.02²)`, biases `N(0, 0.02²)`); the
//! inputs come from seeds 1000000 + k. libtorch's CPU generator is the same in PyTorch, so the
//! script makes the same tensors, renames them to diffusers' (split qkv / linear1) and also
//! prints the relative difference of the two outputs (ours are written to a temporary file).
use std::process::Command;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use hiresfix_flow::flux::{
    image_ids, rope, text_ids, DoubleBlock, FluxConfig, SingleBlock, Variant,
};
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

const INPUT_SEED: i64 = 1_000_000;
const GIB: f64 = 1024.0 * 1024.0;

fn main() -> Result<()> {
    let args = Args::parse()?;
    if let Some(block) = &args.child {
        return child(block, &args);
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let tmp = tempfile::tempdir()?;
    let me = std::env::current_exe()?;
    let (side, txt) = (args.side.to_string(), args.txt.to_string());
    println!(
        "flux blocks: latent {side}x{side} ({} image tokens) + {txt} text tokens, fp32 CPU, {} threads",
        (args.side / 2) * (args.side / 2),
        tch::get_num_threads()
    );
    for block in ["double", "single"] {
        let out = tmp.path().join(format!("{block}.safetensors"));
        let out = out
            .to_str()
            .ok_or_else(|| anyhow!("temporary path not UTF-8"))?;
        let ours = run(Command::new(&me).args([
            "--child", block, "--side", &side, "--txt", &txt, "--out", out,
        ]))?;
        let theirs = run(Command::new("python3").current_dir(root).args([
            "scripts/bench_flux_blocks.py",
            "--block",
            block,
            "--side",
            &side,
            "--txt",
            &txt,
            "--ours",
            out,
        ]))?;
        let (a, b) = (measures(&ours)?, measures(&theirs)?);
        println!("{ours}\n{theirs}");
        println!(
            "flux-{block} ours/theirs: call {:.2}, peak RSS {:.2}, added RSS {:.2}",
            a.0 / b.0,
            a.1 / b.1,
            a.2 / b.2
        );
    }
    Ok(())
}

/// One block in this process: build, fill, one call; prints one line.
fn child(block: &str, args: &Args) -> Result<()> {
    let config = FluxConfig::flux1(Variant::Dev);
    let baseline = proc_status_kib("VmRSS:")?;
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    enum Block {
        Double(DoubleBlock),
        Single(SingleBlock),
    }
    let model = match block {
        "double" => Block::Double(DoubleBlock::new(&root / "double_blocks" / 0, &config)),
        "single" => Block::Single(SingleBlock::new(&root / "single_blocks" / 0, &config)),
        other => bail!("--child double|single, not {other}"),
    };
    let start = Instant::now();
    fill(&vs)?;
    let fill_s = start.elapsed().as_secs_f64();
    let params: i64 = vs.variables().values().map(|t| t.numel() as i64).sum();
    let d = config.hidden_size();
    let seeded = |k: i64, shape: &[i64]| {
        tch::manual_seed(INPUT_SEED + k);
        Tensor::randn(shape, (Kind::Float, Device::Cpu))
    };
    let img_tokens = (args.side / 2) * (args.side / 2);
    let img = seeded(0, &[1, img_tokens, d]);
    let txt = seeded(1, &[1, args.txt, d]);
    let vec = seeded(2, &[1, d]);
    let ids = Tensor::cat(
        &[
            text_ids(args.txt, Device::Cpu),
            image_ids(args.side, args.side, Device::Cpu),
        ],
        0,
    );
    let pe = rope(&ids, &config.axes_dims_rope, config.theta);
    let start = Instant::now();
    let (out_img, out_txt) = tch::no_grad(|| match &model {
        Block::Double(b) => b.forward(&img, &txt, &vec, &pe),
        Block::Single(b) => {
            let x = b.forward(&Tensor::cat(&[&txt, &img], 1), &vec, &pe);
            (x.narrow(1, args.txt, img_tokens), x.narrow(1, 0, args.txt))
        }
    });
    let call = start.elapsed().as_secs_f64();
    let peak = proc_status_kib("VmHWM:")?;
    if let Some(path) = &args.out {
        Tensor::write_safetensors(&[("img", &out_img), ("txt", &out_txt)], path)
            .context("writing --out")?;
    }
    println!(
        "flux-{block} ours:   {params} parameters; fill {fill_s:.2} s, call {call:.2} s, peak RSS \
         {:.2} GiB, added RSS {:.2} GiB",
        peak as f64 / GIB,
        (peak - baseline) as f64 / GIB
    );
    Ok(())
}

/// Every parameter of `vs`, sorted by name, from its seed (module docs).
fn fill(vs: &VarStore) -> Result<()> {
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let _guard = tch::no_grad_guard();
    for (i, (name, mut var)) in vars.into_iter().enumerate() {
        let shape = var.size();
        let (factor, offset) = match shape.len() {
            1 if name.ends_with(".scale") => (0.02, 1.0),
            1 => (0.02, 0.0),
            _ => (1.0 / (shape[1] as f64).sqrt(), 0.0),
        };
        tch::manual_seed(i as i64);
        let mut t = Tensor::randn(shape.as_slice(), (Kind::Float, Device::Cpu));
        let _ = t.f_mul_scalar_(factor)?.f_add_scalar_(offset)?;
        var.copy_(&t);
    }
    Ok(())
}

/// Runs `cmd`, its stdout's last line, or its stderr in the error.
fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().last().unwrap_or("").to_string())
}

/// (call s, peak RSS GiB, added RSS GiB) of a result line.
fn measures(line: &str) -> Result<(f64, f64, f64)> {
    let after = |key: &str| -> Result<f64> {
        let rest = line
            .split(key)
            .nth(1)
            .ok_or_else(|| anyhow!("no `{key}` in: {line}"))?;
        Ok(rest
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(',')
            .parse()?)
    };
    Ok((after("call ")?, after("peak RSS ")?, after("added RSS ")?))
}

struct Args {
    child: Option<String>,
    side: i64,
    txt: i64,
    out: Option<String>,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            child: None,
            side: 128,
            txt: 512,
            out: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(a) = it.next() {
            let mut value = || it.next().ok_or_else(|| anyhow!("{a} needs a value"));
            match a.as_str() {
                "--child" => args.child = Some(value()?),
                "--side" => args.side = value()?.parse()?,
                "--txt" => args.txt = value()?.parse()?,
                "--out" => args.out = Some(value()?),
                "--bench" => {}
                other => bail!("unknown argument {other}"),
            }
        }
        Ok(args)
    }
}

/// A `/proc/self/status` field in KiB (`VmRSS:`, `VmHWM:`).
fn proc_status_kib(field: &str) -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/self/status"))
}
