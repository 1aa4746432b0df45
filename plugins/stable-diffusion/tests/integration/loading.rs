//! Loading: random checkpoints round-trip, and bad files end in one clear error, not a panic.
use std::path::{Path, PathBuf};

use hiresfix_sd::{write_random_checkpoint, Conditioning, PromptInput, RandomModel, SdModel};
use tch::{Device, Kind, Tensor};

fn tiny_single_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/sd1-tiny/sd1-tiny.safetensors")
}

fn load(path: &Path) -> anyhow::Result<SdModel> {
    SdModel::load(path, None, Device::Cpu, Kind::Float)
}

fn load_error(path: &Path) -> String {
    match load(path) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// The tiny reference checkpoint with `edit` applied to its tensor list, written to `dir`.
fn edited_checkpoint(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) -> PathBuf {
    let mut tensors = Tensor::read_safetensors(tiny_single_file()).unwrap();
    edit(&mut tensors);
    let path = dir.join("edited.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn random_checkpoint_loads_back_with_the_config_it_was_written_with() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.safetensors");
    let random = RandomModel::tiny_sd1();
    write_random_checkpoint(&path, &random, 7).unwrap();
    let model = load(&path).unwrap();
    let info = model.info();
    assert_eq!(info.family.id, "sd1");
    assert_eq!(info.prediction.as_str(), "eps");
    assert_eq!(info.vae_scale_factor, 2);
    assert_eq!(info.latent_channels, 4);
    assert_eq!(info.scaling_factor, 0.18215);
    assert_eq!(info.config, random.config);
    assert_eq!(model.sigmas().len(), 1000);
    let image = model
        .decode(&Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu)))
        .unwrap();
    assert_eq!(image.size(), [1, 3, 16, 16]);
    assert!(bool::try_from(image.isfinite().all()).unwrap());
}

#[test]
fn random_checkpoint_is_deterministic_for_a_seed() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, seed| {
        let path = dir.path().join(name);
        write_random_checkpoint(&path, &RandomModel::tiny_sd1(), seed).unwrap();
        std::fs::read(path).unwrap()
    };
    let (a, b, c) = (
        write("a.safetensors", 3),
        write("b.safetensors", 3),
        write("c.safetensors", 4),
    );
    assert!(a == b, "same seed, different bytes");
    assert!(a != c, "different seeds, same bytes");
}

#[test]
fn unet_and_vae_accept_latent_sizes_that_are_not_powers_of_two() {
    let model = load(&tiny_single_file()).unwrap();
    let cond = model.encode_prompt("a cat", 1).unwrap();
    for (h, w) in [(15, 9), (12, 10), (1, 3)] {
        let x = Tensor::randn([2, 4, h, w], (Kind::Float, Device::Cpu));
        assert_eq!(
            model.denoise(&x, 3.5, &[&cond]).unwrap()[0].size(),
            [2, 4, h, w]
        );
        assert_eq!(model.decode(&x).unwrap().size(), [2, 3, 2 * h, 2 * w]);
    }
}

#[test]
fn half_and_bfloat16_run_close_to_fp32() {
    let fp32 = load(&tiny_single_file()).unwrap();
    let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let cond = fp32.encode_prompt("a cat", 1).unwrap();
    let reference = fp32.denoise(&x, 2.0, &[&cond]).unwrap().remove(0);
    for kind in [Kind::BFloat16, Kind::Half] {
        let model = SdModel::load(&tiny_single_file(), None, Device::Cpu, kind).unwrap();
        let cond = model.encode_prompt("a cat", 1).unwrap();
        assert_eq!(cond.context.kind(), kind);
        let out = model.denoise(&x, 2.0, &[&cond]).unwrap().remove(0);
        assert_eq!(
            out.kind(),
            Kind::Float,
            "results come back in the input's dtype"
        );
        let err = f64::try_from((&out - &reference).abs().max()).unwrap()
            / f64::try_from(reference.abs().max()).unwrap();
        assert!(err < 5e-2, "{kind:?}: relative error {err}");
    }
}

fn input(text: &str, negative: bool) -> PromptInput<'_> {
    PromptInput {
        text,
        negative,
        clip_skip: 1,
        width: 32,
        height: 32,
    }
}

/// max |a - b| / max |b|
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

#[test]
fn conds_of_different_chunk_counts_batch_like_separate_calls() {
    let model = load(&tiny_single_file()).unwrap();
    let cond = model.encode(&input(&"cat ".repeat(100), false)).unwrap();
    let uncond = model.encode(&input("", true)).unwrap();
    assert_eq!(cond.context.size(), [1, 154, 32]);
    assert_eq!(
        uncond.context.size(),
        [1, 77, 32],
        "A1111 does not pad the uncond"
    );
    let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let together = model.denoise(&x, 3.0, &[&uncond, &cond]).unwrap();
    let apart: Vec<Tensor> = [&uncond, &cond]
        .iter()
        .map(|c| model.denoise(&x, 3.0, &[*c]).unwrap().remove(0))
        .collect();
    for (t, a) in together.iter().zip(&apart) {
        let err = relative_error(t, a);
        assert!(
            err < 1e-5,
            "repeating the shorter context changed the result: {err}"
        );
    }
}

#[test]
fn cfg_rows_sharing_their_latent_match_each_conditioning_run_alone() {
    // The CFG call runs conv_in, the first ResBlock and the first self-attention once per
    // image (`UNetModel::forward_cfg`); each image's rows must still be what its
    // conditionings give alone, and the images must not mix.
    let model = load(&tiny_single_file()).unwrap();
    let cond = model.encode(&input("a red cat", false)).unwrap();
    let uncond = model.encode(&input("blurry", true)).unwrap();
    tch::manual_seed(3);
    let x = Tensor::randn([2, 4, 8, 8], (Kind::Float, Device::Cpu));
    let together = model.denoise(&x, 2.5, &[&uncond, &cond]).unwrap();
    for (j, c) in [&uncond, &cond].iter().enumerate() {
        for i in 0..2 {
            let alone = model
                .denoise(&x.narrow(0, i, 1), 2.5, &[*c])
                .unwrap()
                .remove(0);
            let err = relative_error(&together[j].narrow(0, i, 1), &alone);
            assert!(err < 1e-5, "image {i}, conditioning {j}: {err}");
        }
    }
    let other = relative_error(&together[1].narrow(0, 0, 1), &together[1].narrow(0, 1, 1));
    assert!(other > 1e-2, "the two images came out alike: {other}");
}

#[test]
fn an_emphasised_prompt_on_a_zero_mean_text_encoder_is_finite() {
    // A tiny model whose final LayerNorm has zero bias and unit weight: every token's output
    // has mean exactly 0, the case that made A1111's mean restoration divide 0 by 0.
    let dir = tempfile::tempdir().unwrap();
    let path = edited_checkpoint(dir.path(), |tensors| {
        for (key, t) in tensors.iter_mut() {
            if key.ends_with("final_layer_norm.bias") {
                *t = t.zeros_like();
            } else if key.ends_with("final_layer_norm.weight") {
                *t = t.ones_like();
            }
        }
    });
    let model = load(&path).unwrap();
    let plain = model.encode(&input("a cat", false)).unwrap();
    let mean = f64::try_from(plain.context.mean(Kind::Double)).unwrap();
    assert!(
        mean.abs() < 1e-7,
        "the setup should give a zero mean, got {mean}"
    );
    let weighted = model.encode(&input("a (cat:1.3), [dog]", false)).unwrap();
    assert!(bool::try_from(weighted.context.isfinite().all()).unwrap());
    let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let out = model.denoise(&x, 2.0, &[&weighted]).unwrap().remove(0);
    assert!(bool::try_from(out.isfinite().all()).unwrap());
}

#[test]
fn lora_tags_do_not_reach_the_text_encoder() {
    let model = load(&tiny_single_file()).unwrap();
    let plain = model.encode_prompt("a cat", 1).unwrap().context;
    let tagged = model
        .encode_prompt("a cat<lora:detail:0.5>", 1)
        .unwrap()
        .context;
    assert!(f64::try_from((plain - tagged).abs().max()).unwrap() == 0.0);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = load(&tiny_single_file()).unwrap();
    let cond = model.encode_prompt("a cat", 1).unwrap();
    let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let wrong_channels = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    assert!(format!(
        "{:#}",
        model.denoise(&wrong_channels, 1.0, &[&cond]).unwrap_err()
    )
    .contains("[1, 3, 8, 8]"));
    assert!(model.denoise(&x, f64::NAN, &[&cond]).is_err());
    let narrow = Conditioning {
        context: Tensor::zeros([1, 77, 16], (Kind::Float, Device::Cpu)),
        vector: None,
    };
    assert!(model.denoise(&x, 1.0, &[&narrow]).is_err());
    let sdxl_like = Conditioning {
        context: cond.context.shallow_clone(),
        vector: Some(Tensor::zeros([1, 8], (Kind::Float, Device::Cpu))),
    };
    assert!(model.denoise(&x, 1.0, &[&sdxl_like]).is_err());
    assert!(model
        .unet_output(
            &x,
            &Tensor::from_slice(&[1.0f32, 2.0, 3.0]),
            &cond.context,
            None
        )
        .is_err());
    assert!(format!("{:#}", model.encode_prompt("a", 0).unwrap_err()).contains("clip_skip"));
    assert!(model.encode_prompt("a", 3).is_err());
    assert!(model.encode_prompt("<lora:x:abc>", 1).is_err());
    assert!(model
        .decode(&Tensor::zeros([4, 8, 8], (Kind::Float, Device::Cpu)))
        .is_err());
}

#[test]
fn truncated_safetensors_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny_single_file()).unwrap();
    for (name, len) in [
        ("tiny.safetensors", 5),
        ("header.safetensors", 1000),
        ("data.safetensors", bytes.len() - 100),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, &bytes[..len]).unwrap();
        let err = load_error(&path);
        assert!(
            err.contains(name)
                && err.contains("not a valid safetensors file")
                && err.contains("truncated"),
            "{err}"
        );
        assert!(err.contains("re-download"), "{err}");
    }
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(
        &garbage,
        [&16u64.to_le_bytes()[..], b"not json at all!"].concat(),
    )
    .unwrap();
    assert!(load_error(&garbage).contains("not JSON"));
}

#[test]
fn pickle_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = dir.path().join("model.ckpt");
    std::fs::write(&ckpt, b"\x80\x02}q\x00.").unwrap();
    assert!(load_error(&ckpt).contains("pickle checkpoints are refused; convert to .safetensors"));
    let disguised = dir.path().join("zip.safetensors");
    std::fs::write(&disguised, b"PK\x03\x04rest of a torch zip").unwrap();
    assert!(load_error(&disguised).contains("pickle"));
    let raw = dir.path().join("raw.safetensors");
    std::fs::write(&raw, b"\x80\x02}q\x00(X\x05\x00\x00\x00state.").unwrap();
    assert!(load_error(&raw).contains("this is a pickle (torch.save) file"));
}

#[test]
fn missing_paths_name_the_path() {
    let err = load_error(Path::new("/nonexistent/model.safetensors"));
    assert!(
        err.contains("/nonexistent/model.safetensors") && err.contains("not found"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    assert!(load_error(dir.path()).contains("model_index.json"));
}

/// A file of zero tensors with these keys and shapes: enough for detection, which reads
/// headers only.
fn header_only(dir: &Path, name: &str, keys: &[(&str, &[i64])]) -> PathBuf {
    let path = dir.join(name);
    crate::files::zero_safetensors(&path, keys);
    path
}

#[test]
fn other_kinds_are_refused_by_name_never_loaded_as_a_wrong_family() {
    let dir = tempfile::tempdir().unwrap();
    // An inpainting UNet (9 input channels) loads (inpaint.rs); instruct-pix2pix (8) not.
    let pix2pix = edited_checkpoint(dir.path(), |tensors| {
        let conv = tensors
            .iter_mut()
            .find(|(k, _)| k == "model.diffusion_model.input_blocks.0.0.weight")
            .unwrap();
        conv.1 = Tensor::zeros([32, 8, 3, 3], (Kind::Float, Device::Cpu));
    });
    let sd3 = header_only(
        dir.path(),
        "sd3.safetensors",
        &[(
            "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight",
            &[6, 2],
        )],
    );
    let lora = header_only(
        dir.path(),
        "lora.safetensors",
        &[(
            "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight",
            &[4, 8],
        )],
    );
    let vae = header_only(
        dir.path(),
        "vae.safetensors",
        &[("encoder.down.0.block.0.conv1.weight", &[4, 4, 3, 3])],
    );
    let unknown = header_only(dir.path(), "unknown.safetensors", &[("some.weight", &[2])]);
    for (path, expected) in [
        (
            &pix2pix,
            "not supported yet: a Stable Diffusion 1.x instruct-pix2pix checkpoint (8 input channels)",
        ),
        (
            &sd3,
            "not supported: a Stable Diffusion 3 / 3.5 (MMDiT) checkpoint",
        ),
        (&lora, "a LoRA, not a checkpoint"),
        (&vae, "a VAE, not a checkpoint — set it as [model] vae"),
        (
            &unknown,
            "not a recognised Stable Diffusion checkpoint (no text encoder)",
        ),
    ] {
        let err = load_error(path);
        assert!(err.contains(expected), "{}: {err}", path.display());
        assert!(
            err.contains(&path.display().to_string()) && !err.contains('\n'),
            "{err}"
        );
    }
}

#[test]
fn a_header_length_with_low_byte_0x80_is_read_as_safetensors_not_pickle() {
    // The first 8 bytes of a safetensors file are its header length; 1 in 32 valid files has
    // 0x80 there, pickle's PROTO opcode. Pad the header (metadata) until the length ends in 0x80.
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(tiny_single_file()).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let mut padding = 0;
    let (len, text) = loop {
        let mut h = header.clone();
        h["__metadata__"] = serde_json::json!({ "pad": "x".repeat(padding) });
        let text = serde_json::to_vec(&h).unwrap();
        if text.len() % 256 == 0x80 {
            break (text.len() as u64, text);
        }
        padding += 1;
    };
    let path = dir.path().join("model.safetensors");
    std::fs::write(&path, [&len.to_le_bytes()[..], &text, data].concat()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap()[0], 0x80);
    let model = load(&path).unwrap();
    assert_eq!(model.info().family.id, "sd1");
}

#[test]
fn a_misshaped_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let key = "model.diffusion_model.output_blocks.0.0.in_layers.2.weight";
    let path = edited_checkpoint(dir.path(), |tensors| {
        let entry = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
        entry.1 = Tensor::zeros([64, 128, 1, 1], (Kind::Float, Device::Cpu));
    });
    let err = load_error(&path);
    assert!(
        err.contains(key) && err.contains("[64, 128, 1, 1]") && err.contains("[64, 128, 3, 3]"),
        "{err}"
    );
}

#[test]
fn a_missing_tensor_is_named_and_extra_ema_tensors_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let key = "first_stage_model.decoder.up.0.block.1.conv1.bias";
    let path = edited_checkpoint(dir.path(), |tensors| {
        tensors.retain(|(k, _)| k != key);
        tensors.push(("model_ema.decay".into(), Tensor::from(0.9999f32)));
    });
    let err = load_error(&path);
    assert!(err.contains(key) && err.contains("missing"), "{err}");
    let ema_only = edited_checkpoint(dir.path(), |tensors| {
        tensors.push((
            "model_ema.diffusion_modelinput_blocks00weight".into(),
            Tensor::zeros([3], (Kind::Float, Device::Cpu)),
        ));
    });
    assert!(load(&ema_only).is_ok());
}

#[test]
fn inspect_reads_family_and_architecture_from_headers_only() {
    let found = hiresfix_sd::inspect(&tiny_single_file(), true).unwrap();
    assert_eq!(found.family.id, "sd1");
    assert_eq!(found.prediction.map(|p| p.as_str()), Some("eps"));
    assert_eq!(found.stored_dtype, "F32");
    assert_eq!(found.config.vae.spatial_factor(), 2);
    assert_eq!(found.config.unet.channel_mult, [1, 2, 2]);
    assert_eq!(found.config.unet.transformer_depth, [1, 1, 0]);
    assert_eq!(
        found.file_bytes,
        std::fs::metadata(tiny_single_file()).unwrap().len()
    );
}

#[test]
fn a_loaded_model_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<SdModel>();
}

/// Sum of the element counts of the parameters under `prefix`.
fn held(model: &SdModel, prefix: &str) -> usize {
    let vars = model.var_store().variables();
    vars.iter()
        .filter(|(k, _)| k.starts_with(prefix))
        .map(|(_, v)| v.numel())
        .sum()
}

#[test]
fn a_model_released_for_decode_frees_all_but_the_decoder_and_decodes_the_same() {
    let model = load(&tiny_single_file()).unwrap();
    tch::manual_seed(3);
    let latent = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let before = model.decode(&latent).unwrap();
    let cond = model.encode(&input("a cat", false)).unwrap();
    let parts = [
        "model.diffusion_model.",
        "cond_stage_model.",
        "first_stage_model.encoder.",
        "first_stage_model.decoder.",
        "first_stage_model.post_quant_conv.",
    ];
    for part in parts {
        assert!(held(&model, part) > 0, "{part} empty before the release");
    }
    model.release(host_api::backend::release::ALL_BUT_DECODER);
    for part in &parts[..3] {
        assert_eq!(held(&model, part), 0, "{part} still held");
    }
    for part in &parts[3..] {
        assert!(held(&model, part) > 0, "{part} released");
    }
    assert!(model.decode(&latent).unwrap().equal(&before));
    let refusals = [
        model.encode(&input("a cat", false)).err(),
        model.denoise(&latent, 1.0, &[&cond]).err(),
        model.encode_image(&before).err(),
        model.set_loras(&[]).err(),
    ];
    for refusal in refusals {
        let message = format!("{:#}", refusal.expect("refused after the release"));
        assert!(
            message.contains("freed for the run's last steps"),
            "{message}"
        );
    }
    // A per-pass VAE still swaps in: the same weights from the diffusers folder decode alike.
    let folder = tiny_single_file().with_file_name("diffusers").join("vae");
    model.set_vae(Some(&folder)).unwrap();
    let swapped = model.decode(&latent).unwrap();
    let diff = f64::try_from((&swapped - &before).abs().max()).unwrap();
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn released_text_encoders_leave_the_unet_running_and_refuse_new_prompts() {
    let model = load(&tiny_single_file()).unwrap();
    let cond = model.encode(&input("a cat", false)).unwrap();
    tch::manual_seed(4);
    let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let before = model.denoise(&x, 2.0, &[&cond]).unwrap();
    model.release(host_api::backend::release::TEXT_ENCODERS);
    assert_eq!(held(&model, "cond_stage_model."), 0);
    assert!(held(&model, "model.diffusion_model.") > 0);
    let after = model.denoise(&x, 2.0, &[&cond]).unwrap();
    assert!(after[0].equal(&before[0]));
    let message = format!("{:#}", model.encode(&input("a dog", false)).unwrap_err());
    assert!(message.contains("freed"), "{message}");
    // The set it runs with stays; a new one would restore or add text-encoder weights.
    assert!(model.set_loras(&[]).unwrap().is_empty());
    let unet_only = hiresfix_sd::lora::LoraSpec {
        path: "unused.safetensors".into(),
        name: "unused".into(),
        te: 0.0,
        unet: 1.0,
    };
    let message = format!("{:#}", model.set_loras(&[unet_only]).unwrap_err());
    assert!(message.contains("freed"), "{message}");
}
