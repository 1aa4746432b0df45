//! Upscaler parity: every built-in upscaler, loaded from its plugin as the host loads it,
//! against tests/data/upscalers/reference.safetensors (scripts/make_upscaler_reference.py:
//! torch F.interpolate with A1111's arguments, a transcription of ComfyUI's bislerp, PIL's
//! Lanczos and nearest resizes). Needs `cargo build --workspace` so the plugins exist.

use std::collections::HashMap;

use hiresfix::registry::{find, Registry};
use host_api::tch::{Kind, Tensor};
use host_api::VaeCallbacks;

/// Reference inputs and target latent sizes: ×2, a non-integer enlargement, a non-integer
/// shrink of the odd-sized latent.
const LATENT_CASES: [(&str, i64, i64); 3] =
    [("latent", 26, 34), ("latent", 20, 25), ("latent", 9, 11)];
/// The pixel modes also run an even latent at ×1.5 (as 512 → 768 px), where PIL's nearest
/// settles ties differently from torch's nearest-exact.
const PIXEL_CASES: [(&str, i64, i64); 4] = [
    ("pixel_latent", 26, 34),
    ("pixel_latent", 20, 25),
    ("pixel_latent", 9, 11),
    ("pixel_latent_even", 24, 36),
];

const INTERPOLATE_MODES: [&str; 7] = [
    "latent",
    "latent-antialiased",
    "latent-bicubic",
    "latent-bicubic-antialiased",
    "latent-nearest",
    "latent-nearest-exact",
    "latent-area",
];

fn reference() -> HashMap<String, Tensor> {
    let path = crate::common::repo().join("tests/data/upscalers/reference.safetensors");
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let diff = (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max();
    f64::try_from(diff).unwrap()
}

/// Stands in for a pass's VAE where none may be used: any call is an error.
struct NoVae;

impl VaeCallbacks for NoVae {
    fn decode(&mut self, _: &Tensor) -> host_api::Result<Tensor> {
        Err("a latent upscaler called VAE decode".into())
    }
    fn encode(&mut self, _: &Tensor) -> host_api::Result<Tensor> {
        Err("a latent upscaler called VAE encode".into())
    }
}

/// The reference script's fake VAE: decode is nearest ×2 of the first three channels plus a
/// ±0.1 checkerboard, encode a 2×2 average pool plus the channel mean; it keeps the image it
/// was asked to encode.
#[derive(Default)]
struct FakeVae {
    encoded: Option<Tensor>,
}

impl VaeCallbacks for FakeVae {
    fn decode(&mut self, latent: &Tensor) -> host_api::Result<Tensor> {
        let rgb = latent
            .narrow(1, 0, 3)
            .repeat_interleave_self_int(2, 2, None)
            .repeat_interleave_self_int(2, 3, None);
        let (_, _, h, w) = rgb.size4().unwrap();
        let options = (Kind::Int64, rgb.device());
        let parity = (Tensor::arange(h, options).view([-1, 1])
            + Tensor::arange(w, options).view([1, -1]))
        .remainder(2);
        Ok(rgb + (parity * -0.2 + 0.1).to_kind(Kind::Float))
    }
    fn encode(&mut self, image: &Tensor) -> host_api::Result<Tensor> {
        self.encoded = Some(image.shallow_clone());
        let pooled = image.avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None);
        let mean = pooled.mean_dim([1i64].as_slice(), true, Kind::Float);
        Ok(Tensor::cat(&[pooled, mean], 1))
    }
}

/// Runs `id` as the host would at every reference target; returns the worst max-abs error of
/// its output or, for a pixel upscaler, of the image it handed to VAE encode.
fn worst_error(registry: &Registry, id: &str, cases: &[(&str, i64, i64)], via_pixels: bool) -> f64 {
    let r = reference();
    let entry = find(&registry.upscalers, id, "upscaler").unwrap();
    let mut worst: f64 = 0.0;
    for &(input, h, w) in cases {
        let expected = &r[&format!("{id}/{h}x{w}")];
        let error = if via_pixels {
            let mut vae = FakeVae::default();
            let out = entry.decl.run(&mut vae, &[], &r[input], h, w).unwrap();
            assert_eq!(out.size(), [1, 4, h, w], "{id} at {h}x{w}");
            max_abs_diff(vae.encoded.as_ref().expect("VAE encode called"), expected)
        } else {
            let out = entry.decl.run(&mut NoVae, &[], &r[input], h, w).unwrap();
            max_abs_diff(&out, expected)
        };
        eprintln!("{id} {h}x{w}: max abs error {error:.2e}");
        worst = worst.max(error);
    }
    worst
}

#[test]
fn latent_interpolate_modes_match_torch_within_1e_6() {
    let registry = Registry::load(&[], &Default::default());
    for id in INTERPOLATE_MODES {
        let error = worst_error(&registry, id, &LATENT_CASES, false);
        assert!(error <= 1e-6, "{id}: {error}");
    }
}

#[test]
fn bislerp_matches_the_comfyui_definition_within_1e_6() {
    let registry = Registry::load(&[], &Default::default());
    let error = worst_error(&registry, "latent-bislerp", &LATENT_CASES, false);
    assert!(error <= 1e-6, "{error}");
}

#[test]
fn pixel_lanczos_resizes_as_pil_lanczos_within_1e_6() {
    let registry = Registry::load(&[], &Default::default());
    let error = worst_error(&registry, "pixel-lanczos", &PIXEL_CASES, true);
    assert!(error <= 1e-6, "{error}");
}

#[test]
fn pixel_nearest_resizes_exactly_as_pil_nearest() {
    let registry = Registry::load(&[], &Default::default());
    let error = worst_error(&registry, "pixel-nearest", &PIXEL_CASES, true);
    assert_eq!(error, 0.0);
}

#[test]
fn a1111_and_comfyui_names_resolve_to_their_upscalers() {
    let registry = Registry::load(&[], &Default::default());
    for (alias, id) in [
        ("Latent", "latent"),
        ("Latent (antialiased)", "latent-antialiased"),
        ("Latent (bicubic)", "latent-bicubic"),
        ("Latent (bicubic antialiased)", "latent-bicubic-antialiased"),
        ("Latent (nearest)", "latent-nearest"),
        ("Latent (nearest-exact)", "latent-nearest-exact"),
        ("Latent (area)", "latent-area"),
        ("Latent (bislerp)", "latent-bislerp"),
        ("Lanczos", "pixel-lanczos"),
        ("Nearest", "pixel-nearest"),
    ] {
        let entry = find(&registry.upscalers, alias, "upscaler").unwrap();
        assert_eq!(entry.decl.name.as_str(), id, "{alias}");
        let display = hiresfix::registry::display_name(&entry.decl);
        assert_eq!(display, alias, "{id}'s first alias is its display name");
    }
}

/// Decodes to a size that is no whole multiple of the latent.
struct OddVae;

impl VaeCallbacks for OddVae {
    fn decode(&mut self, _: &Tensor) -> host_api::Result<Tensor> {
        Ok(Tensor::zeros(
            [1, 3, 27, 34],
            (Kind::Float, host_api::tch::Device::Cpu),
        ))
    }
    fn encode(&mut self, _: &Tensor) -> host_api::Result<Tensor> {
        Err("not reached".into())
    }
}

#[test]
fn pixel_upscaler_reports_a_vae_with_a_fractional_scale_as_an_error() {
    let registry = Registry::load(&[], &Default::default());
    let latent = &reference()["pixel_latent"];
    let entry = find(&registry.upscalers, "pixel-lanczos", "upscaler").unwrap();
    let err = entry
        .decl
        .run(&mut OddVae, &[], latent, 26, 34)
        .unwrap_err();
    assert!(err.0.contains("not a whole-number scale"), "{err}");
    let err = entry
        .decl
        .run(&mut FakeVae::default(), &[], latent, 0, 34)
        .unwrap_err();
    assert!(err.0.contains("cannot upscale"), "{err}");
}
