//! Flux LoRA parity: the tiny LoRA files of scripts/make_flux_lora_reference.py (kohya
//! `lora_unet_*`, ComfyUI `diffusion_model.*`, diffusers / peft `transformer.*` with its alpha in
//! the metadata) merged into the tiny dev transformer against diffusers' `load_lora_weights`
//! outputs (fp32 CPU, 1e-5); the base weights back bit for bit after a set; a LoRA of another
//! family (SD 1.x on Flux, Flux on SD 3.5) and a damaged one refused in one line naming the file.
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use hiresfix_flow::flux::{load, open_weights, LoadedFlux};
use hiresfix_flow::lora::{refuse, FluxLoras, LoraFamily, LoraFile};
use tch::{Device, Kind, Tensor};

const TOLERANCE: f64 = 1e-5;

fn dev() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/flux-tiny/dev")
}

fn lora(name: &str) -> PathBuf {
    dev().join("lora").join(format!("{name}.safetensors"))
}

/// max |a − b| / max |b|
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

/// The transformer's output on the reference call's inputs.
fn run(loaded: &LoadedFlux) -> Tensor {
    let refs = open_weights(&dev().join("lora/reference.safetensors")).unwrap();
    let get = |k: &str| refs.read(&format!("input.{k}")).unwrap();
    tch::no_grad(|| {
        loaded.model.forward(
            &get("packed"),
            &get("timestep"),
            Some(&get("guidance")),
            &get("context"),
            &get("pooled"),
            &get("img_ids"),
            &get("txt_ids"),
        )
    })
    .unwrap()
}

fn expected(label: &str) -> Tensor {
    let refs = open_weights(&dev().join("lora/reference.safetensors")).unwrap();
    refs.read(&format!("{label}.output")).unwrap()
}

fn setup() -> (LoadedFlux, HashMap<String, Tensor>, FluxLoras) {
    let loaded = load(&dev()).unwrap();
    let vars = loaded.vs.variables();
    let loras = FluxLoras::new(&vars, "Flux.1-dev");
    (loaded, vars, loras)
}

#[test]
fn flux_loras_in_each_layout_match_diffusers_load_lora_weights() {
    let (loaded, vars, mut loras) = setup();
    let base = run(&loaded);
    let err = relative_error(&base, &expected("base"));
    eprintln!("flux lora base            relative error {err:.3e}");
    assert!(err <= 1e-4, "base: {err:e}");
    let cases: &[(&str, &[(&str, f64)])] = &[
        ("kohya", &[("kohya", 1.0)]),
        ("comfy", &[("comfy", 1.0)]),
        ("diffusers", &[("diffusers", 0.7)]),
        ("kohya+diffusers", &[("kohya", 1.0), ("diffusers", 0.7)]),
    ];
    for (label, set) in cases {
        let set: Vec<LoraFile> = set
            .iter()
            .map(|(n, w)| LoraFile::new(lora(n), *w))
            .collect();
        let warnings = loras.apply(&vars, &set).unwrap();
        assert!(warnings.is_empty(), "{label}: {warnings:?}");
        let want = expected(label);
        let out = run(&loaded);
        let err = relative_error(&out, &want);
        let change = relative_error(&want, &expected("base"));
        eprintln!("flux lora {label:<15} relative error {err:.3e} (its change: {change:.2})");
        assert!(err <= TOLERANCE, "{label}: relative error {err:e}");
    }
    // Rows of fused weights: the diffusers file's q, k, v changed one weight each block.
    assert!(loras.changed("double_blocks.0.img_attn.qkv.weight"));
    assert!(loras.changed("single_blocks.1.linear1.weight"));
    assert!(loras.changed("final_layer.adaLN_modulation.1.weight"));
    loras.apply(&vars, &[]).unwrap();
    assert!(loras.current().is_empty());
    let back = run(&loaded);
    assert!(back.equal(&base), "the base weights are back bit for bit");
}

/// A LoRA file of rank-4 `(layer, width, value)` layers: `lora_down` [4, width] and `lora_up`
/// [width, 4] filled with `value`.
fn write(path: &Path, layers: &[(&str, i64, f32)]) {
    let full = |shape: [i64; 2], v: f32| Tensor::full(shape, v as f64, (Kind::Float, Device::Cpu));
    let owned: Vec<(String, Tensor)> = layers
        .iter()
        .flat_map(|(layer, width, v)| {
            [
                (format!("{layer}.lora_down.weight"), full([4, *width], *v)),
                (format!("{layer}.lora_up.weight"), full([*width, 4], *v)),
            ]
        })
        .collect();
    Tensor::write_safetensors(&owned, path).unwrap();
}

#[test]
fn flux_foreign_and_damaged_loras_are_refused_in_one_line() {
    let (loaded, vars, mut loras) = setup();
    let base = run(&loaded);
    let tmp = tempfile::tempdir().unwrap();
    let sd1 = tmp.path().join("detail-sd15.safetensors");
    write(
        &sd1,
        &[
            ("lora_unet_down_blocks_0_attentions_0_proj_in", 32, 0.1),
            ("lora_te_text_model_encoder_layers_0_mlp_fc1", 32, 0.1),
        ],
    );
    let nan = tmp.path().join("broken.safetensors");
    write(
        &nan,
        &[("lora_unet_double_blocks_0_img_attn_proj", 32, f32::NAN)],
    );
    let wide = tmp.path().join("flux-real-size.safetensors");
    write(
        &wide,
        &[("lora_unet_double_blocks_0_img_attn_proj", 3072, 0.1)],
    );
    let cases: &[(&Path, &str)] = &[
        (
            &sd1,
            "LoRA `detail-sd15.safetensors` is an SD 1.x/2.x LoRA (one text encoder: lora_te_) but \
             this model is Flux.1-dev — use a LoRA made for Flux",
        ),
        (
            &nan,
            "LoRA `broken.safetensors`: tensor `lora_unet_double_blocks_0_img_attn_proj.lora_down.\
             weight` holds NaN or inf",
        ),
        (
            &wide,
            "LoRA `flux-real-size.safetensors`: layer `lora_unet_double_blocks_0_img_attn_proj` \
             changes a [3072, 3072] weight, which does not fit the model's [32, 32]",
        ),
    ];
    for (path, want) in cases {
        // After a LoRA that applied, so a refusal must put the base weights back.
        loras
            .apply(&vars, &[LoraFile::new(lora("kohya"), 1.0)])
            .unwrap();
        let err = loras
            .apply(&vars, &[LoraFile::new(*path, 1.0)])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(want), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(run(&loaded).equal(&base), "{want}: base weights back");
    }
    let deep = tmp.path().join("flux-dev-19-blocks.safetensors");
    write(
        &deep,
        &[("lora_unet_double_blocks_9_img_attn_proj", 32, 0.1)],
    );
    let err = loras
        .apply(&vars, &[LoraFile::new(&deep, 1.0)])
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("LoRA `flux-dev-19-blocks.safetensors`: none of its 1 layers matches a weight of this Flux.1-dev transformer"),
        "{err}"
    );
    // A kohya Flux LoRA with CLIP-L layers: the transformer's part applies, the rest is named.
    let with_te = tmp.path().join("with-clip.safetensors");
    write(
        &with_te,
        &[
            ("lora_unet_double_blocks_0_img_attn_proj", 32, 0.01),
            ("lora_te1_text_model_encoder_layers_0_mlp_fc1", 32, 0.1),
            ("lora_unet_double_blocks_9_img_attn_proj", 32, 0.1),
        ],
    );
    let warnings = loras.apply(&vars, &[LoraFile::new(&with_te, 1.0)]).unwrap();
    assert_eq!(
        warnings,
        [
            "LoRA `with-clip.safetensors`: its 1 text-encoder layers were skipped (Flux LoRAs apply to the transformer only for now)",
            "LoRA `with-clip.safetensors`: 1 of its 3 layers match no weight of this Flux.1-dev transformer and were skipped (first: lora_unet_double_blocks_9_img_attn_proj)",
        ]
    );
    assert!(loras.changed("double_blocks.0.img_attn.proj.weight"));
    let err = loras
        .apply(&vars, &[LoraFile::new(lora("kohya"), f64::NAN)])
        .unwrap_err()
        .to_string();
    assert!(err.contains("weight NaN is not a finite number"), "{err}");
    // A Flux LoRA on SD 3.5 (whose backend applies no LoRA yet).
    for name in ["kohya", "comfy", "diffusers"] {
        let err = refuse(&lora(name), LoraFamily::Sd3, "SD 3.5").to_string();
        assert_eq!(
            err,
            format!(
                "LoRA `{name}.safetensors` is a Flux LoRA (double_blocks/single_blocks layers) \
                 but this model is SD 3.5 — use a LoRA made for SD 3.x"
            )
        );
    }
}

/// A LoRA merged into fp8 weights (`weight_dtype = "fp8_e4m3fn"`) keeps its change on average:
/// stochastic rounding makes E[merged − base] = the LoRA's delta, so the projection of the fp8
/// change on the exact (fp32) delta is about the delta itself (ratio 1), where rounding to
/// nearest would drop most of it (the changes are under half an fp8 step at this weight).
#[test]
fn flux_lora_into_fp8_weights_keeps_its_change_on_average() {
    // The tiny LoRA is strong: at this weight its changes are ~0.4 % of the weights, under
    // half an fp8 step (3–6 %).
    const WEIGHT: f64 = 0.003;
    // Every linear weight's change, flattened into one vector, and the fp8 base.
    let delta_of = |linear_kind: Kind| {
        let loaded =
            hiresfix_flow::flux::load_held(&dev(), None, Device::Cpu, (Kind::Float, linear_kind))
                .unwrap();
        let vars = loaded.vs.variables();
        let mut keys: Vec<&String> = vars
            .keys()
            .filter(|k| k.ends_with(".weight") && vars[*k].dim() == 2)
            .collect();
        keys.sort();
        let flat = |vars: &HashMap<String, Tensor>| {
            let parts: Vec<Tensor> = keys
                .iter()
                .map(|k| vars[*k].to_kind(Kind::Float).reshape([-1]))
                .collect();
            Tensor::cat(&parts, 0)
        };
        let base = flat(&vars);
        let mut loras = FluxLoras::new(&vars, "Flux.1-dev");
        loras
            .apply(&vars, &[LoraFile::new(lora("kohya"), WEIGHT)])
            .unwrap();
        (flat(&vars) - &base, base)
    };
    let (exact, _) = delta_of(Kind::Float);
    let (fp8, base8) = delta_of(Kind::Float8e4m3fn);
    let dot = |a: &Tensor, b: &Tensor| f64::try_from((a * b).sum(Kind::Double)).unwrap();
    assert!(
        dot(&exact, &exact) > 0.0,
        "the LoRA changes some linear weight"
    );
    let ratio = dot(&fp8, &exact) / dot(&exact, &exact);
    // Rounding to nearest: what would survive of the same delta.
    let nearest = (&base8 + &exact)
        .to_kind(Kind::Float8e4m3fn)
        .to_kind(Kind::Float)
        - &base8;
    let nearest_ratio = dot(&nearest, &exact) / dot(&exact, &exact);
    eprintln!("fp8 LoRA change kept: stochastic {ratio:.3}, nearest would keep {nearest_ratio:.3}");
    assert!((ratio - 1.0).abs() < 0.15, "{ratio}");
    assert!(
        nearest_ratio < 0.5,
        "{nearest_ratio}: the weight is not small enough to tell"
    );
}
