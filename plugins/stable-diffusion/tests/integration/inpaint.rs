//! Inpainting checkpoints (UNet with 9 input channels: latent, mask, masked image): detected
//! from both layouts as their family, the image conditioning of `set_concat` joined after the
//! scaled latent in every UNet call (against diffusers + k-diffusion, and A1111's masked
//! img2img run), refused conditioning, LoRA and merge. References:
//! scripts/make_inpaint_reference.py (tests/data/sd1-inpaint-tiny).
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::{assert_close, TOLERANCE};
use hiresfix_sd::lora::LoraSpec;
use hiresfix_sd::merge::{merge, Recipe};
use hiresfix_sd::plugin::{Sd1, SdBackend, Sdxl};
use hiresfix_sd::{Conditioning, SdModel};
use host_api::{keys, Backend, BackendTools, LoadRequest, OptionEntry, OptionValue};
use tch::{Device, Kind, Tensor};

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(rel)
}

/// The single file and the diffusers folder of the tiny inpainting model.
fn formats() -> [PathBuf; 2] {
    [
        data("sd1-inpaint-tiny/sd1-inpaint-tiny.safetensors"),
        data("sd1-inpaint-tiny/diffusers"),
    ]
}

fn reference() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data("sd1-inpaint-tiny/reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

/// sd1-tiny's prompt and negative conditioning (the inpainting model shares its text
/// encoder): (cond, uncond).
fn texts() -> (Conditioning, Conditioning) {
    let r: HashMap<String, Tensor> =
        Tensor::read_safetensors(data("sd1-tiny/reference.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
    let c = |k: &str| Conditioning::from_tensors(&[r[k].shallow_clone()]).unwrap();
    (c("text.prompt"), c("text.negative"))
}

fn load(path: &Path) -> SdModel {
    SdModel::load(path, None, Device::Cpu, Kind::Float).unwrap()
}

fn error_of<T>(result: anyhow::Result<T>) -> String {
    match result {
        Ok(_) => panic!("succeeded but should not"),
        Err(e) => format!("{e:#}"),
    }
}

fn number(extra: &[OptionEntry], key: &str) -> Option<f64> {
    extra
        .iter()
        .find(|e| e.key.as_str() == key)
        .map(|e| match e.value {
            OptionValue::Number(n) => n,
            ref other => panic!("{key} is {other:?}"),
        })
}

fn request(checkpoint: &Path) -> LoadRequest {
    LoadRequest {
        checkpoint: checkpoint.to_string_lossy().as_ref().into(),
        vae: None.into(),
        device: "cpu".into(),
        dtype: "fp32".into(),
        vae_tiling: "auto".into(),
        vae_tile_size: 0,
        vae_tile_overlap: 0,
        prediction: "".into(),
        seamless: false,
        merge: Vec::new().into(),
        options: Vec::new().into(),
    }
}

/// A copy of the single file with its input convolution `[32, channels, 3, 3]`.
fn with_input_channels(dir: &Path, channels: i64) -> PathBuf {
    let mut tensors = Tensor::read_safetensors(&formats()[0]).unwrap();
    for (key, t) in tensors.iter_mut() {
        if key == "model.diffusion_model.input_blocks.0.0.weight" {
            *t = Tensor::zeros([32, channels, 3, 3], (Kind::Half, Device::Cpu));
        }
    }
    let path = dir.join(format!("unet-{channels}.safetensors"));
    Tensor::write_safetensors(&tensors, &path).unwrap();
    path
}

#[test]
fn inpainting_checkpoints_are_detected_from_both_layouts_with_five_concat_channels() {
    for path in formats() {
        let shown = path.display();
        let found = hiresfix_sd::inspect(&path, true).unwrap();
        assert_eq!(found.family.id, "sd1", "{shown}");
        assert_eq!(found.config.unet.in_channels, 9, "{shown}");
        assert_eq!(found.config.concat_channels(), 5, "{shown}");
        // `hiresfix info`'s facts: the family line says inpainting, extra has the key.
        let info = <SdBackend<Sd1> as BackendTools>::inspect(&path, true).unwrap();
        assert_eq!(info.family.as_str(), "sd1");
        assert_eq!(info.family_name.as_str(), "Stable Diffusion 1.x inpainting");
        assert_eq!(number(&info.extra, keys::CONCAT_CHANNELS), Some(5.0));
        // A loaded model says so too (ModelInfo.extra), through the plugin's Backend.
        let backend = <SdBackend<Sd1> as Backend>::load(&request(&path)).unwrap();
        let model_info = backend.info();
        assert_eq!(number(&model_info.extra, keys::CONCAT_CHANNELS), Some(5.0));
        assert_eq!(model_info.latent_channels, 4);
        assert_eq!(model_info.prediction.as_str(), "eps");
        assert!(<SdBackend<Sd1> as Backend>::detect(&path)
            .unwrap()
            .is_some());
    }
    // A text-to-image checkpoint: 0, and its family name unchanged.
    let plain = data("sd1-tiny/sd1-tiny.safetensors");
    let info = <SdBackend<Sd1> as BackendTools>::inspect(&plain, true).unwrap();
    assert_eq!(number(&info.extra, keys::CONCAT_CHANNELS), Some(0.0));
    assert_eq!(info.family_name.as_str(), "Stable Diffusion 1.x");
}

/// `check`'s memory table reads an inpainting checkpoint: its input convolution's extra
/// channels count in the weights and in the UNet call's first step.
#[test]
fn the_memory_estimate_counts_the_input_channels() {
    let estimate = |path: &Path| {
        let request = host_api::MemoryRequest {
            checkpoint: path.to_string_lossy().as_ref().into(),
            width: 512,
            height: 512,
            unet_batch: 2,
            dtype: "fp32".into(),
            device: "cpu".into(),
            vae_tile_size: 0,
            vae_tile_overlap: 0,
            options: Vec::new().into(),
        };
        <SdBackend<Sd1> as BackendTools>::estimate_memory(&request).unwrap()
    };
    let inpaint = estimate(&formats()[0]);
    let plain = estimate(&data("sd1-tiny/sd1-tiny.safetensors"));
    // 32 × 5 × 3 × 3 more conv_in weights, in fp32.
    assert_eq!(inpaint.weights - plain.weights, 32 * 5 * 9 * 4);
    assert!(inpaint.unet >= plain.unet, "{inpaint:?} {plain:?}");
}

#[test]
fn one_unet_call_with_image_conditioning_matches_diffusers_from_both_layouts() {
    let r = reference();
    let (cond, uncond) = texts();
    let (x, concat) = (&r["unet.x"], &r["unet.concat"]);
    let sigma = f64::try_from(&r["unet.sigma"].get(0)).unwrap();
    for path in formats() {
        let label = path.file_name().unwrap().to_string_lossy().into_owned();
        let model = load(&path);
        model.set_concat(Some(concat)).unwrap();
        // Two images, CFG's two conditionings in one batched call.
        let out = model.denoise(x, sigma, &[&uncond, &cond]).unwrap();
        assert_close(
            "denoised uncond",
            &label,
            &out[0],
            &r["unet.denoised.uncond"],
            TOLERANCE,
        );
        assert_close(
            "denoised cond",
            &label,
            &out[1],
            &r["unet.denoised.cond"],
            TOLERANCE,
        );
        // One conditioning over two images (run image by image).
        let one = model.denoise(x, sigma, &[&cond]).unwrap();
        assert_close(
            "one cond, 2 images",
            &label,
            &one[0],
            &r["unet.denoised.cond"],
            TOLERANCE,
        );
        // One image's conditioning given as [1, 5, h, w] for a one-image batch.
        model.set_concat(Some(&concat.narrow(0, 1, 1))).unwrap();
        let second = model
            .denoise(&x.narrow(0, 1, 1), sigma, &[&uncond, &cond])
            .unwrap();
        let want = r["unet.denoised.cond"].narrow(0, 1, 1);
        assert_close("image 2 alone", &label, &second[1], &want, TOLERANCE);
        // The conditioning is used: another mask gives another result.
        model
            .set_concat(Some(&(concat.narrow(0, 1, 1) * 0.0)))
            .unwrap();
        let other = model.denoise(&x.narrow(0, 1, 1), sigma, &[&cond]).unwrap();
        assert!(crate::common::relative_error(&other[0], &want) > 1e-3);
    }
}

/// k-diffusion `sample_euler` with A1111's CFG and the latent mask blended into `denoised`
/// after every call and into the result (`sd_samplers_cfg_denoiser.py`, `processing.py`).
fn masked_euler(
    model: &SdModel,
    mut x: Tensor,
    sigmas: &[f64],
    (cond, uncond): (&Conditioning, &Conditioning),
    (init, nmask): (&Tensor, &Tensor),
) -> Tensor {
    let keep = 1.0 - nmask;
    for pair in sigmas.windows(2) {
        let (sigma, next) = (pair[0], pair[1]);
        let out = model.denoise(&x, sigma, &[uncond, cond]).unwrap();
        let denoised = &out[0] + (&out[1] - &out[0]) * 5.0;
        let denoised = denoised * nmask + init * &keep;
        let d = (&x - denoised) / sigma;
        x = &x + d * (next - sigma);
    }
    x * nmask + init * keep
}

#[test]
fn a1111_masked_img2img_with_the_inpainting_model_matches_its_reference() {
    let r = reference();
    let (cond, uncond) = texts();
    let model = load(&formats()[0]);
    let sigmas = Vec::<f64>::try_from(r["inpaint.sigmas"].to_kind(Kind::Double)).unwrap();
    let init = &r["inpaint.init_latent"];
    // The init latent is the VAE's posterior mean of init.png (as [-1, 1] floats).
    let image = &r["inpaint.image"];
    assert_close(
        "init latent",
        "VAE",
        &model.encode_image(image).unwrap(),
        init,
        TOLERANCE,
    );
    for tag in ["w1", "w05"] {
        model
            .set_concat(Some(&r[&format!("inpaint.concat.{tag}")]))
            .unwrap();
        let start = init + &r["inpaint.noise"] * sigmas[0];
        let nmask = &r["inpaint.nmask"];
        let out = masked_euler(&model, start, &sigmas, (&cond, &uncond), (init, nmask));
        assert_close(
            "inpainted latent",
            tag,
            &out,
            &r[&format!("inpaint.latent.{tag}")],
            TOLERANCE,
        );
    }
    // The two mask weights give different results (the reference can tell them apart).
    let diff = crate::common::relative_error(&r["inpaint.latent.w1"], &r["inpaint.latent.w05"]);
    assert!(diff > 1e-2, "{diff}");
}

/// The bound where the image conditioning encodes a constant image (see below).
const CONSTANT_IMAGE_TOLERANCE: f64 = 5e-3;

#[test]
fn txt2img_on_the_inpainting_model_with_a1111s_conditioning_matches_its_reference() {
    let r = reference();
    let (cond, uncond) = texts();
    let model = load(&formats()[1]);
    let sigmas = Vec::<f64>::try_from(r["txt2img.sigmas"].to_kind(Kind::Double)).unwrap();
    // A1111's txt2img_image_conditioning: a ones mask and the latent of a grey image (0.5 in
    // [0, 1], 0 in the VAE's [-1, 1]).
    let grey = Tensor::zeros([1, 3, 32, 32], (Kind::Float, Device::Cpu));
    let latent = model.encode_image(&grey).unwrap();
    let concat = Tensor::cat(&[latent.ones_like().narrow(1, 0, 1), latent], 1);
    // A constant grey image through the random VAE: GroupNorm divides by the near-zero
    // variance of an almost constant field, which magnifies fp32 rounding (measured 2.5e-3;
    // the masked run's image conditioning matches within 1e-4).
    assert_close(
        "txt2img concat",
        "A1111",
        &concat,
        &r["txt2img.concat"],
        CONSTANT_IMAGE_TOLERANCE,
    );
    model.set_concat(Some(&concat)).unwrap();
    let start = &r["inpaint.noise"] * sigmas[0];
    let out = crate::common::euler(&model, start, &sigmas, &cond, &uncond, 5.0);
    assert_close(
        "txt2img latent",
        "diffusers",
        &out,
        &r["txt2img.latent"],
        CONSTANT_IMAGE_TOLERANCE,
    );
}

#[test]
fn missing_or_misshaped_image_conditioning_is_one_line_naming_the_fix() {
    let r = reference();
    let (cond, _) = texts();
    let path = &formats()[0];
    let model = load(path);
    let x = r["unet.x"].narrow(0, 0, 1);
    let one_line = |e: &str| assert!(!e.contains('\n') && e.len() <= 300, "{e}");
    // None set: the model needs an init image and a mask; the message names the file.
    let e = error_of(model.denoise(&x, 2.5, &[&cond]));
    one_line(&e);
    assert!(
        e.contains("needs an init image and a mask") && e.contains("sd1-inpaint-tiny.safetensors"),
        "{e}"
    );
    // Wrong channel count: refused when set.
    let four = Tensor::zeros([1, 4, 16, 16], (Kind::Float, Device::Cpu));
    let e = error_of(model.set_concat(Some(&four)));
    one_line(&e);
    assert!(
        e.contains("[1, 4, 16, 16]") && e.contains("[batch, 5, height, width]"),
        "{e}"
    );
    // Another size than the latent's (a pass at another size without new conditioning).
    let small = Tensor::zeros([1, 5, 8, 8], (Kind::Float, Device::Cpu));
    model.set_concat(Some(&small)).unwrap();
    let e = error_of(model.denoise(&x, 2.5, &[&cond]));
    one_line(&e);
    assert!(
        e.contains("[1, 5, 8, 8]") && e.contains("[1, 4, 16, 16]"),
        "{e}"
    );
    // Another batch than the latent's (3 images of conditioning for 2).
    model
        .set_concat(Some(&Tensor::zeros(
            [3, 5, 16, 16],
            (Kind::Float, Device::Cpu),
        )))
        .unwrap();
    let e = error_of(model.denoise(&r["unet.x"], 2.5, &[&cond]));
    assert!(e.contains("[3, 5, 16, 16]"), "{e}");
    // Cleared: needed again.
    model.set_concat(None).unwrap();
    assert!(error_of(model.denoise(&x, 2.5, &[&cond])).contains("needs an init image"));
    // A text-to-image model takes none, through the plugin's Backend too.
    let plain = <SdBackend<Sd1> as Backend>::load(&request(&data("sd1-tiny/sd1-tiny.safetensors")))
        .unwrap();
    let five = Tensor::zeros([1, 5, 16, 16], (Kind::Float, Device::Cpu));
    let e = plain.set_concat(Some(&five)).unwrap_err().to_string();
    one_line(&e);
    assert!(
        e.contains("takes none") && e.contains("inpainting checkpoint"),
        "{e}"
    );
    plain.set_concat(None).unwrap();
}

#[test]
fn instruct_pix2pix_and_unknown_input_channels_are_refused_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    for (channels, expected) in [
        (8, "not supported yet: a Stable Diffusion 1.x instruct-pix2pix checkpoint (8 input channels)"),
        (5, "not supported yet: a Stable Diffusion 1.x depth-to-image checkpoint (5 input channels)"),
        (7, "not supported yet: a Stable Diffusion 1.x UNet with 7 input channels"),
    ] {
        let path = with_input_channels(dir.path(), channels);
        let e = error_of(SdModel::load(&path, None, Device::Cpu, Kind::Float));
        assert!(e.contains(expected) && e.contains(&path.display().to_string()), "{e}");
        assert!(!e.contains('\n'), "{e}");
        let e = error_of(hiresfix_sd::inspect(&path, false));
        assert!(e.contains(expected), "{e}");
    }
}

#[test]
fn an_sdxl_inpainting_single_file_loads_and_takes_image_conditioning() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = Tensor::read_safetensors(data("sdxl-tiny/sdxl-tiny.safetensors")).unwrap();
    let key = "model.diffusion_model.input_blocks.0.0.weight";
    let conv = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
    let size = conv.1.size();
    tch::manual_seed(9);
    conv.1 = (Tensor::randn([size[0], 9, size[2], size[3]], (Kind::Float, Device::Cpu)) * 0.1)
        .to_kind(conv.1.kind());
    let path = dir.path().join("sdxl-inpaint.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let info = <SdBackend<Sdxl> as BackendTools>::inspect(&path, true).unwrap();
    assert_eq!(info.family.as_str(), "sdxl");
    assert!(
        info.family_name.contains("inpainting"),
        "{}",
        info.family_name
    );
    assert_eq!(number(&info.extra, keys::CONCAT_CHANNELS), Some(5.0));
    let model = load(&path);
    let cond = model.encode_prompt("a cat", 1).unwrap();
    tch::manual_seed(1);
    let x = Tensor::randn([1, 4, 8, 12], (Kind::Float, Device::Cpu));
    assert!(error_of(model.denoise(&x, 3.0, &[&cond])).contains("needs an init image"));
    let ones = Tensor::ones([1, 1, 8, 12], (Kind::Float, Device::Cpu));
    let concat = Tensor::cat(
        &[
            ones,
            Tensor::zeros([1, 4, 8, 12], (Kind::Float, Device::Cpu)),
        ],
        1,
    );
    model.set_concat(Some(&concat)).unwrap();
    let a = model.denoise(&x, 3.0, &[&cond]).unwrap().remove(0);
    assert_eq!(a.size(), vec![1, 4, 8, 12]);
    model.set_concat(Some(&(concat * 0.0))).unwrap();
    let b = model.denoise(&x, 3.0, &[&cond]).unwrap().remove(0);
    assert!(crate::common::relative_error(&a, &b) > 1e-4);
}

/// An SD 2.x inpainting single file is eps without A1111's v probe (A1111 takes
/// `v2-inpainting-inference.yaml` for any 9-channel SD 2.x file).
#[test]
fn an_sd2_inpainting_single_file_is_eps_without_the_probe() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = Tensor::read_safetensors(data("sd2-tiny/sd2-tiny.safetensors")).unwrap();
    let key = "model.diffusion_model.input_blocks.0.0.weight";
    let conv = tensors.iter_mut().find(|(k, _)| k == key).unwrap();
    let size = conv.1.size();
    conv.1 = Tensor::zeros([size[0], 9, size[2], size[3]], (conv.1.kind(), Device::Cpu));
    let path = dir.path().join("sd2-inpaint.safetensors");
    Tensor::write_safetensors(&tensors, &path).unwrap();
    let found = hiresfix_sd::inspect(&path, false).unwrap();
    assert_eq!(found.family.id, "sd2");
    assert_eq!(found.config.concat_channels(), 5);
    assert_eq!(found.prediction.map(|p| p.as_str()), Some("eps"));
    assert_eq!(found.prediction_source.as_str(), "family default");
}

/// A kohya LoRA of the input convolution made for a text-to-image model (`[32, 4, 3, 3]`).
fn conv_in_lora(dir: &Path) -> (PathBuf, Tensor) {
    tch::manual_seed(5);
    let opts = (Kind::Float, Device::Cpu);
    let down = Tensor::randn([2, 4, 3, 3], opts) * 0.1;
    let up = Tensor::randn([32, 2, 1, 1], opts) * 0.1;
    let delta = up
        .flatten(1, -1)
        .matmul(&down.flatten(1, -1))
        .view([32, 4, 3, 3]);
    let path = dir.join("conv_in.safetensors");
    Tensor::write_safetensors(
        &[
            ("lora_unet_conv_in.lora_down.weight", down),
            ("lora_unet_conv_in.lora_up.weight", up),
            ("lora_unet_conv_in.alpha", Tensor::from(2.0f32)),
        ],
        &path,
    )
    .unwrap();
    (path, delta)
}

#[test]
fn a_text_to_image_lora_changes_the_latent_channels_of_the_input_convolution_only() {
    let dir = tempfile::tempdir().unwrap();
    let (path, delta) = conv_in_lora(dir.path());
    let model = load(&formats()[0]);
    let key = "model.diffusion_model.input_blocks.0.0.weight";
    let weight = || model.var_store().variables()[key].copy();
    let base = weight();
    let spec = LoraSpec {
        path,
        name: "conv_in".into(),
        te: 1.0,
        unet: 0.5,
    };
    model.set_loras(&[spec]).unwrap();
    let changed = weight();
    let latent = changed.narrow(1, 0, 4) - base.narrow(1, 0, 4);
    assert!(crate::common::relative_error(&latent, &(&delta * 0.5)) < 1e-6);
    assert!(changed.narrow(1, 4, 5).equal(&base.narrow(1, 4, 5)));
    // The committed SD 1.x LoRAs (every other layer) apply to the inpainting model.
    let kohya = LoraSpec {
        path: data("loras/sd1-kohya.safetensors"),
        name: "sd1-kohya".into(),
        te: 1.0,
        unet: 1.0,
    };
    model.set_loras(&[kohya]).unwrap();
    model.set_loras(&[]).unwrap();
    assert!(weight().equal(&base));
}

#[test]
fn merging_an_inpainting_checkpoint_with_a_text_to_image_one_merges_the_latent_channels() {
    let dir = tempfile::tempdir().unwrap();
    let (inpaint, plain) = (formats()[0].clone(), data("sd1-tiny/sd1-tiny.safetensors"));
    let out = dir.path().join("merged.safetensors");
    let recipe = Recipe::WeightedSum(vec![(inpaint.clone(), 0.75), (plain.clone(), 0.25)]);
    let report = merge(&recipe, &out).unwrap();
    assert!(report.inpainting && report.copied.is_empty(), "{report:?}");
    let read = |p: &Path| -> HashMap<String, Tensor> {
        Tensor::read_safetensors(p).unwrap().into_iter().collect()
    };
    let (m, a, b) = (read(&out), read(&inpaint), read(&plain));
    let key = "model.diffusion_model.input_blocks.0.0.weight";
    let f = |t: &Tensor| t.to_kind(Kind::Float);
    let want = f(&a[key].narrow(1, 0, 4)) * 0.75 + f(&b[key]) * 0.25;
    assert!(crate::common::relative_error(&f(&m[key].narrow(1, 0, 4)), &want) < 1e-3);
    assert!(m[key].narrow(1, 4, 5).equal(&a[key].narrow(1, 4, 5)));
    let found = hiresfix_sd::inspect(&out, false).unwrap();
    assert_eq!(found.config.concat_channels(), 5);
    // A1111's recipe for an inpainting version of a fine-tune: inpainting A + (fine-tune B -
    // its base C) × 1, add difference; here B is sd1-tiny with every weight × 1.1.
    let tuned = dir.path().join("tuned.safetensors");
    let scaled: Vec<(String, Tensor)> = b
        .iter()
        .map(|(k, t)| match t.is_floating_point() {
            true => (k.clone(), t * 1.1),
            false => (k.clone(), t.shallow_clone()),
        })
        .collect();
    Tensor::write_safetensors(&scaled, &tuned).unwrap();
    let recipe = Recipe::AddDifference {
        a: inpaint.clone(),
        b: tuned,
        c: plain.clone(),
        multiplier: 1.0,
    };
    let out = dir.path().join("inpainting-tuned.safetensors");
    assert!(merge(&recipe, &out).unwrap().inpainting);
    let m = read(&out);
    let want = f(&a[key].narrow(1, 0, 4)) + f(&b[key]) * 0.1;
    assert!(crate::common::relative_error(&f(&m[key].narrow(1, 0, 4)), &want) < 1e-3);
    assert!(m[key].narrow(1, 4, 5).equal(&a[key].narrow(1, 4, 5)));
    let other = "model.diffusion_model.out.2.weight";
    let want = f(&a[other]) + f(&b[other]) * 0.1;
    assert!(crate::common::relative_error(&f(&m[other]), &want) < 1e-3);
    assert_eq!(
        hiresfix_sd::inspect(&out, false)
            .unwrap()
            .config
            .concat_channels(),
        5
    );
    // The inpainting checkpoint must come first, as in A1111.
    let swapped = Recipe::WeightedSum(vec![(plain.clone(), 0.5), (inpaint.clone(), 0.5)]);
    let e = error_of(merge(&swapped, &dir.path().join("no.safetensors")));
    assert!(
        e.contains("put the inpainting checkpoint first") && !e.contains('\n'),
        "{e}"
    );
    assert!(!dir.path().join("no.safetensors").exists());
    // A load-time merge of the two is refused in one line.
    let mut options = hiresfix_sd::LoadOptions::new(Device::Cpu, Kind::Float);
    options.merge = vec![(inpaint.clone(), 0.5), (plain, 0.5)];
    let e = error_of(SdModel::load_with(&inpaint, &options));
    assert!(
        e.contains("merge an inpainting checkpoint with `hiresfix merge`"),
        "{e}"
    );
}
