//! fp8 safetensors (`F8_E4M3`, `F8_E5M2`): the tiny SD 1.x and SDXL checkpoints cast to fp8
//! load, and their UNet call matches diffusers on torch's own upcast of the same file
//! (scripts/make_fp8_reference.py, `tests/data/fp8`); `info` names the stored dtype; a merge
//! writes the fp8 tensors as fp16; an fp8 LoRA patches as its upcast twin does.
//!
//! The fp8 files are written here, into a scratch folder, with libtorch's cast (the one
//! torch's `.to(float8_e4m3fn)` runs), and checked against the checksum the script recorded.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::common::relative_error;
use hiresfix_sd::checkpoint::safetensors::SafetensorsFile;
use hiresfix_sd::lora::LoraSpec;
use hiresfix_sd::merge::{merge, Recipe};
use hiresfix_sd::SdModel;
use safetensors::{Dtype, SafeTensors};
use tch::{Device, Kind, Tensor};

/// Against diffusers on the upcast weights, both CPU fp32: the two UNet implementations sum
/// in another order, which alone moves the output by about 1e-6 (the parity tests measure
/// 9.5e-7 for the unquantized SD 1.x UNet, 8.5e-7 for SDXL).
const DIFFUSERS_TOLERANCE: f64 = 2e-6;

fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data")
        .join(rel)
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn reference_json() -> serde_json::Value {
    let text = std::fs::read_to_string(data("fp8/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Which tensors a case casts (scripts/make_fp8_reference.py `is_cast`).
#[derive(Clone, Copy)]
enum Rule {
    /// Every floating tensor of the model (not the schedule buffers).
    Model,
    /// The UNet's floating tensors of two or more dimensions.
    UnetMatrices,
    /// Every floating tensor (a LoRA).
    All,
}

fn is_cast(rule: Rule, key: &str, dtype: Dtype, dims: usize) -> bool {
    let float = matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16);
    float
        && match rule {
            Rule::Model => [
                "model.diffusion_model.",
                "first_stage_model.",
                "cond_stage_model.",
                "conditioner.",
            ]
            .iter()
            .any(|p| key.starts_with(p)),
            Rule::UnetMatrices => key.starts_with("model.diffusion_model.") && dims >= 2,
            Rule::All => true,
        }
}

fn kind(dtype: Dtype) -> Kind {
    match dtype {
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::F8_E4M3 => Kind::Float8e4m3fn,
        Dtype::F8_E5M2 => Kind::Float8e5m2,
        other => panic!("unexpected dtype {other:?}"),
    }
}

fn bytes_of(t: &Tensor) -> Vec<u8> {
    let t = t.contiguous();
    let mut out = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut out, t.numel());
    out
}

/// Writes `src` to `dst` with the tensors `rule` picks cast to `fp8` — or, `upcast`, cast to
/// fp8 and back to fp32 (the same values, stored wide) — and returns the checksum of the fp8
/// data (the script's `fp8_checksum`).
fn write_fp8(src: &Path, dst: &Path, fp8: Dtype, rule: Rule, upcast: bool) -> u64 {
    let bytes = std::fs::read(src).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut cast: Vec<(String, Vec<u8>)> = Vec::new();
    for (name, view) in file.tensors() {
        let shape: Vec<i64> = view.shape().iter().map(|d| *d as i64).collect();
        if !is_cast(rule, &name, view.dtype(), shape.len()) {
            out.push((
                name,
                view.dtype(),
                view.shape().to_vec(),
                view.data().to_vec(),
            ));
            continue;
        }
        let stored = Tensor::from_data_size(view.data(), &shape, kind(view.dtype()));
        let narrow = stored.to_kind(kind(fp8));
        let fp8_bytes = bytes_of(&narrow);
        let (dtype, data) = match upcast {
            true => (Dtype::F32, bytes_of(&narrow.to_kind(Kind::Float))),
            false => (fp8, fp8_bytes.clone()),
        };
        cast.push((name.clone(), fp8_bytes));
        out.push((name, dtype, view.shape().to_vec(), data));
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = out
        .iter()
        .map(|(n, d, s, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (n.clone(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, dst).unwrap();
    cast.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let (mut total, mut offset) = (0u64, 0u64);
    for (_, data) in &cast {
        for b in data {
            total = total.wrapping_add(u64::from(*b) * (offset % 251 + 1));
            offset += 1;
        }
    }
    total
}

struct Case {
    name: &'static str,
    family: &'static str,
    fp8: Dtype,
    rule: Rule,
}

const CASES: [Case; 3] = [
    Case {
        name: "sd1-e4m3",
        family: "sd1",
        fp8: Dtype::F8_E4M3,
        rule: Rule::Model,
    },
    Case {
        name: "sdxl-e4m3",
        family: "sdxl",
        fp8: Dtype::F8_E4M3,
        rule: Rule::Model,
    },
    Case {
        name: "sd1-e5m2",
        family: "sd1",
        fp8: Dtype::F8_E5M2,
        rule: Rule::UnetMatrices,
    },
];

/// The case's fp8 checkpoint in `dir`, checked to be the script's file.
fn fp8_checkpoint(case: &Case, dir: &Path) -> PathBuf {
    let src = data(&format!("{0}-tiny/{0}-tiny.safetensors", case.family));
    let dst = dir.join(format!("{}.safetensors", case.name));
    let checksum = write_fp8(&src, &dst, case.fp8, case.rule, false);
    let recorded = &reference_json()["cases"][case.name]["fp8_checksum"];
    assert_eq!(
        checksum.to_string(),
        recorded.as_str().unwrap(),
        "{}: the fp8 data differs from the script's",
        case.name
    );
    dst
}

/// The UNet output of the checkpoint at `path` for the family reference's inputs.
fn unet_out(path: &Path, inputs: &HashMap<String, Tensor>) -> Tensor {
    let model = SdModel::load(path, None, Device::Cpu, Kind::Float).unwrap();
    model
        .unet_output(
            &inputs["unet.x"],
            &inputs["unet.t"],
            &inputs["unet.context"],
            inputs.get("unet.y"),
        )
        .unwrap()
}

#[test]
fn fp8_checkpoints_unet_matches_torchs_upcast_of_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let r = tensors(&data("fp8/reference.safetensors"));
    for case in &CASES {
        let path = fp8_checkpoint(case, dir.path());
        let inputs = tensors(&data(&format!(
            "{}-tiny/reference.safetensors",
            case.family
        )));
        let out = unet_out(&path, &inputs);
        // torch's upcast of the same tensors, stored as fp32: the same model, bit for bit.
        let src = data(&format!("{0}-tiny/{0}-tiny.safetensors", case.family));
        let twin = dir.path().join(format!("{}-upcast.safetensors", case.name));
        write_fp8(&src, &twin, case.fp8, case.rule, true);
        let upcast = relative_error(&out, &unet_out(&twin, &inputs));
        // diffusers' UNet on torch's upcast (scripts/make_fp8_reference.py).
        let err = relative_error(&out, &r[&format!("{}.unet.out", case.name)]);
        let unquantized = inputs
            .get("unet.out")
            .unwrap_or_else(|| &inputs["unet.eps"]);
        let moved = relative_error(&out, unquantized);
        eprintln!(
            "{}: relative error {upcast:.3e} against the upcast file, {err:.3e} against diffusers on it; {moved:.3e} from the unquantized model",
            case.name
        );
        assert!(
            upcast <= 1e-6,
            "{}: {upcast:e} off the upcast file",
            case.name
        );
        assert!(
            err <= DIFFUSERS_TOLERANCE,
            "{}: relative error {err:e} against diffusers",
            case.name
        );
        // The weights really were fp8: the output moved away from the unquantized model's.
        assert!(
            moved > 1e-2,
            "{}: fp8 changed nothing ({moved:e})",
            case.name
        );
    }
}

#[test]
fn info_names_the_stored_fp8_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let e4m3 = fp8_checkpoint(&CASES[0], dir.path());
    assert_eq!(
        hiresfix_sd::inspect(&e4m3, false).unwrap().stored_dtype,
        "F8_E4M3"
    );
    let sdxl = fp8_checkpoint(&CASES[1], dir.path());
    assert_eq!(
        hiresfix_sd::inspect(&sdxl, false).unwrap().stored_dtype,
        "F8_E4M3"
    );
    // UNet matrices in E5M2, the rest F32 (the tiny VAE and text encoder hold half the
    // parameters): the dtype of most parameters, its share, the others.
    let mixed = fp8_checkpoint(&CASES[2], dir.path());
    let shown = hiresfix_sd::inspect(&mixed, false).unwrap().stored_dtype;
    assert_eq!(shown, "F32 (52% of the parameters; the rest F8_E5M2)");
}

#[test]
fn a_merge_of_an_fp8_checkpoint_writes_its_tensors_as_fp16() {
    let dir = tempfile::tempdir().unwrap();
    let fp8 = fp8_checkpoint(&CASES[0], dir.path());
    let wide = data("sd1-tiny/sd1-tiny.safetensors");
    let out = dir.path().join("merged.safetensors");
    let recipe = Recipe::WeightedSum(vec![(fp8.clone(), 0.25), (wide.clone(), 0.75)]);
    let report = merge(&recipe, &out).unwrap();
    assert_eq!(report.widened, 654);
    let bytes = std::fs::read(&out).unwrap();
    let merged = SafeTensors::deserialize(&bytes).unwrap();
    let dtypes: std::collections::BTreeSet<Dtype> =
        merged.tensors().iter().map(|(_, v)| v.dtype()).collect();
    // The fp8 tensors as F16; the schedule buffers F32, position ids I64, as stored.
    assert_eq!(
        dtypes,
        [Dtype::I64, Dtype::F32, Dtype::F16].into_iter().collect()
    );
    // tch's own reader refuses fp8; the plugin's hands fp8 over as fp16 (exact).
    let file = SafetensorsFile::open(&fp8).unwrap();
    let a = |key: &str| file.read(key).unwrap();
    let (b, m) = (tensors(&wide), tensors(&out));
    for key in [
        "model.diffusion_model.input_blocks.0.0.weight",
        "first_stage_model.decoder.conv_out.bias",
    ] {
        assert_eq!(m[key].kind(), Kind::Half, "{key}");
        let want = (a(key).to_kind(Kind::Float) * 0.25 + &b[key] * 0.75).to_kind(Kind::Half);
        assert!(m[key].equal(&want), "{key}: not the fp16 weighted sum");
    }
    // An fp8 second input merges from its upcast values too.
    let out2 = dir.path().join("merged2.safetensors");
    let recipe = Recipe::WeightedSum(vec![(wide.clone(), 0.75), (fp8, 0.25)]);
    merge(&recipe, &out2).unwrap();
    let m2 = tensors(&out2);
    let key = "model.diffusion_model.out.2.weight";
    let want = &b[key] * 0.75 + a(key).to_kind(Kind::Float) * 0.25;
    assert_eq!(m2[key].kind(), Kind::Float);
    assert!(relative_error(&m2[key], &want) < 1e-7, "{key}");
}

#[test]
fn an_fp8_lora_patches_the_weights_as_its_upcast_twin() {
    let dir = tempfile::tempdir().unwrap();
    let src = data("loras/sd1-kohya.safetensors");
    let fp8 = dir.path().join("kohya-fp8.safetensors");
    let twin = dir.path().join("kohya-upcast.safetensors");
    write_fp8(&src, &fp8, Dtype::F8_E4M3, Rule::All, false);
    write_fp8(&src, &twin, Dtype::F8_E4M3, Rule::All, true);
    let spec = |path: &Path| LoraSpec {
        path: path.to_path_buf(),
        name: "kohya".into(),
        te: 0.8,
        unet: 0.6,
    };
    let model = |path: &Path| {
        let m = SdModel::load(
            &data("sd1-tiny/sd1-tiny.safetensors"),
            None,
            Device::Cpu,
            Kind::Float,
        )
        .unwrap();
        m.set_loras(&[spec(path)]).unwrap();
        m.var_store().variables()
    };
    let (a, b, wide) = (model(&fp8), model(&twin), model(&src));
    let mut differs = 0;
    for (key, t) in &a {
        assert!(
            t.equal(&b[key]),
            "{key}: the fp8 LoRA differs from its upcast twin"
        );
        differs += usize::from(!t.equal(&wide[key]));
    }
    // The fp8 LoRA changed weights, differently from the fp32 LoRA.
    assert!(differs > 0, "fp8 rounding changed no patched weight");
}

#[test]
fn a_load_time_merge_reads_fp8_inputs_upcast() {
    let dir = tempfile::tempdir().unwrap();
    let case = &CASES[0];
    let fp8 = fp8_checkpoint(case, dir.path());
    let twin = dir.path().join("upcast.safetensors");
    let src = data("sd1-tiny/sd1-tiny.safetensors");
    write_fp8(&src, &twin, case.fp8, case.rule, true);
    // ½·fp8 + ½·(its fp32 twin) is the fp8 model itself, exactly: the merge path (finite
    // checks, fp32 sums) sees the same values as a plain load.
    let mut options = hiresfix_sd::LoadOptions::new(Device::Cpu, Kind::Float);
    options.merge = vec![(fp8.clone(), 0.5), (twin, 0.5)];
    let merged = SdModel::load_with(&fp8, &options).unwrap();
    let plain = SdModel::load(&fp8, None, Device::Cpu, Kind::Float).unwrap();
    let (a, b) = (
        merged.var_store().variables(),
        plain.var_store().variables(),
    );
    assert!(a.len() > 100);
    for (key, t) in &a {
        assert!(
            t.equal(&b[key]),
            "{key}: the merge differs from the fp8 model"
        );
    }
}
