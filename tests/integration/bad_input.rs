//! The bad-input corpus (README "Reliability"): every user-caused failure ends in one line under 300
//! characters that names the thing, exit code 1 (2 for command-line usage), no panic, and no
//! file written. One row per case: damaged and foreign checkpoints, diffusers folders with bad
//! parts, profiles in range but pathological, prompts, PNGs given to `replay`, plugin folders.
//! README.md's "Reliability" section lists the same cases.

use std::path::{Path, PathBuf};

use crate::common::corpus;
use crate::common::*;
use host_api::tch::{Device, Kind, Tensor};

/// What a case runs: its files are made in the scratch folder, which is also the working folder.
type Setup = fn(&Scratch) -> Vec<String>;

struct Case {
    name: &'static str,
    setup: Setup,
    /// Exit code.
    code: i32,
    /// Text the one-line error must contain.
    expect: &'static str,
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|a| a.to_string()).collect()
}

/// `generate` on a tiny 2-pass profile over `checkpoint`, with extra top-level keys and pass keys.
fn generate(
    scratch: &Scratch,
    checkpoint: &Path,
    top: &str,
    pass1: &str,
    pass2: &str,
) -> Vec<String> {
    let profile = scratch.write("p.toml", &tiny_profile(checkpoint, top, pass1, pass2));
    s(&["generate", profile.to_str().unwrap()])
}

/// The tiny 2-pass profile written in the scratch folder; its path.
fn scratch_profile(scratch: &Scratch) -> String {
    let path = scratch.write("p.toml", &tiny_profile(&tiny_ldm(), "", "", ""));
    path.to_str().unwrap().to_owned()
}

/// `generate` on the tiny SD 1.x model with `edit` applied to the default profile text.
fn sd3_tiny(rel: &str) -> PathBuf {
    repo().join("tests/data/sd3-tiny").join(rel)
}

/// `generate` on the tiny Flux dev pipeline (diffusers folder) with `[model] loras` the file
/// `name` of tests/data/loras.
fn flux_with_lora(scratch: &Scratch, name: &str) -> Vec<String> {
    let checkpoint = repo().join("tests/data/flux-tiny/pipeline/dev/diffusers");
    let lora = repo().join(format!("tests/data/loras/{name}.safetensors"));
    let loras = format!("[model]\nloras = [{{ path = \"{}\" }}]\n", lora.display());
    let text = tiny_profile(&checkpoint, "", "", "").replace("[model]\n", &loras);
    let profile = scratch.write("p.toml", &text);
    s(&["generate", profile.to_str().unwrap()])
}

/// `generate` on the tiny SD3 split transformer file with `model_lines` added to `[model]`.
fn sd3_split(scratch: &Scratch, model_lines: &str) -> Vec<String> {
    let checkpoint = sd3_tiny("split/transformer.safetensors");
    let text = tiny_profile(&checkpoint, "", "", "")
        .replace("[model]\n", &format!("[model]\n{model_lines}\n"));
    let profile = scratch.write("p.toml", &text);
    s(&["generate", profile.to_str().unwrap()])
}

fn profile_edit(scratch: &Scratch, edit: impl Fn(String) -> String) -> Vec<String> {
    let profile = scratch.write("p.toml", &edit(tiny_profile(&tiny_ldm(), "", "", "")));
    s(&["generate", profile.to_str().unwrap()])
}

/// The tiny profile `p` without its pass 2, `top` added to its top-level keys (a stage plan).
fn one_pass(p: String, top: &str) -> String {
    let cut = p.rfind("[[pass]]").unwrap();
    p[..cut].replace("seed = 7", &format!("seed = 7\n{top}"))
}

/// `check` (lint, nothing heavy) on the same edited profile: it catches the same limits.
fn check_edit(scratch: &Scratch, edit: impl Fn(String) -> String) -> Vec<String> {
    let mut args = profile_edit(scratch, edit);
    args[0] = "check".into();
    args
}

fn tiny_tensors() -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(tiny_ldm()).unwrap()
}

/// The tiny SD 1.x checkpoint with `edit` applied, written into the scratch folder.
fn edited(scratch: &Scratch, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let mut tensors = tiny_tensors();
    edit(&mut tensors);
    let path = scratch.path("edited.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

fn set(tensors: &mut [(String, Tensor)], key: &str, value: Tensor) {
    let entry = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
    entry.1 = value;
}

/// A tensor of `key`'s shape filled with `value`.
fn filled(tensors: &[(String, Tensor)], key: &str, value: f64) -> Tensor {
    let t = &tensors.iter().find(|(k, _)| k == key).unwrap().1;
    t.full_like(value)
}

/// A file of zero-valued tensors with these keys and shapes (detection reads headers only).
fn header_only(scratch: &Scratch, keys: &[(&str, &[i64])]) -> PathBuf {
    let path = scratch.path("model.safetensors");
    files::zero_safetensors(&path, keys);
    path
}

/// A safetensors file from a header written by hand and `data` bytes.
fn raw_safetensors(scratch: &Scratch, header: &str, data: &[u8]) -> PathBuf {
    let bytes = [
        &(header.len() as u64).to_le_bytes()[..],
        header.as_bytes(),
        data,
    ]
    .concat();
    let path = scratch.path("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

fn bytes_file(scratch: &Scratch, name: &str, bytes: &[u8]) -> PathBuf {
    let path = scratch.path(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A copy of a committed test file in the scratch folder, under `name`.
fn data_copy(scratch: &Scratch, rel: &str, name: &str) -> PathBuf {
    bytes_file(scratch, name, &std::fs::read(repo().join(rel)).unwrap())
}

/// `convert` of a copy of a committed test file (its default output lands in the scratch folder).
fn convert_copy(scratch: &Scratch, rel: &str) -> Vec<String> {
    s(&[
        "convert",
        data_copy(scratch, rel, "model.pth").to_str().unwrap(),
    ])
}

/// A copy of the tiny SD 1.x diffusers folder, with `edit` applied to it.
fn diffusers_copy(scratch: &Scratch, edit: impl FnOnce(&Path)) -> PathBuf {
    let folder = scratch.path("model");
    files::copy_dir(&tiny_diffusers(), &folder);
    edit(&folder);
    folder
}

/// Rewrites one key of a JSON file.
fn edit_json(path: &Path, key: &str, value: serde_json::Value) {
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json[key] = value;
    std::fs::write(path, serde_json::to_string(&json).unwrap()).unwrap();
}

fn on_tiny(scratch: &Scratch, checkpoint: PathBuf) -> Vec<String> {
    generate(scratch, &checkpoint, "", "", "")
}

/// A PNG with these text chunks (what `replay` reads).
fn png_with(scratch: &Scratch, chunks: &[(&str, &str)]) -> PathBuf {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, 2, 2);
        encoder.set_color(png::ColorType::Rgb);
        for (k, v) in chunks {
            encoder
                .add_text_chunk(k.to_string(), v.to_string())
                .unwrap();
        }
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0u8; 12]).unwrap();
    }
    bytes_file(scratch, "in.png", &bytes)
}

/// A 16 × 16 PNG to upscale (`in.png`).
fn upscale_input(scratch: &Scratch) -> &'static str {
    let pixels: Vec<u8> = (0..16 * 16 * 3).map(|i| (i % 251) as u8).collect();
    let png = hiresfix::output::encode_png(16, 16, &pixels, "", "", None).unwrap();
    bytes_file(scratch, "in.png", &png);
    "in.png"
}

const CASES: &[Case] = &[
    // --- checkpoint files ---
    Case { name: "missing checkpoint", code: 1, expect: "models/nope.safetensors not found",
        setup: |sc| generate(sc, Path::new("models/nope.safetensors"), "", "", "") },
    Case { name: "empty file", code: 1, expect: "truncated header",
        setup: |sc| on_tiny(sc, bytes_file(sc, "empty.safetensors", b"")) },
    Case { name: "five bytes", code: 1, expect: "truncated header",
        setup: |sc| on_tiny(sc, bytes_file(sc, "five.safetensors", b"\x10\0\0\0\0")) },
    Case { name: "truncated header", code: 1, expect: "truncated header",
        setup: |sc| {
            let bytes = std::fs::read(tiny_ldm()).unwrap();
            on_tiny(sc, bytes_file(sc, "cut.safetensors", &bytes[..1000]))
        } },
    Case { name: "truncated data", code: 1, expect: "truncated data",
        setup: |sc| {
            let bytes = std::fs::read(tiny_ldm()).unwrap();
            on_tiny(sc, bytes_file(sc, "cut.safetensors", &bytes[..bytes.len() / 3]))
        } },
    Case { name: "header not JSON", code: 1, expect: "header is not JSON",
        setup: |sc| on_tiny(sc, bytes_file(sc, "bad.safetensors", b"\x10\0\0\0\0\0\0\0{not json at all}")) },
    Case { name: "header length past 100 MB", code: 1, expect: "not a safetensors header length",
        setup: |sc| on_tiny(sc, bytes_file(sc, "huge.safetensors", &[0xff; 64])) },
    Case { name: "a tensor listed twice", code: 1, expect: "tensor `a` is listed twice",
        setup: |sc| on_tiny(sc, raw_safetensors(sc,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#,
            &[0; 8])) },
    Case { name: "overlapping data offsets", code: 1, expect: "overlap another tensor's or leave a hole",
        setup: |sc| on_tiny(sc, raw_safetensors(sc,
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
            &[0; 12])) },
    Case { name: "a hole between tensors", code: 1, expect: "overlap another tensor's or leave a hole",
        setup: |sc| on_tiny(sc, raw_safetensors(sc,
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
            &[0; 12])) },
    Case { name: "shape and byte range disagree", code: 1, expect: "does not match its dtype and shape",
        setup: |sc| on_tiny(sc, raw_safetensors(sc,
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, &[0; 8])) },
    Case { name: "unknown dtype", code: 1, expect: "header is not JSON describing tensors",
        setup: |sc| on_tiny(sc, raw_safetensors(sc,
            r#"{"a":{"dtype":"F7","shape":[1],"data_offsets":[0,4]}}"#, &[0; 4])) },
    Case { name: "integer weights where floats belong", code: 1, expect: "is stored as I8, not floating point",
        setup: |sc| on_tiny(sc, edited(sc, |t| {
            let key = "model.diffusion_model.out.2.weight";
            let v = filled(t, key, 1.0).to_kind(Kind::Int8);
            set(t, key, v);
        })) },
    Case { name: "ComfyUI scaled-fp8 checkpoint", code: 1, expect: "a ComfyUI scaled-fp8 checkpoint (`scaled_fp8`, per-layer `scale_weight`) is not supported",
        setup: |sc| s(&["info", edited(sc, |t| {
            t.push(("scaled_fp8".into(), Tensor::zeros([0], (Kind::Float, Device::Cpu))));
        }).to_str().unwrap()]) },
    Case { name: "NaN in a UNet weight", code: 1, expect: "UNet's result holds NaN or inf — the checkpoint's tensor `model.diffusion_model.",
        setup: |sc| on_tiny(sc, edited(sc, |t| {
            let key = "model.diffusion_model.input_blocks.1.0.in_layers.2.weight";
            let v = filled(t, key, f64::NAN);
            set(t, key, v);
        })) },
    Case { name: "inf in a VAE decoder weight", code: 1, expect: "pass 2: VAE decoding produced NaN or inf (in fp32 too) — the checkpoint's tensor `first_stage_model.decoder",
        setup: |sc| on_tiny(sc, edited(sc, |t| {
            let key = "first_stage_model.decoder.conv_out.weight";
            let v = filled(t, key, f64::INFINITY);
            set(t, key, v);
        })) },
    Case { name: "NaN in a text-encoder weight", code: 1, expect: "text encoder produced NaN or inf for the prompt — the checkpoint's tensor `cond_stage_model.",
        setup: |sc| on_tiny(sc, edited(sc, |t| {
            let key = "cond_stage_model.transformer.text_model.final_layer_norm.weight";
            let v = filled(t, key, f64::NAN);
            set(t, key, v);
        })) },
    Case { name: "pickle .ckpt", code: 1, expect: "pickle checkpoints are refused; convert to .safetensors",
        setup: |sc| on_tiny(sc, bytes_file(sc, "model.ckpt", b"\x80\x02}q\x00.")) },
    Case { name: "pickle named .safetensors", code: 1, expect: "this is a pickle (torch.save) file",
        setup: |sc| on_tiny(sc, bytes_file(sc, "model.safetensors", b"\x80\x02}q\x00(X\x05\x00\x00\x00state.")) },
    Case { name: "torch zip named .safetensors", code: 1, expect: "pickle",
        setup: |sc| on_tiny(sc, bytes_file(sc, "model.safetensors", b"PK\x03\x04archive/data.pkl")) },
    Case { name: "a LoRA given as checkpoint", code: 1, expect: "a LoRA, not a checkpoint",
        setup: |sc| on_tiny(sc, header_only(sc, &[("lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight", &[4, 8])])) },
    Case { name: "a VAE given as checkpoint", code: 1, expect: "a VAE, not a checkpoint — set it as [model] vae",
        setup: |sc| on_tiny(sc, header_only(sc, &[("encoder.down.0.block.0.conv1.weight", &[4, 4, 3, 3])])) },
    // The flow plugin reads SD3 files (the SD plugin alone refuses them: "not supported: a
    // Stable Diffusion 3 / 3.5 (MMDiT) checkpoint"); this one has no VAE.
    Case { name: "SD 3 checkpoint", code: 1, expect: "model.safetensors: no VAE in it — set `[model] vae` to the SD3 VAE file",
        setup: |sc| on_tiny(sc, header_only(sc, &[("model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight", &[6, 2])])) },
    // A Flux transformer file without its text encoders (the flow plugin's Flux backend).
    Case { name: "Flux transformer without text encoders", code: 1, expect: "model.safetensors: no T5 text encoder — list the t5xxl file in `[model] text_encoders`",
        setup: |sc| on_tiny(sc, header_only(sc, &[("double_blocks.0.img_attn.norm.key_norm.scale", &[4])])) },
    Case { name: "SDXL refiner on an SD 1.x pass", code: 1, expect: "is sdxl-refiner but the pass's",
        setup: |sc| {
            let refiner = header_only(sc, &[
                ("model.diffusion_model.input_blocks.0.0.weight", &[384, 4, 3, 3]),
                ("model.diffusion_model.label_emb.0.0.weight", &[1536, 2560]),
                ("conditioner.embedders.0.model.transformer.resblocks.0.attn.in_proj_weight", &[48, 16]),
            ]);
            let line = format!("refiner_checkpoint = \"{}\"", refiner.display());
            generate(sc, &tiny_ldm(), "", &line, "")
        } },
    Case { name: "depth-to-image UNet", code: 1, expect: "depth-to-image checkpoint (5 input channels)",
        setup: |sc| on_tiny(sc, edited(sc, |t| {
            let key = "model.diffusion_model.input_blocks.0.0.weight";
            set(t, key, Tensor::zeros([32, 5, 3, 3], (Kind::Float, Device::Cpu)));
        })) },
    Case { name: "merge with the inpainting checkpoint second", code: 1, expect: "is an inpainting checkpoint but the first, ",
        setup: |sc| {
            let inpaint = repo().join("tests/data/sd1-inpaint-tiny/sd1-inpaint-tiny.safetensors");
            let out = sc.path("merged.safetensors");
            s(&["merge", out.to_str().unwrap(), &format!("{}:0.5", tiny_ldm().display()), &format!("{}:0.5", inpaint.display())])
        } },
    Case { name: "load-time merge of inpainting and text-to-image", code: 1, expect: "merge an inpainting checkpoint with `hiresfix merge` (inpainting first)",
        setup: |sc| {
            let inpaint = repo().join("tests/data/sd1-inpaint-tiny/sd1-inpaint-tiny.safetensors");
            profile_edit(sc, |p| p.replace(&format!("checkpoint = \"{}\"", tiny_ldm().display()), "").replace("[model]", &format!("[model]\nmerge = [{{ checkpoint = \"{}\", weight = 0.5 }}, {{ checkpoint = \"{}\", weight = 0.5 }}]", inpaint.display(), tiny_ldm().display())))
        } },
    Case { name: "instruct-pix2pix UNet", code: 1, expect: "instruct-pix2pix checkpoint (8 input channels)",
        setup: |sc| on_tiny(sc, edited(sc, |t| {
            let key = "model.diffusion_model.input_blocks.0.0.weight";
            set(t, key, Tensor::zeros([32, 8, 3, 3], (Kind::Float, Device::Cpu)));
        })) },
    Case { name: "a missing tensor", code: 1, expect: "missing tensor `first_stage_model.decoder.up.0.block.1.conv1.bias`",
        setup: |sc| on_tiny(sc, edited(sc, |t| t.retain(|(k, _)| k != "first_stage_model.decoder.up.0.block.1.conv1.bias"))) },
    Case { name: "a misshaped tensor", code: 1, expect: "has shape [64, 128, 1, 1] where the checkpoint's other tensors imply [64, 128, 3, 3]",
        setup: |sc| on_tiny(sc, edited(sc, |t| {
            let key = "model.diffusion_model.output_blocks.0.0.in_layers.2.weight";
            set(t, key, Tensor::zeros([64, 128, 1, 1], (Kind::Float, Device::Cpu)));
        })) },
    Case { name: "no text encoder", code: 1, expect: "not a recognised Stable Diffusion checkpoint (no text encoder)",
        setup: |sc| on_tiny(sc, edited(sc, |t| t.retain(|(k, _)| !k.starts_with("cond_stage_model.")))) },
    Case { name: "no tensors at all", code: 1, expect: "not a recognised Stable Diffusion checkpoint (no text encoder)",
        setup: |sc| on_tiny(sc, raw_safetensors(sc, r#"{"__metadata__":{"a":"b"}}"#, b"")) },
    Case { name: "a folder that is not a diffusers model", code: 1, expect: "no model_index.json",
        setup: |sc| {
            std::fs::create_dir_all(sc.path("empty-folder")).unwrap();
            on_tiny(sc, sc.path("empty-folder"))
        } },
    // --- diffusers folders ---
    Case { name: "diffusers folder without unet", code: 1, expect: "no diffusion_pytorch_model.safetensors — the diffusers folder is incomplete",
        setup: |sc| on_tiny(sc, diffusers_copy(sc, |f| std::fs::remove_dir_all(f.join("unet")).unwrap())) },
    Case { name: "diffusers UNet only as pickle", code: 1, expect: "pickle checkpoints are refused",
        setup: |sc| on_tiny(sc, diffusers_copy(sc, |f| {
            let w = f.join("unet/diffusion_pytorch_model.safetensors");
            std::fs::rename(&w, w.with_extension("bin")).unwrap();
        })) },
    Case { name: "model_index.json not JSON", code: 1, expect: "model_index.json: not valid JSON",
        setup: |sc| on_tiny(sc, diffusers_copy(sc, |f| std::fs::write(f.join("model_index.json"), "{oops").unwrap())) },
    Case { name: "VAE scaling_factor 0", code: 1, expect: "vae/config.json: scaling_factor 0",
        setup: |sc| on_tiny(sc, diffusers_copy(sc, |f| edit_json(&f.join("vae/config.json"), "scaling_factor", 0.into()))) },
    Case { name: "scheduler beta_end out of range", code: 1, expect: "scheduler_config.json: beta_end 2",
        setup: |sc| on_tiny(sc, diffusers_copy(sc, |f| edit_json(&f.join("scheduler/scheduler_config.json"), "beta_end", 2.into()))) },
    Case { name: "text encoder with an unknown activation", code: 1, expect: "config.json: hidden_act `relu6` is not supported",
        setup: |sc| on_tiny(sc, diffusers_copy(sc, |f| edit_json(&f.join("text_encoder/config.json"), "hidden_act", "relu6".into()))) },
    Case { name: "diffusers folder without text encoder", code: 1, expect: "(no text encoder)",
        setup: |sc| on_tiny(sc, diffusers_copy(sc, |f| std::fs::remove_dir_all(f.join("text_encoder")).unwrap())) },
    Case { name: "UNet heads that do not divide", code: 1, expect: "unet/config.json attention_head_dim",
        setup: |sc| on_tiny(sc, diffusers_copy(sc, |f| edit_json(&f.join("unet/config.json"), "attention_head_dim", 3.into()))) },
    // --- profiles ---
    Case { name: "no profile file", code: 1, expect: "cannot read profile",
        setup: |_| s(&["generate", "no-such-profile.toml"]) },
    Case { name: "profile not TOML", code: 1, expect: "p.toml:1:",
        setup: |sc| s(&["generate", sc.write("p.toml", "\u{1}\u{2} = = =").to_str().unwrap()]) },
    Case { name: "unknown key", code: 1, expect: "unknown key `stpes`; did you mean `steps`?",
        setup: |sc| profile_edit(sc, |p| p.replace("steps = 3", "stpes = 3")) },
    Case { name: "wrong type", code: 1, expect: "p.toml:15:9:",
        setup: |sc| profile_edit(sc, |p| p.replace("steps = 3", "steps = \"three\"")) },
    Case { name: "no checkpoint", code: 1, expect: "no checkpoint: set [model] checkpoint",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", "").replace(&format!("checkpoint = \"{}\"", tiny_ldm().display()), "")) },
    Case { name: "zero steps", code: 1, expect: "steps must be between 1 and 10000",
        setup: |sc| profile_edit(sc, |p| p.replace("steps = 3", "steps = 0")) },
    Case { name: "denoise below 0", code: 1, expect: "denoise must be in [0, 1]",
        setup: |sc| profile_edit(sc, |p| p.replace("denoise = 0.5", "denoise = -0.1")) },
    Case { name: "denoise so small the schedule explodes", code: 1, expect: "builds a schedule of 2000000 steps (at most 10000)",
        setup: |sc| profile_edit(sc, |p| p.replace("denoise = 0.5", "denoise = 0.000001")) },
    Case { name: "refiner_switch_at of 1", code: 1, expect: "refiner_switch_at must be between 0 and 1 (exclusive)",
        setup: |sc| profile_edit(sc, |p| p.replace("steps = 3", "steps = 3\nrefiner_checkpoint = \"r.safetensors\"\nrefiner_switch_at = 1.0")) },
    Case { name: "refiner_switch_at without a refiner", code: 1, expect: "pass.1.refiner_switch_at needs pass.1.refiner_checkpoint",
        setup: |sc| profile_edit(sc, |p| p.replace("steps = 3", "steps = 3\nrefiner_switch_at = 0.8")) },
    Case { name: "tiled tile below 8", code: 1, expect: "tiled.tile must be at least 8 latent cells",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "tiled = { tile = 4 }") },
    Case { name: "tiled overlap not below the tile", code: 1, expect: "tiled.overlap (32) must be less than tiled.tile (32)",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "tiled = { tile = 32, overlap = 32 }") },
    Case { name: "tiled batch of 0", code: 1, expect: "tiled.batch must be at least 1",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "tiled = { batch = 0 }") },
    Case { name: "tiled unknown method", code: 1, expect: "unknown variant `tiles`, expected `multidiffusion` or `mixture`",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "tiled = { method = \"tiles\" }") },
    Case { name: "tiled a word other than auto", code: 1, expect: "tiled = \"yes\": the only word is \"auto\"",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "tiled = \"yes\"") },
    Case { name: "tiled with an inpainting checkpoint", code: 1, expect: "pass 2: `tiled` cannot run a 9-channel inpainting checkpoint yet",
        setup: |sc| generate(sc, &repo().join("tests/data/sd1-inpaint-tiny/sd1-inpaint-tiny.safetensors"), "", "", "tiled = {}") },
    Case { name: "tiled with an inpainting checkpoint, in check", code: 1, expect: "pass 2: `tiled` cannot run a 9-channel inpainting checkpoint yet",
        setup: |sc| { let mut a = generate(sc, &repo().join("tests/data/sd1-inpaint-tiny/sd1-inpaint-tiny.safetensors"), "", "", "tiled = {}"); a[0] = "check".into(); a } },
    Case { name: "too many passes", code: 1, expect: "20 passes (at most 16)",
        setup: |sc| profile_edit(sc, |p| p + &"\n[[pass]]\nscale = 1.0\nsteps = 1\ndenoise = 0.5\n".repeat(18)) },
    Case { name: "upscale chain past the size limit", code: 1, expect: "over the 16384 px limit",
        setup: |sc| profile_edit(sc, |p| p + &"\n[[pass]]\nscale = 4.0\nsteps = 1\ndenoise = 0.5\n".repeat(5)) },
    Case { name: "a 16384 px pass upscaled", code: 1, expect: "pass 2: 32768x32768 px is over the 16384 px limit",
        setup: |sc| profile_edit(sc, |p| p.replace("width = 32\nheight = 32", "width = 16384\nheight = 16384")) },
    Case { name: "target below pass 1", code: 1, expect: "target = \"16x16\" is smaller than pass 1 (32x32, pass 1's 32x32 px area with the target's aspect) — raise target",
        setup: |sc| profile_edit(sc, |p| one_pass(p, "target = \"16x16\"")) },
    Case { name: "target not WxH", code: 1, expect: "target = \"4k\": must be WIDTHxHEIGHT in whole pixels",
        setup: |sc| profile_edit(sc, |p| one_pass(p, "target = \"4k\"")) },
    Case { name: "target past the size limit", code: 1, expect: "target = \"32768x16384\": each side must be between 8 and 16384 pixels",
        setup: |sc| profile_edit(sc, |p| one_pass(p, "target = \"32768x16384\"")) },
    Case { name: "target with several passes", code: 1, expect: "target = \"256x256\" plans the passes itself: keep one [[pass]] table",
        setup: |sc| profile_edit(sc, |p| p.replace("seed = 7", "seed = 7\ntarget = \"256x256\"")) },
    Case { name: "stage_factor of 1", code: 1, expect: "stage_factor must be greater than 1",
        setup: |sc| profile_edit(sc, |p| one_pass(p, "target = \"256x256\"\nstage_factor = 1.0")) },
    Case { name: "stage_factor without target", code: 1, expect: "stage_factor = 2 needs target",
        setup: |sc| profile_edit(sc, |p| p.replace("seed = 7", "seed = 7\nstage_factor = 2.0")) },
    Case { name: "target past the pass limit", code: 1, expect: "takes 67 stages from 32x32 at ×1.1 each (at most 16 passes) — raise stage_factor",
        setup: |sc| profile_edit(sc, |p| one_pass(p, "target = \"16384x16384\"\nstage_factor = 1.1")) },
    Case { name: "--target not WxH", code: 2, expect: "invalid value '4k' for '--target <WxH>'",
        setup: |sc| {
            let mut args = profile_edit(sc, |p| one_pass(p, ""));
            args.extend(s(&["--target", "4k"]));
            args
        } },
    Case { name: "check: target below pass 1", code: 1, expect: "is smaller than pass 1 (32x32",
        setup: |sc| check_edit(sc, |p| one_pass(p, "target = \"16x16\"")) },
    Case { name: "seed + batch overflows", code: 1, expect: "overflows the seed range",
        setup: |sc| profile_edit(sc, |p| p.replace("seed = 7", "seed = 9223372036854775807\nbatch = 2")) },
    Case { name: "batch 0", code: 1, expect: "must be at least 1",
        setup: |sc| profile_edit(sc, |p| p.replace("seed = 7", "seed = 7\nbatch = 0")) },
    Case { name: "batch too large", code: 1, expect: "batch = 100000 (at most 10000)",
        setup: |sc| profile_edit(sc, |p| p.replace("seed = 7", "seed = 7\nbatch = 100000")) },
    Case { name: "cfg out of range", code: 1, expect: "cfg must be between 0 and 100",
        setup: |sc| profile_edit(sc, |p| p.replace("cfg = 5.0", "cfg = 1000.0")) },
    Case { name: "subseed_strength out of range", code: 1, expect: "subseed_strength must be in [0, 1]",
        setup: |sc| profile_edit(sc, |p| p.replace("seed = 7", "seed = 7\nsubseed_strength = 1.5")) },
    Case { name: "seed_resize_from too large", code: 1, expect: "seed_resize_from must be 0 (off) or at most 16384 pixels",
        setup: |sc| profile_edit(sc, |p| p.replace("seed = 7", "seed = 7\nseed_resize_from_w = 100000")) },
    Case { name: "plms given the host's from_noise", code: 1, expect: "sampler `plms` has no option `from_noise` (it reads: none)",
        setup: |sc| profile_edit(sc, |p| p.replace("sampler = \"euler\"", "sampler = \"plms\"\nsampler_options = { from_noise = true }")) },
    Case { name: "clip_skip 0", code: 1, expect: "must be at least 1",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", "[model]\nclip_skip = 0")) },
    Case { name: "unknown device", code: 1, expect: "device `tpu` is not one of auto, cpu, cuda, cuda:N",
        setup: |sc| profile_edit(sc, |p| p.replace("device = \"cpu\"", "device = \"tpu\"")) },
    Case { name: "unknown dtype", code: 1, expect: "unknown variant `fp8`",
        setup: |sc| profile_edit(sc, |p| p.replace("device = \"cpu\"", "device = \"cpu\"\ndtype = \"fp8\"")) },
    Case { name: "unknown prediction", code: 1, expect: "unknown variant `x0`",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", "[model]\nprediction = \"x0\"")) },
    Case { name: "unknown sampler", code: 1, expect: "unknown sampler `eulr` — did you mean `euler`?",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "sampler = \"eulr\"") },
    Case { name: "unknown schedule", code: 1, expect: "unknown schedule `karas` — did you mean `karras`?",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "schedule = \"karas\"") },
    Case { name: "unknown upscaler", code: 1, expect: "unknown upscaler `lanczos9`",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "upscaler = \"lanczos9\"") },
    Case { name: "unknown sampler option", code: 1, expect: "sampler `euler` has no option `etaa`",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "sampler = \"euler\"\nsampler_options = { etaa = 1.0 }") },
    Case { name: "unknown patch", code: 1, expect: "unknown patch `freu` — did you mean `freeu`? available: deep_shrink, freeu, hypertile, tome",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "patches = [{ name = \"freu\" }]") },
    Case { name: "unknown patch option", code: 1, expect: "pass 2: patch `deep_shrink` has no option `blocks` (it reads: block, factor,",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "patches = [{ name = \"deep_shrink\", blocks = 3 }]") },
    Case { name: "patch option out of range", code: 1, expect: "option `factor` must be between 0.1 and 9, got 0",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "patches = [{ name = \"deep_shrink\", factor = 0 }]") },
    Case { name: "tome max_downsample not 1, 2, 4 or 8", code: 1, expect: "option `max_downsample` must be 1, 2, 4 or 8, got 3",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "patches = [{ name = \"tome\", max_downsample = 3 }]") },
    Case { name: "hypertile tile_size out of range", code: 1, expect: "option `tile_size` must be between 1 and 2048, got 0",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "patches = [{ name = \"hypertile\", tile_size = 0 }]") },
    Case { name: "empty output", code: 1, expect: "output is empty",
        setup: |sc| profile_edit(sc, |p| p.replace("output = \"out/img-{seed}-{n}.png\"", "output = \"\"")) },
    Case { name: "output not .png", code: 1, expect: "hiresfix writes PNG files — end the name in .png",
        setup: |sc| profile_edit(sc, |p| p.replace("img-{seed}-{n}.png", "img-{seed}-{n}.jpg")) },
    Case { name: "output under a file", code: 1, expect: "is a file, not a folder",
        setup: |sc| {
            sc.write("taken", "a file");
            profile_edit(sc, |p| p.replace("out/img-{seed}-{n}.png", "taken/img.png"))
        } },
    Case { name: "VAE override missing", code: 1, expect: "VAE not found",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", "[model]\nvae = \"no-such-vae.safetensors\"")) },
    Case { name: "seamless with vae tiling on", code: 1, expect: "`tiling = true` (seamless output) cannot use vae_tiling = \"on\"",
        setup: |sc| generate(sc, &tiny_ldm(), "tiling = true\nvae_tiling = \"on\"", "", "") },
    Case { name: "LoRA file missing", code: 1, expect: "pass 1: LoRA ",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", "[model]\nloras = [{ path = \"x.safetensors\" }]")) },
    Case { name: "LoRA tag naming no file", code: 1, expect: "pass 1: <lora:nope:0.7>: no LoRA file nope.safetensors (searched ",
        setup: |sc| {
            std::fs::create_dir_all(sc.path("loras")).unwrap();
            profile_edit(sc, |p| p.replace("a photo of a cat", "a photo of a cat <lora:nope:0.7>").replace("seed = 7", "seed = 7\nlora_dirs = [\"loras\"]"))
        } },
    Case { name: "LoRA tag without lora_dirs", code: 1, expect: "no lora_dirs set — add lora_dirs",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", "a photo of a cat <lora:nope>")) },
    Case { name: "unsupported prompt tag", code: 1, expect: "prompt tag <hypernet:x:1> is not supported",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", "a photo of a cat <hypernet:x:1>")) },
    Case { name: "merge and checkpoint together", code: 1, expect: "[model] has both checkpoint and merge",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", &format!("[model]\nmerge = [{{ checkpoint = \"{0}\", weight = 0.5 }}, {{ checkpoint = \"{0}\", weight = 0.5 }}]", tiny_ldm().display()))) },
    Case { name: "a pass switching to another family after a latent upscaler", code: 1, expect: "switch families through a pixel upscaler",
        setup: |sc| {
            let sdxl = repo().join("tests/data/sdxl-tiny/sdxl-tiny.safetensors");
            generate(sc, &tiny_ldm(), "", "", &format!("checkpoint = \"{}\"", sdxl.display()))
        } },
    Case { name: "merge of two families", code: 1, expect: "only checkpoints of one family merge",
        setup: |sc| {
            let sdxl = repo().join("tests/data/sdxl-tiny/sdxl-tiny.safetensors");
            let out = sc.path("merged.safetensors");
            s(&["merge", out.to_str().unwrap(), &format!("{}:0.5", tiny_ldm().display()), &format!("{}:0.5", sdxl.display())])
        } },
    Case { name: "merge input without a weight", code: 1, expect: "has no weight — write it as FILE:0.8",
        setup: |sc| {
            let out = sc.path("merged.safetensors");
            s(&["merge", out.to_str().unwrap(), tiny_ldm().to_str().unwrap(), tiny_ldm().to_str().unwrap()])
        } },
    Case { name: "--set out of range", code: 1, expect: "denoise must be in [0, 1]",
        setup: |sc| {
            let mut args = generate(sc, &tiny_ldm(), "", "", "");
            args.extend(s(&["--set", "pass.2.denoise=2"]));
            args
        } },
    Case { name: "--set without =", code: 1, expect: "expected key=value",
        setup: |sc| {
            let mut args = generate(sc, &tiny_ldm(), "", "", "");
            args.extend(s(&["--set", "nonsense"]));
            args
        } },
    Case { name: "--seed not a number", code: 2, expect: "invalid value 'abc' for '--seed <SEED>'",
        setup: |sc| {
            let mut args = generate(sc, &tiny_ldm(), "", "", "");
            args.extend(s(&["--seed", "abc"]));
            args
        } },
    Case { name: "unknown command", code: 2, expect: "unrecognized subcommand 'genrate'",
        setup: |_| s(&["genrate", "p.toml"]) },
    Case { name: "generate without a profile", code: 2, expect: "the following required arguments were not provided: <PROFILE>",
        setup: |_| s(&["generate"]) },
    Case { name: "check: denoise so small the schedule explodes", code: 1, expect: "builds a schedule of 2000000 steps (at most 10000)",
        setup: |sc| check_edit(sc, |p| p.replace("denoise = 0.5", "denoise = 0.000001")) },
    Case { name: "check: a 16384 px pass upscaled", code: 1, expect: "pass 2: 32768x32768 px is over the 16384 px limit",
        setup: |sc| check_edit(sc, |p| p.replace("width = 32\nheight = 32", "width = 16384\nheight = 16384")) },
    Case { name: "check: seed + batch overflows", code: 1, expect: "overflows the seed range",
        setup: |sc| check_edit(sc, |p| p.replace("seed = 7", "seed = 9223372036854775807\nbatch = 2")) },
    Case { name: "check: output not .png", code: 1, expect: "end the name in .png",
        setup: |sc| check_edit(sc, |p| p.replace("img-{seed}-{n}.png", "img-{seed}-{n}.jpg")) },
    // --- prompts ---
    Case { name: "prompt too long", code: 1, expect: "prompt is 30000 characters long (at most 20000)",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", &"x".repeat(30000))) },
    Case { name: "prompt of too many chunks", code: 1, expect: "the prompt is 69 chunks of 75 tokens (at most 64)",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", &"cat BREAK ".repeat(69))) },
    Case { name: "prompt editing of too many prompts", code: 1, expect: "pass 1 prompt: prompt `[a|b] [c|d|e] [f|g|h|i|j] [k|l|m|n|o|p|q]` makes 80 different prompts over 80 steps with its [from:to:when] and [a|b] (at most 64)",
        setup: |sc| check_edit(sc, |p| p.replace("a photo of a cat", "[a|b] [c|d|e] [f|g|h|i|j] [k|l|m|n|o|p|q]").replace("steps = 3", "steps = 80")) },
    Case { name: "prompt edit step past any number", code: 1, expect: "pass 1 negative: prompt edit step `1e999` is past any number",
        setup: |sc| profile_edit(sc, |p| p.replace("\"blurry\"", "\"[blurry:1e999]\"")) },
    Case { name: "LoRA tag with a bad weight", code: 1, expect: "<lora:detail:abc>: weight `abc` is not a number",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", "a photo of a cat <lora:detail:abc>")) },
    // --- replay ---
    Case { name: "replay of a file that is not a PNG", code: 1, expect: "is not a readable PNG",
        setup: |sc| s(&["replay", bytes_file(sc, "in.png", b"GIF89a").to_str().unwrap()]) },
    Case { name: "replay of a missing PNG", code: 1, expect: "cannot open",
        setup: |_| s(&["replay", "missing.png"]) },
    Case { name: "replay of a PNG without a profile", code: 1, expect: "has no embedded hiresfix profile",
        setup: |sc| s(&["replay", png_with(sc, &[("parameters", "a cat\nSteps: 20")]).to_str().unwrap()]) },
    Case { name: "replay of a malformed embedded profile", code: 1, expect: "(embedded profile)",
        setup: |sc| s(&["replay", png_with(sc, &[("hiresfix-profile", "seed = = 3")]).to_str().unwrap()]) },
    Case { name: "replay of a truncated PNG", code: 1, expect: "is not a readable PNG",
        setup: |sc| {
            let good = png_with(sc, &[("hiresfix-profile", "seed = 3")]);
            let bytes = std::fs::read(&good).unwrap();
            s(&["replay", bytes_file(sc, "cut.png", &bytes[..20]).to_str().unwrap()])
        } },
    // --- finish, grid, previews ---
    Case { name: "finish of an image whose sides are not multiples of 8", code: 1, expect: "is 2x2: both sides must be multiples of 8",
        setup: |sc| s(&["finish", png_with(sc, &[("parameters", "a cat\nSteps: 20")]).to_str().unwrap()]) },
    Case { name: "finish of a PNG with neither profile nor parameters", code: 1, expect: "carries no profile and no A1111 parameters: give one with --profile",
        setup: |sc| s(&["finish", png_with(sc, &[]).to_str().unwrap()]) },
    Case { name: "finish of a damaged stored latent", code: 1, expect: "its stored latent is damaged (pass); finish it as a plain image with --ignore-latent",
        setup: |sc| s(&["finish", png_with(sc, &[("hiresfix-profile", "seed = 3"), ("hiresfix-latent", "hiresfix-latent 1\npass x")]).to_str().unwrap()]) },
    Case { name: "finish of a latent from a newer hiresfix", code: 1, expect: "its stored latent has an unknown format",
        setup: |sc| s(&["finish", png_with(sc, &[("hiresfix-profile", "seed = 3"), ("hiresfix-latent", "hiresfix-latent 9")]).to_str().unwrap()]) },
    Case { name: "--passes beyond the profile", code: 1, expect: "--passes 5: the profile has 2 pass(es); give 1 to 2",
        setup: |sc| [generate(sc, &tiny_ldm(), "", "", ""), s(&["--passes", "5"])].concat() },
    Case { name: "--passes 0", code: 2, expect: "invalid value '0' for '--passes <PASSES>'",
        setup: |sc| [generate(sc, &tiny_ldm(), "", "", ""), s(&["--passes", "0"])].concat() },
    Case { name: "--preview in a missing folder", code: 1, expect: "--preview nowhere/p.png: folder nowhere does not exist — create it or give another path",
        setup: |sc| [generate(sc, &tiny_ldm(), "", "", ""), s(&["--preview", "nowhere/p.png"])].concat() },
    Case { name: "preview_every below 0", code: 1, expect: "preview_every must be 0 (no live previews) or a number of steps up to 65535",
        setup: |sc| generate(sc, &tiny_ldm(), "preview_every = -1", "", "") },
    Case { name: "grid axis without values", code: 1, expect: "--x cfg: expected key=v1,v2,...",
        setup: |_| s(&["grid", "p.toml", "--x", "cfg"]) },
    Case { name: "grid value out of range", code: 1, expect: "grid cell cfg=5, pass.2.denoise=7: --set: denoise must be in [0, 1]",
        setup: |sc| {
            let profile = scratch_profile(sc);
            s(&["grid", &profile, "--x", "cfg=5", "--y", "pass.2.denoise=0.5,7"])
        } },
    Case { name: "replay --to-profile of a PNG without parameters", code: 1, expect: "has no `parameters` text (A1111 / Forge PNG Info)",
        setup: |sc| s(&["replay", "--to-profile", png_with(sc, &[("hiresfix-profile", "seed = 3")]).to_str().unwrap()]) },
    // --- info ---
    Case { name: "info on a missing path", code: 1, expect: "no-such.safetensors not found",
        setup: |_| s(&["info", "no-such.safetensors"]) },
    Case { name: "info on a pickle", code: 1, expect: "pickle checkpoints are refused",
        setup: |sc| s(&["info", bytes_file(sc, "model.pt", b"\x80\x02.").to_str().unwrap()]) },
    // --- convert (pickle checkpoints) ---
    Case { name: "convert: a pickle that calls os.system", code: 1, expect: "model.pth: refused: the pickle calls os.system — only tensor state dicts convert; nothing was written",
        setup: |sc| convert_copy(sc, "tests/data/upscalers/models/evil-os-system.pth") },
    Case { name: "convert: a pickle that calls builtins.eval", code: 1, expect: "refused: the pickle calls builtins.eval",
        setup: |sc| convert_copy(sc, "tests/data/upscalers/models/evil-builtins-eval.pth") },
    Case { name: "convert: a state dict holding a dict", code: 1, expect: "refused: `config` is a dict, not a tensor",
        setup: |sc| convert_copy(sc, "tests/data/convert/nested.pth") },
    Case { name: "convert: an embedding of two terms", code: 1, expect: "refused: `string_to_param` holds 2 terms; an embedding file has one; nothing was written",
        setup: |sc| convert_copy(sc, "tests/data/embeddings/bad/two-terms.pt") },
    Case { name: "embedding_dirs folder missing", code: 1, expect: "embedding_dirs: folder",
        setup: |sc| generate(sc, &tiny_ldm(), "embedding_dirs = [\"no-such-folder\"]", "", "") },
    Case { name: "convert: a truncated checkpoint", code: 1, expect: "the file is truncated or damaged",
        setup: |sc| {
            let bytes = std::fs::read(repo().join("tests/data/upscalers/models/compact-x4.pth")).unwrap();
            s(&["convert", bytes_file(sc, "model.pth", &bytes[..4000]).to_str().unwrap()])
        } },
    Case { name: "convert: a file that is not a checkpoint", code: 1, expect: "not a PyTorch checkpoint",
        setup: |sc| s(&["convert", bytes_file(sc, "model.pth", b"GIF89a").to_str().unwrap()]) },
    Case { name: "convert: an output that exists", code: 1, expect: "model.safetensors exists — choose another name with -o or remove it",
        setup: |sc| {
            bytes_file(sc, "model.safetensors", b"keep");
            convert_copy(sc, "tests/data/upscalers/models/compact-x4.pth")
        } },
    Case { name: "convert: output not .safetensors", code: 1, expect: "end the name in .safetensors",
        setup: |sc| [convert_copy(sc, "tests/data/upscalers/models/compact-x4.pth"), s(&["-o", "model.bin"])].concat() },
    Case { name: "convert: a missing model", code: 1, expect: "nope.pth not found",
        setup: |_| s(&["convert", "nope.pth"]) },
    Case { name: "convert without a model", code: 2, expect: "the following required arguments were not provided: <MODEL>",
        setup: |_| s(&["convert"]) },
    // --- upscale (A1111 "Extras") ---
    Case { name: "upscale: an unknown upscaler", code: 1, expect: "--upscaler: unknown upscaler `4x-Nope`",
        setup: |sc| s(&["upscale", upscale_input(sc), "--upscaler", "4x-Nope"]) },
    Case { name: "upscale: a latent upscaler", code: 1, expect: "--upscaler: `Latent` upscales latents, not images",
        setup: |sc| s(&["upscale", upscale_input(sc), "--upscaler", "Latent"]) },
    Case { name: "upscale: scale 0", code: 1, expect: "in.png: --scale: 0 is not a factor above 0 and at most 16",
        setup: |sc| s(&["upscale", upscale_input(sc), "--upscaler", "Lanczos", "--scale", "0"]) },
    Case { name: "upscale: an output under 8 px", code: 1, expect: "a 2x2 image scaled by 2.000 is under 8 px a side",
        setup: |sc| s(&["upscale", png_with(sc, &[]).to_str().unwrap(), "--upscaler", "Lanczos"]) },
    Case { name: "upscale: a missing image", code: 1, expect: "IMAGE nope.png: cannot read it",
        setup: |_| s(&["upscale", "nope.png", "--upscaler", "Lanczos"]) },
    Case { name: "upscale: an image that is not a PNG, JPEG or WebP", code: 1, expect: "in.png is not a PNG, JPEG or WebP image",
        setup: |sc| s(&["upscale", bytes_file(sc, "in.png", b"GIF89a").to_str().unwrap(), "--upscaler", "Lanczos"]) },
    Case { name: "upscale: a pickle upscaler that calls os.system", code: 1,
        expect: "--upscaler: `marker-os-system.pth`: refused: the pickle calls os.system — hiresfix runs nothing a model file names",
        setup: |sc| {
            std::fs::create_dir_all(sc.path("ups")).unwrap();
            data_copy(sc, "tests/data/upscalers/pth/marker-os-system.pth", "ups/marker-os-system.pth");
            s(&["upscale", upscale_input(sc), "--upscaler", "marker-os-system", "--upscalers", "ups"])
        } },
    Case { name: "upscale: a pickle upscaler that calls builtins.eval", code: 1,
        expect: "--upscaler: `marker-eval.pth`: refused: the pickle calls builtins.eval",
        setup: |sc| {
            std::fs::create_dir_all(sc.path("ups")).unwrap();
            data_copy(sc, "tests/data/upscalers/pth/marker-eval.pth", "ups/marker-eval.pth");
            s(&["upscale", upscale_input(sc), "--upscaler", "marker-eval", "--upscalers", "ups"])
        } },
    Case { name: "upscale: an A1111 name without its file", code: 1,
        expect: "--upscaler: R-ESRGAN 4x+ needs RealESRGAN_x4plus.pth in ups (download https://github.com/xinntao/Real-ESRGAN/releases/download/v0.1.0/RealESRGAN_x4plus.pth)",
        setup: |sc| {
            std::fs::create_dir_all(sc.path("ups")).unwrap();
            s(&["upscale", upscale_input(sc), "--upscaler", "R-ESRGAN 4x+", "--upscalers", "ups"])
        } },
    Case { name: "upscale: SwinIR, another architecture", code: 1,
        expect: "--upscaler: SwinIR_4x is a SwinIR model (a Swin transformer), an architecture hiresfix does not run",
        setup: |sc| {
            std::fs::create_dir_all(sc.path("ups")).unwrap();
            s(&["upscale", upscale_input(sc), "--upscaler", "SwinIR 4x", "--upscalers", "ups"])
        } },
    Case { name: "hires upscaler: a pickle that calls os.system", code: 1,
        expect: "`marker-os-system.pth`: refused: the pickle calls os.system",
        setup: |sc| {
            std::fs::create_dir_all(sc.path("ups")).unwrap();
            data_copy(sc, "tests/data/upscalers/pth/marker-os-system.pth", "ups/marker-os-system.pth");
            generate(sc, &tiny_ldm(), "upscaler_dirs = [\"ups\"]", "", "upscaler = \"marker-os-system\"")
        } },
    Case { name: "upscale: an output that exists", code: 1, expect: "out.png exists — choose another name with -o or remove it",
        setup: |sc| {
            bytes_file(sc, "out.png", b"keep");
            s(&["upscale", upscale_input(sc), "--upscaler", "Lanczos", "-o", "out.png"])
        } },
    Case { name: "upscale: --upscalers not a folder", code: 1, expect: "--upscalers nope: not a folder",
        setup: |sc| s(&["upscale", upscale_input(sc), "--upscaler", "Lanczos", "--upscalers", "nope"]) },
    Case { name: "upscale without --upscaler", code: 2, expect: "the following required arguments were not provided: --upscaler <UPSCALER>",
        setup: |sc| s(&["upscale", upscale_input(sc)]) },
    // --- batch ---
    Case { name: "batch: --shard past the count", code: 1, expect: "shard 4/4: the index must be below the count (0-based)",
        setup: |_| s(&["batch", "jobs.toml", "--shard", "4/4"]) },
    Case { name: "batch: --shards without an index", code: 1, expect: "--shards 4 without a shard index: give --shard I/4",
        setup: |_| s(&["batch", "jobs.toml", "--shards", "4"]) },
    Case { name: "batch: a missing job file", code: 1, expect: "cannot read job file nope.toml",
        setup: |_| s(&["batch", "nope.toml"]) },
    Case { name: "batch: a job file without jobs", code: 1, expect: "no [[jobs]] table — add one",
        setup: |sc| {
            sc.write("base.toml", "seed = 1");
            let jobs = sc.write("jobs.toml", "profile = \"base.toml\"");
            s(&["batch", jobs.to_str().unwrap()])
        } },
    Case { name: "batch: a table key without values", code: 1, expect: "`seed` has no values",
        setup: |sc| {
            sc.write("base.toml", "seed = 1");
            let jobs = sc.write("jobs.toml", "profile = \"base.toml\"\n[[jobs]]\nseed = []");
            s(&["batch", jobs.to_str().unwrap()])
        } },
    Case { name: "batch --report of a missing folder", code: 1, expect: "cannot read nowhere",
        setup: |_| s(&["batch", "--report", "nowhere"]) },
    // --- serve (refused before it listens) ---
    Case { name: "serve: a non-loopback address without a token", code: 1, expect: "is reachable from other machines: give --token T (or --api-auth user:pass), or listen on 127.0.0.1",
        setup: |_| s(&["serve", "--listen", "0.0.0.0:0", "--model", tiny_ldm().to_str().unwrap()]) },
    Case { name: "serve: no model to serve", code: 1, expect: "no checkpoint to serve — give --models DIR",
        setup: |_| s(&["serve", "--listen", "127.0.0.1:0"]) },
    Case { name: "serve: --models is not a folder", code: 1, expect: "not a folder — give the folder holding your checkpoints",
        setup: |_| s(&["serve", "--listen", "127.0.0.1:0", "--models", "nowhere"]) },
    Case { name: "serve: --model names nothing", code: 1, expect: "--model nope: neither a model in --models",
        setup: |_| s(&["serve", "--listen", "127.0.0.1:0", "--model", "nope"]) },
    Case { name: "serve: --listen not an address", code: 1, expect: "--listen localhost: not an address:port (e.g. 127.0.0.1:7860)",
        setup: |_| s(&["serve", "--listen", "localhost"]) },
    Case { name: "serve: --defaults naming a checkpoint", code: 1, expect: "the model is chosen by --model / the request; remove [model] checkpoint",
        setup: |sc| {
            let defaults = sc.write("d.toml", "[model]\ncheckpoint = \"x.safetensors\"");
            s(&["serve", "--listen", "127.0.0.1:0", "--model", tiny_ldm().to_str().unwrap(), "--defaults", defaults.to_str().unwrap()])
        } },
    Case { name: "serve: --defaults with a stage plan", code: 1, expect: "target and stage_factor plan one request's passes",
        setup: |sc| {
            let defaults = sc.write("d.toml", "target = \"1024x1024\"");
            s(&["serve", "--listen", "127.0.0.1:0", "--model", tiny_ldm().to_str().unwrap(), "--defaults", defaults.to_str().unwrap()])
        } },
    // --- plugin folders ---
    Case { name: "the sampler plugin refused by its pin", code: 1, expect: "(refused plugin libhiresfix_samplers_kdiff.so: sha256",
        setup: |sc| generate(sc, &tiny_ldm(), "[plugin_sha256]\n\"libhiresfix_samplers_kdiff.so\" = \"00\"", "", "") },
    Case { name: "the model backend refused by its pin", code: 1, expect: "no model backend plugin was found; see `hiresfix plugins` (refused plugin libhiresfix_",
        setup: |sc| generate(sc, &tiny_ldm(), "[plugin_sha256]\n\"libhiresfix_sd.so\" = \"00\"\n\"libhiresfix_flow.so\" = \"00\"", "", "") },
    // --- a flow-matching model (the toy flow backend) ---
    Case { name: "sampler without a flow form on a flow model", code: 1, expect: "pass 2: sampler `ddim` has no form for the flow-matching model (toy_flow, flow (shift 3)); use sampler = \"euler\"",
        setup: |sc| {
            let (checkpoint, dir) = crate::flow_model::flow_toy(sc);
            let top = format!("plugin_dirs = [\"{}\"]", dir.display());
            generate(sc, &checkpoint, &top, "", "sampler = \"ddim\"")
        } },
    // --- SD 3.5 split files (the flow backend) ---
    Case { name: "SD3 transformer file without a VAE", code: 1, expect: "transformer.safetensors: no VAE in it — set `[model] vae` to the SD3 VAE file",
        setup: |sc| sd3_split(sc, "") },
    Case { name: "SD3 transformer file without text encoders", code: 1, expect: "transformer.safetensors: no CLIP-L text encoder — list the clip_l, clip_g (and t5xxl) files in `[model] text_encoders`",
        setup: |sc| sd3_split(sc, &format!("vae = \"{}\"", sd3_tiny("split/vae.safetensors").display())) },
    Case { name: "SD3 split files with one CLIP", code: 1, expect: "`[model] text_encoders` lists 1 CLIP files; SD3 takes two (clip_l and clip_g) and a t5xxl",
        setup: |sc| sd3_split(sc, &format!("vae = \"{}\"\ntext_encoders = [\"{}\"]", sd3_tiny("split/vae.safetensors").display(), sd3_tiny("split/clip_l.safetensors").display())) },
    Case { name: "SD3 t5_tokenizer that is not there", code: 1, expect: "nowhere: no T5 tokenizer there (`[model] t5_tokenizer`)",
        setup: |sc| {
            let profile = sc.write("p.toml", &tiny_profile(&sd3_tiny("sd3-tiny.safetensors"), "", "", "").replace("[model]\n", "[model]\nt5_tokenizer = \"nowhere\"\n"));
            s(&["generate", profile.to_str().unwrap()])
        } },
    Case { name: "SD3 t5 on an unknown device", code: 1, expect: "`[model] t5 = \"gpu\"`: expected \"cpu\" (T5 on the CPU, its output moved to the run's device) or \"device\" (the run's device, the default)",
        setup: |sc| sd3_split(sc, "t5 = \"gpu\"") },
    Case { name: "weight_dtype of an unknown value", code: 1, expect: "`[model] weight_dtype = \"fp4\"`: expected \"fp8_e4m3fn\" (a Flux transformer's linear weights held in fp8, half of bf16) or \"default\" (the run's dtype)",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]\n", "[model]\nweight_dtype = \"fp4\"\n")) },
    Case { name: "Flux LoRA on an SD 3.5 model", code: 1, expect: "LoRA `kohya.safetensors` is a Flux LoRA (double_blocks/single_blocks layers) but this model is SD 3.5 — use a LoRA made for SD 3.x",
        setup: |sc| {
            let lora = repo().join("tests/data/flux-tiny/dev/lora/kohya.safetensors");
            let loras = format!("[model]\nloras = [{{ path = \"{}\" }}]\n", lora.display());
            let profile = sc.write("p.toml", &tiny_profile(&sd3_tiny("sd3-tiny.safetensors"), "", "", "").replace("[model]\n", &loras));
            s(&["generate", profile.to_str().unwrap()])
        } },
    Case { name: "SD 1.x LoRA on a Flux model", code: 1, expect: "pass 1: LoRA `sd1-kohya.safetensors` is an SD 1.x/2.x LoRA (one text encoder: lora_te_) but this model is Flux.1-dev — use a LoRA made for Flux",
        setup: |sc| flux_with_lora(sc, "sd1-kohya") },
    Case { name: "SDXL LoRA on a Flux model", code: 1, expect: "pass 1: LoRA `sdxl-kohya.safetensors` is an SDXL LoRA (two text encoders or LDM UNet names) but this model is Flux.1-dev — use a LoRA made for Flux",
        setup: |sc| flux_with_lora(sc, "sdxl-kohya") },
    // --- round 3: weights, expansions before limits, bounded echoes ---
    Case { name: "LoRA weight NaN in the profile", code: 1, expect: "a LoRA's weight must be a number between -100 and 100",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", "[model]\nloras = [{ path = \"x.safetensors\", weight = nan }]")) },
    Case { name: "LoRA weight 1e308 in the profile", code: 1, expect: "a LoRA's weight must be a number between -100 and 100",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", "[model]\nloras = [{ path = \"x.safetensors\", weight = 1e308 }]")) },
    Case { name: "pass LoRA weight of -1e9", code: 1, expect: "a LoRA's weight must be a number between -100 and 100",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "loras = [{ path = \"x.safetensors\", weight = -1e9 }]") },
    Case { name: "merge weight inf in the profile", code: 1, expect: "a merge's weight must be a number between -100 and 100",
        setup: |sc| profile_edit(sc, |p| p.replace("[model]", "[model]\nmerge = [{ checkpoint = \"a.safetensors\", weight = inf }, { checkpoint = \"b.safetensors\", weight = 0.5 }]")) },
    Case { name: "merge command weight 1e300", code: 1, expect: ":1e300`: a weight must be a number between -100 and 100",
        setup: |sc| {
            let out = sc.path("merged.safetensors");
            s(&["merge", out.to_str().unwrap(), &format!("{}:1e300", tiny_ldm().display()), &format!("{}:0.5", tiny_ldm().display())])
        } },
    Case { name: "LoRA tag weight 1e308", code: 1, expect: "pass 1: <lora:detail:1e308>: weight 1e308: a weight must be a number between -100 and 100",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", "a photo of a cat <lora:detail:1e308>")) },
    Case { name: "LoRA tag UNet weight -500", code: 1, expect: "<lora:detail:0.5:-500>: weight -500: a weight must be",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", "a photo of a cat <lora:detail:0.5:-500>")) },
    Case { name: "LoRA tag weight NaN", code: 1, expect: "<lora:detail:nan>: weight `nan` is not a number",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", "a photo of a cat <lora:detail:nan>")) },
    Case { name: "65 LoRA tags in one prompt", code: 1, expect: "pass 1: 65 LoRAs (at most 64)",
        setup: |sc| {
            let tags: String = (0..65).map(|i| format!("<lora:l{i}:0.1> ")).collect();
            profile_edit(sc, |p| p.replace("a photo of a cat", &tags))
        } },
    Case { name: "deep_shrink block past the UNet", code: 1, expect: "deep_shrink: block = 30 does not exist — this model's UNet has input blocks 0 to",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "patches = [{ name = \"deep_shrink\", block = 30 }]") },
    Case { name: "check: deep_shrink block past the UNet", code: 1, expect: "pass 2: patch `deep_shrink` (",
        setup: |sc| check_edit(sc, |p| p.replace("denoise = 0.5", "denoise = 0.5\npatches = [{ name = \"deep_shrink\", block = 12 }]")) },
    Case { name: "patch option a tiny float", code: 1, expect: "option `factor` must be between 0.1 and 9, got 1e-300",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "patches = [{ name = \"deep_shrink\", factor = 1e-300 }]") },
    Case { name: "check: denoise 1e-300", code: 1, expect: "pass 2: denoise 1e-300 with 2 steps builds a schedule of 2e300 steps (at most 10000)",
        setup: |sc| check_edit(sc, |p| p.replace("denoise = 0.5", "denoise = 1e-300")) },
    Case { name: "a 1 MB sampler name", code: 1, expect: "pass 1: unknown sampler `sss",
        setup: |sc| generate(sc, &tiny_ldm(), "", &format!("sampler = \"{}\"", "s".repeat(1 << 20)), "") },
    Case { name: "a 1 MB checkpoint path", code: 1, expect: "not found",
        setup: |sc| generate(sc, Path::new(&"c".repeat(1 << 20)), "", "", "") },
    Case { name: "a 4 MB prompt of unclosed tags", code: 1, expect: "prompt is 4200000 characters long (at most 20000)",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", &"<lora:".repeat(700_000))) },
    Case { name: "batch: a job file of 4 billion jobs", code: 1, expect: "[[jobs]] table 1 brings the jobs to 4096000000 (at most 100000)",
        setup: |sc| {
            sc.write("base.toml", "seed = 1");
            let list = format!("[{}]", (1..=40).map(|v| v.to_string()).collect::<Vec<_>>().join(","));
            let table: String = ["seed", "cfg", "batch", "a", "b", "c"].iter().map(|k| format!("{k} = {list}\n")).collect();
            let jobs = sc.write("jobs.toml", &format!("profile = \"base.toml\"\n[[jobs]]\n{table}"));
            s(&["batch", jobs.to_str().unwrap(), "--shard", "0/1000"])
        } },
    Case { name: "batch: two tables over the limit together", code: 1, expect: "[[jobs]] table 2 brings the jobs to 160000 (at most 100000)",
        setup: |sc| {
            sc.write("base.toml", "seed = 1");
            let list = format!("[{}]", (1..=400).map(|v| v.to_string()).collect::<Vec<_>>().join(","));
            let table = format!("[[jobs]]\nseed = {list}\ncfg = [{}]\n", (1..=200).map(|v| v.to_string()).collect::<Vec<_>>().join(","));
            let jobs = sc.write("jobs.toml", &format!("profile = \"base.toml\"\n{table}{table}"));
            s(&["batch", jobs.to_str().unwrap()])
        } },
    Case { name: "prompt weight past fp32", code: 1, expect: "a prompt weight `(text:inf)` is past what the model's Float numbers hold",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", &format!("a photo of a (cat:{})", "9".repeat(45)))) },
    Case { name: "brackets nested 9000 deep", code: 1, expect: "prompt nests brackets 9000 deep (at most 100)",
        setup: |sc| profile_edit(sc, |p| p.replace("a photo of a cat", &format!("{}cat", "(".repeat(9000)))) },
    Case { name: "grid of 40 × 40 cells", code: 1, expect: "--x/--y: 40 × 40 = 1600 grid cells (at most 1000)",
        setup: |sc| {
            let profile = scratch_profile(sc);
            let values = (1..=40).map(|v| v.to_string()).collect::<Vec<_>>().join(",");
            s(&["grid", &profile, "--x", &format!("seed={values}"), "--y", &format!("cfg={values}")])
        } },
    Case { name: "img2img: init_image file missing", code: 1, expect: "init_image nope.png: cannot read it",
        setup: |sc| generate(sc, &tiny_ldm(), "", "init_image = \"nope.png\"", "") },
    Case { name: "img2img: init_image is not an image", code: 1, expect: "is not a PNG, JPEG or WebP image",
        setup: |sc| {
            sc.write("in.png", "these are words, not pixels");
            generate(sc, &tiny_ldm(), "", "init_image = \"in.png\"", "")
        } },
    Case { name: "img2img: a mask of another shape", code: 1, expect: "is 16x16 but init_image",
        setup: |sc| {
            std::fs::copy(repo().join("tests/data/img2img/init.png"), sc.path("in.png")).unwrap();
            grey_png(&sc.path("mask.png"), 16, 16);
            generate(sc, &tiny_ldm(), "", "init_image = \"in.png\"\nmask = \"mask.png\"", "")
        } },
    Case { name: "img2img: init_image on pass 2", code: 1, expect: "pass.2.init_image: img2img keys",
        setup: |sc| generate(sc, &tiny_ldm(), "", "", "init_image = \"in.png\"") },
    Case { name: "img2img: a mask without init_image", code: 1, expect: "pass.1.mask needs pass.1.init_image",
        setup: |sc| generate(sc, &tiny_ldm(), "", "mask = \"mask.png\"", "") },
    Case { name: "img2img: unknown inpainting_fill", code: 1, expect: "unknown variant `blur`",
        setup: |sc| generate(sc, &tiny_ldm(), "", "init_image = \"in.png\"\ninpainting_fill = \"blur\"", "") },
    Case { name: "img2img: only masked with a later pass", code: 1, expect: "pass.1.inpaint_full_res",
        setup: |sc| generate(sc, &tiny_ldm(), "", "init_image = \"in.png\"\nmask = \"m.png\"\ninpaint_full_res = true", "") },
];

/// A grey 8-bit PNG of `w` × `h` at `path`.
fn grey_png(path: &Path, w: u32, h: u32) {
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, w, h);
        encoder.set_color(png::ColorType::Grayscale);
        let mut writer = encoder.write_header().unwrap();
        writer
            .write_image_data(&vec![255u8; (w * h) as usize])
            .unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

fn run_case(case: &Case) -> Result<(), String> {
    let scratch = corpus::scratch("corpus", case.name);
    let run = corpus::run(&scratch, &(case.setup)(&scratch));
    corpus::verdict(case.name, run.problems(case.code, &[case.expect]), &run.err)
}

#[test]
fn every_bad_input_in_the_corpus_fails_in_one_clear_line_writing_nothing() {
    assert!(CASES.len() >= 60, "the corpus has {} cases", CASES.len());
    corpus::assert_all_hold(CASES.iter().map(run_case).collect());
}

#[test]
fn the_readme_lists_every_case_of_the_corpus() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let names = CASES
        .iter()
        .map(|c| c.name)
        .chain(crate::png_hostile::case_names())
        .chain(crate::files_hostile::case_names());
    let missing: Vec<&str> = names
        .filter(|name| !readme.contains(&format!("| {name} |")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's reliability table lacks: {missing:?}"
    );
}
