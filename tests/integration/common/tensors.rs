//! Reading reference tensors and comparing latents against them (the parity tests).
use std::collections::HashMap;
use std::path::Path;

use host_api::tch::{Kind, Tensor};

/// Every tensor of a reference `.safetensors` file, by name.
pub fn read_reference(path: &Path) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// max |a - b| / max |b|
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    let (a, b) = (a.to_kind(Kind::Double), b.to_kind(Kind::Double));
    f64::try_from((&a - &b).abs().max()).unwrap() / f64::try_from(b.abs().max()).unwrap()
}
