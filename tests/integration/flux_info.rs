//! The Flux backend's `hiresfix info` on the tiny dev and schnell models of
//! scripts/make_flux_pipeline_reference.py in every layout (headers only: a BFL transformer
//! file without VAE or text encoders inspects fine): family flux-dev / flux-schnell, the
//! guidance embedding, the shift rule and the text encoders; and `check`'s memory table for a
//! 2-pass Flux profile.
use std::path::PathBuf;

use crate::common::*;
use crate::info::{field, info};

fn data(rel: &str) -> PathBuf {
    repo().join("tests/data/flux-tiny/pipeline").join(rel)
}

#[test]
fn info_shows_flux_variant_guidance_shift_rule_and_text_encoders_of_every_layout() {
    // The tiny models as scripts/make_flux_pipeline_reference.py builds them: 2 double + 2
    // single blocks of width 32; CLIP-L 2×32 and T5 2×96 (SD3 tiny's); dev's published
    // scheduler shifts by size, schnell's not at all.
    let dev = "flux-dev (Flux.1 dev, guidance embedding yes, 2 double + 2 single blocks, width 32)";
    let schnell =
        "flux-schnell (Flux.1 schnell, guidance embedding no, 2 double + 2 single blocks, width 32)";
    let by_size = "flow (shift by size: mu 0.5 at 256 tokens to 1.15 at 4096, shift = e^mu, from";
    let encoders = "CLIP-L (2 layers, 32, pooled only) + T5 (2 layers, 96)";
    let none = "none in the file (a transformer file's come from `[model] text_encoders`)";
    let cases = [
        ("dev/diffusers", "diffusers folder", dev, by_size, encoders),
        (
            "dev/flux1-dev-tiny.safetensors",
            "transformer file (VAE and text encoders from the profile)",
            dev,
            by_size,
            none,
        ),
        (
            "dev/flux1-dev-tiny-aio.safetensors",
            "single file (all-in-one)",
            dev,
            by_size,
            encoders,
        ),
        (
            "schnell/diffusers",
            "diffusers folder",
            schnell,
            "flow (shift 1, from the scheduler config)",
            encoders,
        ),
        (
            "schnell/flux1-schnell-tiny.safetensors",
            "transformer file (VAE and text encoders from the profile)",
            schnell,
            "flow (shift 1, from the published scheduler)",
            none,
        ),
    ];
    for (rel, format, family, prediction, text) in cases {
        let lines = info(&data(rel));
        assert_eq!(field(&lines, "format"), format, "{rel}");
        assert_eq!(field(&lines, "family"), family, "{rel}");
        assert!(
            field(&lines, "prediction").starts_with(prediction),
            "{rel}: {}",
            field(&lines, "prediction")
        );
        assert_eq!(field(&lines, "text encoders"), text, "{rel}");
        assert_eq!(field(&lines, "native size"), "1024 px", "{rel}");
    }
}

/// fp8 transformer files say so: the plain E4M3 file by its stored dtype (linear weights fp8,
/// biases and norms fp16), ComfyUI's scaled fp8 also by name, its scales not counted.
#[test]
fn info_names_fp8_and_scaled_fp8_transformer_files() {
    for (file, dtype) in [
        (
            "flux1-dev-tiny-fp8.safetensors",
            "F8_E4M3 (98% of the parameters; the rest F16)",
        ),
        (
            "flux1-dev-tiny-fp8-scaled.safetensors",
            "F8_E4M3 (98% of the parameters; the rest F16), ComfyUI scaled fp8 (each weight \
             times its scale_weight)",
        ),
    ] {
        let lines = info(&data("dev/fp8").join(file));
        assert!(field(&lines, "family").starts_with("flux-dev"), "{file}");
        assert_eq!(field(&lines, "stored dtype"), dtype, "{file}");
    }
}

#[test]
fn check_prints_a_memory_row_per_flux_pass() {
    let scratch = Scratch::new("flux-check");
    let checkpoint = toml::Value::from(data("dev/diffusers").to_str().unwrap());
    let text = format!(
        "prompt = \"a cat\"\ncfg = 1.0\ndevice = \"cpu\"\ndtype = \"fp32\"\n[model]\n\
         checkpoint = {checkpoint}\n[[pass]]\nwidth = 1024\nheight = 1024\nsteps = 4\n\
         sampler = \"euler\"\nschedule = \"simple\"\n[[pass]]\nscale = 2.0\nsteps = 4\n\
         denoise = 0.5\nsampler = \"euler\"\nschedule = \"simple\"\nupscaler = \"latent\"\n"
    );
    let path = scratch.write("p.toml", &text);
    let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_lines(&out);
    let row = |pass: &str, size: &str| memory_row(&lines, pass, size);
    // Transformer call at cfg 1 (batch 1), fp32: 20 buffers × (packed image tokens + 512 T5
    // tokens) × width 32 × 4 B with the tiny VAE's factor 2: 1024 px → (256² + 512) tokens =
    // 161.25 MiB; 2048 px → (512² + 512) tokens = 641.25 MiB.
    let (one, two) = (row("1", "1024x1024"), row("2", "2048x2048"));
    assert_eq!(one[4..6], ["161.2", "MiB"], "{one:?}");
    assert_eq!(two[4..6], ["641.2", "MiB"], "{two:?}");
}

/// `tiled = "auto"` on a Flux hires pass: at 16384 px (the tiny 2× VAE: 4096² packed tokens)
/// the whole transformer call is 20 × 4096² × 32 × 4 B = 40 GiB, more than any test machine
/// has free, so the pass is tiled (the extension's default tiles, 96 cells: 48² tokens + 512
/// T5 tokens a tile, 4 tiles a call; the merge buffers of the whole 16-channel latent); at
/// 2048 px it stays whole.
#[test]
fn check_tiles_a_flux_hires_pass_that_will_not_fit() {
    let scratch = Scratch::new("flux-check-auto");
    let checkpoint = toml::Value::from(data("dev/diffusers").to_str().unwrap());
    for (scale, tiled) in [(16.0, true), (2.0, false)] {
        let text = format!(
            "prompt = \"a cat\"\ndevice = \"cpu\"\ndtype = \"fp32\"\n[model]\n\
             checkpoint = {checkpoint}\n[[pass]]\nwidth = 1024\nheight = 1024\nsteps = 4\n\
             sampler = \"euler\"\nschedule = \"simple\"\n[[pass]]\nscale = {scale:?}\n\
             steps = 4\ndenoise = 0.5\nsampler = \"euler\"\nschedule = \"simple\"\n\
             upscaler = \"latent\"\ntiled = \"auto\"\n"
        );
        let path = scratch.write("p.toml", &text);
        let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let lines = stdout_lines(&out);
        let decision = lines
            .iter()
            .find(|l| l.starts_with("pass 2: tiled = \"auto\""))
            .unwrap_or_else(|| panic!("{lines:#?}"));
        // A machine with over 50 GiB free runs even the 16384 px call whole: the decision
        // must then say so (its figures are the estimate's, checked above).
        let roomy = decision.contains("fits in");
        let want = match tiled && !roomy {
            true => "pass 2: tiled = \"auto\": tiled (",
            false => "pass 2: tiled = \"auto\": not tiled (",
        };
        assert!(decision.starts_with(want), "{scale}: {decision}");
        if tiled && !roomy {
            // A call of 4 tiles of 96² cells, 20 × 4 × (48² + 512) × 32 × 4 B = 27.5 MiB, and
            // the whole-latent merge buffers of Flux's 16 channels: 8192² cells × 16 × 4 B ×
            // (latent, weights, one sum) = 12 GiB.
            let row = memory_row(&lines, "2", "16384x16384");
            assert_eq!(row[4..6], ["12.0", "GiB"], "{row:?}");
        }
    }
}

/// A Black Forest Labs Flux.1-dev transformer file of the published shapes (19 double + 38
/// single blocks, width 3072) in bf16, its data a hole: `info` and `check` read headers only,
/// so the 23.8 GB file takes no disk (a sparse file).
fn real_size_flux_dev(dir: &std::path::Path) -> PathBuf {
    let (d, mlp, head) = (3072i64, 12288i64, 128i64);
    let mut tensors: Vec<(String, Vec<i64>)> = Vec::new();
    let mut linear = |name: &str, out: i64, inp: i64| {
        tensors.push((format!("{name}.weight"), vec![out, inp]));
        tensors.push((format!("{name}.bias"), vec![out]));
    };
    for (name, out, inp) in [
        ("img_in", d, 64),
        ("txt_in", d, 4096),
        ("time_in.in_layer", d, 256),
        ("time_in.out_layer", d, d),
        ("vector_in.in_layer", d, 768),
        ("vector_in.out_layer", d, d),
        ("guidance_in.in_layer", d, 256),
        ("guidance_in.out_layer", d, d),
        ("final_layer.adaLN_modulation.1", 2 * d, d),
        ("final_layer.linear", 64, d),
    ] {
        linear(name, out, inp);
    }
    for i in 0..19 {
        for side in ["img", "txt"] {
            let b = format!("double_blocks.{i}.{side}");
            linear(&format!("{b}_mod.lin"), 6 * d, d);
            linear(&format!("{b}_attn.qkv"), 3 * d, d);
            linear(&format!("{b}_attn.proj"), d, d);
            linear(&format!("{b}_mlp.0"), mlp, d);
            linear(&format!("{b}_mlp.2"), d, mlp);
        }
    }
    for i in 0..38 {
        let b = format!("single_blocks.{i}");
        linear(&format!("{b}.modulation.lin"), 3 * d, d);
        linear(&format!("{b}.linear1"), 3 * d + mlp, d);
        linear(&format!("{b}.linear2"), d, d + mlp);
    }
    for i in 0..19 {
        for side in ["img", "txt"] {
            for n in ["query_norm", "key_norm"] {
                tensors.push((
                    format!("double_blocks.{i}.{side}_attn.norm.{n}.scale"),
                    vec![head],
                ));
            }
        }
    }
    for i in 0..38 {
        for n in ["query_norm", "key_norm"] {
            tensors.push((format!("single_blocks.{i}.norm.{n}.scale"), vec![head]));
        }
    }
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, shape) in &tensors {
        let bytes = 2 * shape.iter().product::<i64>() as u64;
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut text = serde_json::Value::Object(header).to_string();
    while !text.len().is_multiple_of(8) {
        text.push(' ');
    }
    let path = dir.join("flux1-dev.safetensors");
    let mut file = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    file.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.set_len(8 + text.len() as u64 + offset).unwrap();
    use std::os::unix::fs::MetadataExt;
    let allocated = 512 * std::fs::metadata(&path).unwrap().blocks();
    assert!(
        allocated < 1 << 30,
        "{}: the file system gave the sparse file {allocated} bytes (no holes?)",
        path.display()
    );
    path
}

/// `check` on the real-size Flux.1 dev (headers of a 12 B bf16 transformer file; CLIP-L, T5-XXL
/// and the ae at their published sizes) at 1024 → 2048 px in fp32 on the CPU: 48 GB of fp32
/// transformer weights alone, 11 GiB with `weight_dtype = "fp8_e4m3fn"`. Where the pass does
/// not fit, `check` names the change that would (or comes closest): its figure is the `peak
/// tiled` of the same profile checked with that change.
#[test]
fn check_says_which_dtype_a_real_size_flux_needs() {
    let scratch = Scratch::new("flux-check-real");
    let checkpoint = real_size_flux_dev(&scratch.0);
    let text = |dtype: &str, model: &str| {
        format!(
            "prompt = \"a cat\"\ndevice = \"cpu\"\ndtype = \"{dtype}\"\n[model]\n{model}\
             checkpoint = {}\n[[pass]]\nwidth = 1024\nheight = 1024\nsteps = 4\n\
             sampler = \"euler\"\nschedule = \"simple\"\n[[pass]]\nscale = 2.0\nsteps = 4\n\
             denoise = 0.5\nsampler = \"euler\"\nschedule = \"simple\"\nupscaler = \"latent\"\n",
            toml::Value::from(checkpoint.to_str().unwrap())
        )
    };
    let check = |dtype: &str, model: &str| {
        let path = scratch.write("p.toml", &text(dtype, model));
        let out = hiresfix(&scratch.0, &["check", path.to_str().unwrap()], &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout_lines(&out)
    };
    let fp32 = check("fp32", "");
    // (11.90 G transformer + CLIP-L 123 M + T5 4.76 G + ae 83.7 M parameters) × 4 B.
    let weights = memory_row(&fp32, "1", "1024x1024");
    assert_eq!(weights[2..4], ["62.8", "GiB"], "{weights:?}");
    // fp8 weights: the transformer's 11.90 G parameters × 1 B, the rest × 4 B.
    let fp8 = check("fp32", "weight_dtype = \"fp8_e4m3fn\"\n");
    assert_eq!(memory_row(&fp8, "1", "1024x1024")[2..4], ["29.6", "GiB"]);
    assert!(
        fp8.iter()
            .any(|l| l.starts_with("memory (cpu, fp32, Flux weights fp8_e4m3fn, ")),
        "{fp8:#?}"
    );
    let verdict = fp32
        .iter()
        .find(|l| l.starts_with("pass 1: ") && l.contains(" tiled; largest"))
        .unwrap();
    let advice = fp32
        .iter()
        .find(|l| l.starts_with("pass 1: ") && l.contains("fit") && l.contains(" with "));
    if !verdict.contains("does not fit tiled") {
        assert!(advice.is_none(), "{fp32:#?}");
        return;
    }
    let advice = advice.unwrap_or_else(|| panic!("{fp32:#?}"));
    eprintln!("{advice}");
    let label = advice
        .split(" with ")
        .nth(1)
        .unwrap()
        .split(" (")
        .next()
        .unwrap();
    let dtype = match label.contains("dtype = \"bf16\"") {
        true => "bf16",
        false => "fp32",
    };
    let model = match label.contains("weight_dtype = \"fp8_e4m3fn\"") {
        true => "weight_dtype = \"fp8_e4m3fn\"\n",
        false => "",
    };
    let peak = memory_row(&check(dtype, model), "1", "1024x1024")[12..14].join(" ");
    assert!(
        advice.contains(&format!("({peak} peak")),
        "{advice} / {peak}"
    );
}
