//! The denoiser's batching: each conditioning is a bundle of tensors (`[context, pooled, …]`,
//! one row each); conditionings whose contexts have the same token count run as one
//! transformer call (each expanded to the latent batch's rows), others one call each.
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
