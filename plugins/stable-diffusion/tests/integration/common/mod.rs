//! What the parity tests share: error measure and the reference sampler.
#![allow(dead_code)]
use hiresfix_sd::{Conditioning, SdModel};
use tch::{Kind, Tensor};

pub const TOLERANCE: f64 = 1e-4;

/// max |a - b| / max |b|
pub fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size(), "shapes differ");
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}

pub fn assert_close(what: &str, label: &str, a: &Tensor, b: &Tensor, tolerance: f64) {
    let err = relative_error(a, b);
    eprintln!("{what:<22} {label:<24} relative error {err:.3e}");
    assert!(
        err <= tolerance,
        "{what} ({label}): relative error {err:e} > {tolerance:e}"
    );
}

/// k-diffusion `sample_euler` with A1111's CFG, the references' sampler, driving
/// `SdModel::denoise`.
pub fn euler(
    model: &SdModel,
    mut x: Tensor,
    sigmas: &[f64],
    cond: &Conditioning,
    uncond: &Conditioning,
    cfg: f64,
) -> Tensor {
    for pair in sigmas.windows(2) {
        let (sigma, next) = (pair[0], pair[1]);
        let out = model.denoise(&x, sigma, &[uncond, cond]).unwrap();
        let denoised = &out[0] + (&out[1] - &out[0]) * cfg;
        let d = (&x - denoised) / sigma;
        x = &x + d * (next - sigma);
    }
    x
}
