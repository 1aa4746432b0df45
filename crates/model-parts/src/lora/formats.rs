//! The weight deltas of the LoRA formats people download, each a low-rank (or Kronecker)
//! description of `ΔW` for one layer: kohya LoRA / LoCon (`lora_down`, `lora_up`, optional
//! Tucker `lora_mid`), diffusers / peft (`lora_A`, `lora_B`), LyCORIS LoHa (`hada_*`) and LoKr
//! (`lokr_*`). Formulas and the alpha/rank scale as ComfyUI's `comfy/weight_adapter/` and
//! LyCORIS compute them.
use std::collections::BTreeMap;

use anyhow::{anyhow, bail, Result};
use tch::{Kind, Tensor};

use super::shapes::{self, Shapes};

/// One layer's tensors, by suffix (without the leading dot).
#[derive(Default)]
pub struct LayerParts(BTreeMap<&'static str, Tensor>);

impl LayerParts {
    fn get(&self, part: &str) -> Option<&Tensor> {
        self.0.get(part)
    }

    /// Sets `alpha` where the file stores none (peft files keep it in their metadata).
    pub fn default_alpha(&mut self, alpha: f64) {
        self.0.entry("alpha").or_insert_with(|| Tensor::from(alpha));
    }

    /// Whether this is a diffusers / peft layer (`lora_A` / `lora_B`).
    pub fn is_peft(&self) -> bool {
        self.get("lora_A.weight").is_some()
    }

    /// The scalar `alpha`, if stored.
    fn alpha(&self) -> Option<f64> {
        self.get("alpha")
            .and_then(|a| f64::try_from(a.to_kind(Kind::Double).sum(Kind::Double)).ok())
    }
}

/// Groups a file's tensors by layer; keys with no known suffix are returned apart.
pub fn group(tensors: Vec<(String, Tensor)>) -> (BTreeMap<String, LayerParts>, Vec<String>) {
    let (layers, unknown) = super::shapes::group(tensors);
    let layers = layers
        .into_iter()
        .map(|(k, v)| (k, LayerParts(v)))
        .collect();
    (layers, unknown)
}

impl LayerParts {
    /// Each part's shape.
    pub fn shapes(&self) -> Vec<(&'static str, Vec<i64>)> {
        self.0.iter().map(|(p, t)| (*p, t.size())).collect()
    }
}

/// `ΔW` of `layer` for the weight `key` of `shape`, alpha/rank scale included, in fp32. The
/// shapes are checked first ([`shapes::check`]); the error names the tensor at fault.
pub fn delta(layer: &str, parts: &LayerParts, key: &str, shape: &[i64]) -> Result<Tensor> {
    let owned = parts.shapes();
    let list: Shapes = owned.iter().map(|(p, s)| (*p, s.as_slice())).collect();
    let plan = shapes::check(layer, &list, key, shape).map_err(anyhow::Error::msg)?;
    let delta = compute(parts).map_err(|e| {
        anyhow!(
            "layer `{layer}`: {}",
            host_api::error::first_line(&e.to_string())
        )
    })?;
    let scale = match plan.rank {
        Some(rank) => scale_of(parts.alpha(), rank),
        None => 1.0,
    };
    let numel = shapes::numel(shape).unwrap_or(-1);
    if let Some(latent_only) = shapes::inpainting_input(shape) {
        if delta.numel() as i64 != numel
            && Some(delta.numel() as i64) == shapes::numel(&latent_only)
        {
            // A text-to-image input convolution's change on an inpainting UNet: the
            // latent's channels only (A1111 zero-pads it to the mask's and masked image's).
            let padded = delta
                .f_reshape(latent_only.as_slice())?
                .f_constant_pad_nd([0, 0, 0, 0, 0, shape[1] - latent_only[1]])?;
            return Ok(padded * scale);
        }
    }
    if delta.numel() as i64 != numel {
        bail!(
            "layer `{layer}`: its change has {} values but `{key}` {shape:?} has {numel}",
            delta.numel()
        );
    }
    Ok(delta.f_reshape(shape)? * scale)
}

/// The unscaled change of checked `parts`, with fallible ops only.
fn compute(parts: &LayerParts) -> Result<Tensor> {
    let f = |t: &Tensor| t.f_to_kind(Kind::Float);
    let flat = |t: &Tensor| -> Result<Tensor> { Ok(f(t)?.f_flatten(1, -1)?) };
    if let (Some(up), Some(down)) = (
        parts.get("lora_up.weight").or(parts.get("lora_B.weight")),
        parts.get("lora_down.weight").or(parts.get("lora_A.weight")),
    ) {
        let down = match parts.get("lora_mid.weight") {
            // Tucker (LoCon `lora_mid`): fold the core into `down` as [r, in, kh, kw].
            Some(mid) => Tensor::f_einsum(
                "i j k l, j r -> i r k l",
                &[f(mid)?, flat(down)?],
                None::<&[i64]>,
            )?,
            None => f(down)?,
        };
        return Ok(flat(up)?.f_matmul(&down.f_flatten(1, -1)?)?);
    }
    if let (Some(w1a), Some(w1b), Some(w2a), Some(w2b)) = (
        parts.get("hada_w1_a"),
        parts.get("hada_w1_b"),
        parts.get("hada_w2_a"),
        parts.get("hada_w2_b"),
    ) {
        let half = |a: &Tensor, b: &Tensor, t: Option<&Tensor>| -> Result<Tensor> {
            Ok(match t {
                // CP form: t [r, r, kh, kw] between the factors.
                Some(t) => Tensor::f_einsum(
                    "i j k l, j r, i p -> p r k l",
                    &[f(t)?, f(b)?, f(a)?],
                    None::<&[i64]>,
                )?,
                None => f(a)?.f_matmul(&f(b)?)?,
            })
        };
        let one = half(w1a, w1b, parts.get("hada_t1"))?;
        return Ok(one.f_mul(&half(w2a, w2b, parts.get("hada_t2"))?)?);
    }
    lokr(parts)
}

/// alpha / rank, or 1 without alpha.
fn scale_of(alpha: Option<f64>, rank: i64) -> f64 {
    match alpha {
        Some(alpha) if rank > 0 => alpha / rank as f64,
        _ => 1.0,
    }
}

/// LoKr: `kron(w1, w2)`, each factor stored whole or as a low-rank product; alpha/rank only
/// applies when a factor is decomposed (ComfyUI `LoKrAdapter`).
fn lokr(parts: &LayerParts) -> Result<Tensor> {
    let f = |t: &Tensor| t.f_to_kind(Kind::Float);
    let factor = |whole: &str, a: &str, b: &str| -> Result<Tensor> {
        if let Some(w) = parts.get(whole) {
            return Ok(f(w)?);
        }
        match (parts.get(a), parts.get(b)) {
            (Some(a_), Some(b_)) => Ok(match (whole, parts.get("lokr_t2")) {
                ("lokr_w2", Some(t)) => Tensor::f_einsum(
                    "i j k l, i p, j r -> p r k l",
                    &[f(t)?, f(a_)?, f(b_)?],
                    None::<&[i64]>,
                )?,
                _ => f(a_)?
                    .f_matmul(&f(b_)?.f_flatten(1, -1)?)?
                    .f_reshape([&[a_.size()[0]], &b_.size()[1..]].concat().as_slice())?,
            }),
            _ => bail!("LoKr layer without {whole} or {a}/{b}"),
        }
    };
    let w1 = factor("lokr_w1", "lokr_w1_a", "lokr_w1_b")?;
    let w2 = factor("lokr_w2", "lokr_w2_a", "lokr_w2_b")?;
    // A 2-D w1 against a 4-D (conv) w2: kron over the first two dims, w1 broadcast over the kernel.
    let w1 = match (w1.dim(), w2.dim()) {
        (2, 4) => w1.f_unsqueeze(-1)?.f_unsqueeze(-1)?,
        _ => w1,
    };
    Ok(w1.f_kron(&w2)?)
}

#[cfg(test)]
mod tests {
    use super::super::shapes::split_key;
    use super::*;
    use tch::Device;

    fn t(values: &[f32], shape: &[i64]) -> Tensor {
        Tensor::from_slice(values).reshape(shape)
    }

    fn parts(list: Vec<(&'static str, Tensor)>) -> LayerParts {
        LayerParts(list.into_iter().collect())
    }

    #[test]
    fn lora_delta_is_up_times_down_scaled_by_alpha_over_rank() {
        let p = parts(vec![
            ("lora_down.weight", t(&[1.0, 2.0, 3.0, 4.0], &[2, 2])),
            (
                "lora_up.weight",
                t(&[1.0, 0.0, 0.0, 1.0, 1.0, 1.0], &[3, 2]),
            ),
            ("alpha", Tensor::from(1.0f32)),
        ]);
        let d = delta("x", &p, "w", &[3, 2]).unwrap();
        // up @ down = [[1,2],[3,4],[4,6]], × 1/2.
        let want = t(&[0.5, 1.0, 1.5, 2.0, 2.0, 3.0], &[3, 2]);
        assert!(d.allclose(&want, 1e-6, 1e-6, false));
    }

    #[test]
    fn lokr_with_whole_factors_is_a_kronecker_product_unscaled() {
        let p = parts(vec![
            ("lokr_w1", t(&[1.0, 2.0], &[1, 2])),
            ("lokr_w2", t(&[1.0, 1.0], &[2, 1])),
            ("alpha", Tensor::from(8.0f32)),
        ]);
        let d = delta("x", &p, "w", &[2, 2]).unwrap();
        assert!(d.allclose(&t(&[1.0, 2.0, 1.0, 2.0], &[2, 2]), 1e-6, 1e-6, false));
    }

    #[test]
    fn a_delta_of_the_wrong_size_is_an_error() {
        let p = parts(vec![
            (
                "lora_down.weight",
                Tensor::ones([2, 4], (Kind::Float, Device::Cpu)),
            ),
            (
                "lora_up.weight",
                Tensor::ones([3, 2], (Kind::Float, Device::Cpu)),
            ),
        ]);
        assert!(delta("x", &p, "w", &[3, 5]).is_err());
    }

    #[test]
    fn keys_split_on_the_longest_suffix() {
        assert_eq!(
            split_key("lora_unet_x.lora_down.weight"),
            Some(("lora_unet_x", "lora_down.weight"))
        );
        assert_eq!(split_key("a.b.lokr_w1_a"), Some(("a.b", "lokr_w1_a")));
        assert_eq!(
            split_key("unet.a.lora_A.weight"),
            Some(("unet.a", "lora_A.weight"))
        );
        assert_eq!(split_key("x.alpha"), Some(("x", "alpha")));
        assert_eq!(split_key("x.weight"), None);
    }
}
