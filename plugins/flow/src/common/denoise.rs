//! The denoiser's batching: each conditioning is a bundle of tensors (`[context, pooled, …]`,
//! one row each); conditionings whose contexts have the same token count run as one
//! transformer call (each expanded to the latent batch's rows), others one call each; a latent
//! whose sides are not whole patches is padded for the call ([`on_patches`]).
use anyhow::{anyhow, Result};
use tch::Tensor;

/// D(x, σ) = x − σ·v for each of `conds`; `velocity(xs, parts)` runs the transformer at σ on
/// the repeated latents `xs` and each of the first `parts` tensors of the group's
/// conditionings batched (part 0 the context, `[1, T, d]`; the others `[1, …]`). `what` names
/// the bundle in errors.
pub fn denoise(
    x: &Tensor,
    sigma: f64,
    conds: &[&[Tensor]],
    (parts, what): (usize, &str),
    velocity: impl Fn(&Tensor, &[Tensor]) -> Result<Tensor>,
) -> Result<Vec<Tensor>> {
    for c in conds {
        if c.len() < parts {
            return Err(anyhow!("a conditioning is {what}"));
        }
    }
    let rows = x.size()[0];
    let same = conds.windows(2).all(|w| w[0][0].size() == w[1][0].size());
    let groups: Vec<Vec<usize>> = match same {
        true => vec![(0..conds.len()).collect()],
        false => (0..conds.len()).map(|i| vec![i]).collect(),
    };
    let mut out: Vec<Option<Tensor>> = (0..conds.len()).map(|_| None).collect();
    for group in groups {
        let batched: Vec<Tensor> = (0..parts)
            .map(|p| {
                let each: Vec<Tensor> = group
                    .iter()
                    .map(|&i| {
                        let t = &conds[i][p];
                        let mut shape = t.size();
                        shape[0] = rows;
                        t.expand(shape.as_slice(), false)
                    })
                    .collect();
                Tensor::cat(&each, 0)
            })
            .collect();
        let n = group.len() as i64;
        let xs = x.repeat([n, 1, 1, 1]);
        let v = velocity(&xs, &batched)?;
        let x0 = &xs - v * sigma;
        for (j, &i) in group.iter().enumerate() {
            out[i] = Some(x0.narrow(0, j as i64 * rows, rows));
        }
    }
    Ok(out.into_iter().flatten().collect())
}

/// `f` on `x` `[B, C, h, w]` padded to sides that are multiples of `patch` (circular padding,
/// ComfyUI's `pad_to_patch_size`, which its Flux and MMDiT apply to every input), its result
/// `[B, C', h', w']` cropped back to `h × w`. An image of 8·odd px, or a tiled pass's odd
/// tile, has an odd latent side; diffusers refuses such sizes.
pub fn on_patches(
    x: &Tensor,
    patch: i64,
    f: impl FnOnce(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let s = x.size();
    let (h, w) = (s[s.len() - 2], s[s.len() - 1]);
    let pad = |side: i64| (patch - side % patch) % patch;
    if pad(h) == 0 && pad(w) == 0 {
        return f(x);
    }
    let padded = x.f_pad([0, pad(w), 0, pad(h)], "circular", None)?;
    Ok(f(&padded)?.narrow(2, 0, h).narrow(3, 0, w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_sides_are_padded_circularly_and_cropped_back() {
        let x =
            Tensor::arange(2 * 3 * 5, (tch::Kind::Float, tch::Device::Cpu)).reshape([1, 2, 3, 5]);
        let mut seen = Vec::new();
        let out = on_patches(&x, 2, |p| {
            seen = p.size();
            // The padded row and column repeat the first ones (circular).
            assert!(p.narrow(2, 3, 1).equal(&p.narrow(2, 0, 1)));
            assert!(p.narrow(3, 5, 1).equal(&p.narrow(3, 0, 1)));
            Ok(p * 2.0)
        })
        .unwrap();
        assert_eq!(seen, [1, 2, 4, 6]);
        assert!(out.equal(&(&x * 2.0)));
        let even = Tensor::zeros([1, 2, 4, 6], (tch::Kind::Float, tch::Device::Cpu));
        let same = on_patches(&even, 2, |p| {
            assert_eq!(p.size(), [1, 2, 4, 6]);
            Ok(p.shallow_clone())
        });
        assert_eq!(same.unwrap().size(), [1, 2, 4, 6]);
    }
}
