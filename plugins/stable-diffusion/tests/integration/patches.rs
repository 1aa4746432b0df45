//! UNet patches (FreeU v1/v2, Deep Shrink) against the PyTorch references in
//! `tests/data/patches` (scripts/make_patch_reference.py): FreeU v1 is diffusers'
//! `enable_freeu`, v2 and Deep Shrink are the script's transcriptions of ComfyUI's patches on
//! the LDM forward order. One UNet call per case on the tiny SD 1.x and SDXL models, CPU fp32,
//! the patches loaded from the built-in patch plugin's dylib and passed through host-api's
//! patch boundary, as the host does.
use std::collections::HashMap;
use std::path::PathBuf;

use hiresfix_sd::SdModel;
use host_api::abi_stable::library::lib_header_from_path;
use host_api::{OptionEntry, OptionValue, PassSigmas, PatchBox, PatchDecl, PatchModel, PluginRef};
use tch::{Device, Kind, Tensor};

use crate::common::relative_error;

const TOLERANCE: f64 = 1e-4;

pub(crate) fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data")
}

fn reference() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(data().join("patches/reference.safetensors"))
        .unwrap()
        .into_iter()
        .collect()
}

fn settings() -> serde_json::Value {
    let text = std::fs::read_to_string(data().join("patches/reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub(crate) fn model(family: &str) -> SdModel {
    let path = data().join(format!("{family}-tiny/{family}-tiny.safetensors"));
    SdModel::load(&path, None, Device::Cpu, Kind::Float).unwrap()
}

pub(crate) fn number(key: &str, v: f64) -> OptionEntry {
    OptionEntry {
        key: key.into(),
        value: OptionValue::Number(v),
    }
}

/// The built-in patch plugin (`patches/builtin`) as the host loads it: its dylib, built by
/// `cargo build --workspace` beside this test binary. (Linking its crate into this binary
/// instead would put two plugins' root-module symbols into one executable.)
pub(crate) fn builtin_patch(name: &str) -> PatchDecl {
    let dir = std::env::current_exe().unwrap();
    let dir = dir.parent().and_then(|deps| deps.parent()).unwrap();
    let file = dir.join("libhiresfix_patches.so");
    assert!(
        file.is_file(),
        "{} is missing: run `cargo build --workspace` first (scripts/test does)",
        file.display()
    );
    let header = lib_header_from_path(&file).unwrap();
    let module: PluginRef = header.init_root_module::<PluginRef>().unwrap();
    (module.patches())()
        .into_iter()
        .map(PatchDecl::from_ffi)
        .find(|decl| decl.name == name)
        .unwrap_or_else(|| panic!("no patch `{name}` in {}", file.display()))
}

fn patch(name: &str, model: &SdModel, options: Vec<OptionEntry>) -> PatchBox {
    let target = PatchModel {
        family: model.info().family.id.into(),
        sigmas: model.sigmas().into(),
        extra: Default::default(),
    };
    builtin_patch(name).create(&options, &target).unwrap()
}

/// The reference's Deep Shrink settings as profile options.
fn deep_shrink_options(s: &serde_json::Value) -> Vec<OptionEntry> {
    let text = |key: &str, v: &serde_json::Value| OptionEntry {
        key: key.into(),
        value: OptionValue::Text(v.as_str().unwrap().into()),
    };
    vec![
        number("block", s["block_number"].as_f64().unwrap()),
        number("factor", s["downscale_factor"].as_f64().unwrap()),
        number("start", s["start_percent"].as_f64().unwrap()),
        number("end", s["end_percent"].as_f64().unwrap()),
        OptionEntry {
            key: "after_skip".into(),
            value: OptionValue::Flag(s["downscale_after_skip"].as_bool().unwrap()),
        },
        text("downscale_method", &s["downscale_method"]),
        text("upscale_method", &s["upscale_method"]),
    ]
}

fn freeu_options(s: &serde_json::Value, version: f64) -> Vec<OptionEntry> {
    let mut options: Vec<OptionEntry> = ["b1", "b2", "s1", "s2"]
        .iter()
        .map(|k| number(k, s[k].as_f64().unwrap()))
        .collect();
    options.push(number("version", version));
    options
}

struct Case {
    family: &'static str,
    model: SdModel,
    r: HashMap<String, Tensor>,
    settings: serde_json::Value,
}

impl Case {
    fn new(family: &'static str) -> Self {
        Self {
            family,
            model: model(family),
            r: reference(),
            settings: settings(),
        }
    }

    fn get(&self, name: &str) -> &Tensor {
        let key = format!("{}.{name}", self.family);
        self.r.get(&key).unwrap_or_else(|| panic!("{key} missing"))
    }

    /// The UNet output at the reference's `sigma_in` / `sigma_out` with `patches`.
    fn run(&self, patches: Vec<PatchBox>, inside: bool) -> Tensor {
        let sigma = self.settings["settings"][if inside { "sigma_in" } else { "sigma_out" }]
            .as_f64()
            .unwrap();
        let range = PassSigmas {
            max: 14.6,
            min: 0.0,
        };
        self.model.set_patches(patches, range);
        let vector = (self.family == "sdxl").then(|| self.get("y"));
        let out = self
            .model
            .unet_output_at_sigma(self.get("x"), sigma, self.get("context"), vector)
            .unwrap();
        self.model.set_patches(Vec::new(), range);
        out
    }

    fn check(&self, name: &str, patches: Vec<PatchBox>, inside: bool) {
        let out = self.run(patches, inside);
        let err = relative_error(&out, self.get(name));
        println!("{} {name}: relative error {err:.2e}", self.family);
        assert!(err < TOLERANCE, "{} {name}: {err:e}", self.family);
        // The reference differs from the plain UNet: this compares a patched output.
        assert!(relative_error(self.get(name), self.get("plain_in")) > 1e-3);
    }
}

const FAMILIES: [&str; 2] = ["sd1", "sdxl"];

#[test]
fn freeu_v1_matches_diffusers_enable_freeu_and_v2_the_comfyui_transcription() {
    for family in FAMILIES {
        let case = Case::new(family);
        let s = case.settings["settings"]["freeu"].clone();
        let v1 = patch("freeu", &case.model, freeu_options(&s, 1.0));
        case.check("freeu_v1_in", vec![v1], true);
        let v2 = patch("freeu", &case.model, freeu_options(&s, 2.0));
        case.check("freeu_v2_in", vec![v2], true);
    }
}

#[test]
fn deep_shrink_matches_the_comfyui_transcription_inside_its_sigma_window() {
    for family in FAMILIES {
        let case = Case::new(family);
        for name in ["deep_shrink", "deep_shrink_b4", "deep_shrink_before_skip"] {
            let options = deep_shrink_options(&case.settings["settings"][name]);
            let shrink = patch("deep_shrink", &case.model, options);
            case.check(&format!("{name}_in"), vec![shrink], true);
        }
    }
}

#[test]
fn deep_shrink_outside_its_window_is_the_plain_unet_exactly() {
    for family in FAMILIES {
        let case = Case::new(family);
        let plain = case.run(Vec::new(), false);
        let options = deep_shrink_options(&case.settings["settings"]["deep_shrink"]);
        let shrunk = case.run(vec![patch("deep_shrink", &case.model, options)], false);
        assert!(
            plain.equal(&shrunk),
            "{family}: deep_shrink changed the UNet outside its window"
        );
        let err = relative_error(&shrunk, case.get("deep_shrink_out"));
        assert!(err < TOLERANCE, "{family} deep_shrink_out: {err:e}");
        // And the plain output itself is the reference's.
        let err = relative_error(&plain, case.get("plain_out"));
        assert!(err < TOLERANCE, "{family} plain_out: {err:e}");
    }
}
