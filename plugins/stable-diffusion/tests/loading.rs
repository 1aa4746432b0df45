//! Loading: random checkpoints round-trip, and bad files end in one clear error, not a panic.
use std::path::{Path, PathBuf};

use hiresfix_sd::{write_random_checkpoint, Sd1Model, TinySd1Config};
use tch::{Device, Kind, Tensor};

fn tiny_single_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/sd1-tiny/sd1-tiny.safetensors")
}

fn load(path: &Path) -> anyhow::Result<Sd1Model> {
    Sd1Model::load(path, None, Device::Cpu, Kind::Float)
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
    let cfg = TinySd1Config::default();
    write_random_checkpoint(&path, &cfg, 7).unwrap();
    let model = load(&path).unwrap();
    let info = model.info();
    assert_eq!(info.family, "sd1");
    assert_eq!(info.prediction.as_str(), "eps");
    assert_eq!(info.vae_scale_factor, 2);
    assert_eq!(info.latent_channels, 4);
    assert_eq!(info.scaling_factor, 0.18215);
    assert_eq!(info.text_hidden_size, 32);
    assert_eq!(info.config.clip, cfg.clip);
    assert_eq!(info.config.unet, cfg.unet);
    assert_eq!(info.config.vae, cfg.vae);
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
        write_random_checkpoint(&path, &TinySd1Config::default(), seed).unwrap();
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
    let context = model.encode_prompt("a cat", 1).unwrap();
    for (h, w) in [(15, 9), (12, 10), (1, 3)] {
        let x = Tensor::randn([2, 4, h, w], (Kind::Float, Device::Cpu));
        assert_eq!(
            model.denoise(&x, 3.5, &context).unwrap().size(),
            [2, 4, h, w]
        );
        assert_eq!(model.decode(&x).unwrap().size(), [2, 3, 2 * h, 2 * w]);
    }
}

#[test]
fn half_and_bfloat16_run_close_to_fp32() {
    let fp32 = load(&tiny_single_file()).unwrap();
    let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let context = fp32.encode_prompt("a cat", 1).unwrap();
    let reference = fp32.denoise(&x, 2.0, &context).unwrap();
    for kind in [Kind::BFloat16, Kind::Half] {
        let model = Sd1Model::load(&tiny_single_file(), None, Device::Cpu, kind).unwrap();
        let context = model.encode_prompt("a cat", 1).unwrap();
        assert_eq!(context.kind(), kind);
        let out = model.denoise(&x, 2.0, &context).unwrap();
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

#[test]
fn long_prompts_and_their_negative_share_a_chunk_count() {
    let model = load(&tiny_single_file()).unwrap();
    let (cond, uncond) = model.encode_pair(&"cat ".repeat(100), "", 1).unwrap();
    assert_eq!(cond.size(), [1, 154, 32]);
    assert_eq!(uncond.size(), [1, 154, 32]);
    let empty = model.encode_prompt("", 1).unwrap();
    let tail = uncond.narrow(1, 77, 77);
    assert!(
        f64::try_from((tail - empty).abs().max()).unwrap() < 1e-6,
        "padding is the empty prompt's chunk"
    );
}

#[test]
fn lora_tags_do_not_reach_the_text_encoder() {
    let model = load(&tiny_single_file()).unwrap();
    let plain = model.encode_prompt("a cat", 1).unwrap();
    let tagged = model.encode_prompt("a cat<lora:detail:0.5>", 1).unwrap();
    assert!(f64::try_from((plain - tagged).abs().max()).unwrap() == 0.0);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = load(&tiny_single_file()).unwrap();
    let context = model.encode_prompt("a cat", 1).unwrap();
    let x = Tensor::randn([1, 4, 8, 8], (Kind::Float, Device::Cpu));
    let wrong_channels = Tensor::randn([1, 3, 8, 8], (Kind::Float, Device::Cpu));
    assert!(format!(
        "{:#}",
        model.denoise(&wrong_channels, 1.0, &context).unwrap_err()
    )
    .contains("[1, 3, 8, 8]"));
    assert!(model.denoise(&x, f64::NAN, &context).is_err());
    assert!(model
        .denoise(
            &x,
            1.0,
            &Tensor::zeros([1, 77, 16], (Kind::Float, Device::Cpu))
        )
        .is_err());
    assert!(model
        .eps(&x, &Tensor::from_slice(&[1.0f32, 2.0, 3.0]), &context)
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

#[test]
fn sdxl_and_sd2_key_sets_are_detected_and_refused_as_not_supported_yet() {
    let dir = tempfile::tempdir().unwrap();
    let t = || Tensor::zeros([2, 2], (Kind::Float, Device::Cpu));
    for (family, text_key) in [
        (
            "sdxl",
            "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight",
        ),
        ("sd2", "cond_stage_model.model.token_embedding.weight"),
    ] {
        let path = dir.path().join(format!("{family}.safetensors"));
        Tensor::write_safetensors(
            &[
                ("model.diffusion_model.input_blocks.0.0.weight", t()),
                (text_key, t()),
            ],
            &path,
        )
        .unwrap();
        let err = load_error(&path);
        assert!(
            err.contains(&format!("family {family} is not supported yet")),
            "{err}"
        );
    }
    let unknown = dir.path().join("unknown.safetensors");
    Tensor::write_safetensors(&[("some.weight", t())], &unknown).unwrap();
    assert!(load_error(&unknown).contains("not a recognised Stable Diffusion checkpoint"));
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
    let found = hiresfix_sd::inspect(&tiny_single_file()).unwrap();
    assert_eq!(found.family.map(|f| f.id), Some("sd1"));
    assert_eq!(found.stored_dtype, "F32");
    let config = found.config.unwrap();
    assert_eq!(config.vae.spatial_factor(), 2);
    assert_eq!(config.unet.channel_mult, [1, 2, 2]);
    assert_eq!(config.unet.transformer_depth, [1, 1, 0]);
    let dir = tempfile::tempdir().unwrap();
    let sdxl = dir.path().join("sdxl.safetensors");
    let t = Tensor::zeros([2], (Kind::Float, Device::Cpu));
    Tensor::write_safetensors(
        &[
            ("model.diffusion_model.input_blocks.0.0.weight", &t),
            ("conditioner.embedders.0.x", &t),
        ],
        &sdxl,
    )
    .unwrap();
    let other = hiresfix_sd::inspect(&sdxl).unwrap();
    assert_eq!(other.family.map(|f| f.id), Some("sdxl"));
    assert!(other.config.is_none());
}

#[test]
fn a_loaded_model_can_move_between_threads() {
    fn assert_send<T: Send>() {}
    assert_send::<Sd1Model>();
}
