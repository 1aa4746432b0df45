//! Conditioning batching, beside the model rather than inside it (ComfyUI's `samplers.py`
//! `calc_cond_batch`): the conditionings of one denoiser call become as few UNet calls as keep
//! every image bit-identical to its single run, with the rows of a pass built once.
use std::cell::RefCell;

use anyhow::{bail, Result};
use tch::{Device, Kind, Tensor};

use crate::text::conditioner::Conditioning;

/// One batched denoiser call: the latent rows `xs` (`n` per image, image-major, the image's
/// latent repeated), their text `context` and `vector` conditioning, and `n`; returns the
/// denoised rows in that order.
pub(crate) type DenoiseRows<'a> =
    dyn Fn(&Tensor, &Tensor, Option<&Tensor>, i64) -> Result<Tensor> + 'a;

/// The denoised latent `x` for each conditioning, from as few `denoise_rows` calls as keep
/// each image bit-identical to its single run. Contexts of different lengths (prompts of
/// different chunk counts) are repeated to a common length, which leaves cross-attention
/// unchanged (ComfyUI's `CONDCrossAttn.concat`); when that would more than quadruple one, they
/// run apart, as A1111 does. `rows` keeps the conditioning rows of the last call, made on
/// `on`'s device and dtype.
pub(crate) fn calc_cond_batch(
    x: &Tensor,
    conds: &[&Conditioning],
    rows: &RowCache,
    on: (Device, Kind),
    denoise_rows: &DenoiseRows,
) -> Result<Vec<Tensor>> {
    if conds.is_empty() {
        bail!("no conditioning to denoise with");
    }
    let batch = x.size()[0];
    if conds.len() == 1 && batch > 1 {
        // One row per image: a batched call would run the convolutions at another batch
        // size than the image's single run (batch 1), where the CPU kernels pick another
        // algorithm and round differently. Image by image keeps each bit-identical.
        let each = (0..batch)
            .map(|i| {
                let one = x.narrow(0, i, 1);
                Ok(calc_cond_batch(&one, conds, rows, on, denoise_rows)?.remove(0))
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(vec![Tensor::f_cat(&each, 0)?]);
    }
    let lengths: Vec<i64> = conds.iter().map(|c| c.context.size()[1]).collect();
    let common = lengths.iter().fold(1, |a, b| lcm(a, *b));
    if lengths.iter().any(|l| common / l > 4) {
        return conds
            .iter()
            .map(|c| Ok(calc_cond_batch(x, &[c], rows, on, denoise_rows)?.remove(0)))
            .collect();
    }
    let n = conds.len() as i64;
    let (context, vector) = rows.rows(conds, batch, common, on)?;
    let xs = x.repeat_interleave_self_int(n, 0, None);
    let denoised = denoise_rows(&xs, &context, vector.as_ref(), n)?;
    let mut shape = vec![batch, n];
    shape.extend_from_slice(&denoised.size()[1..]);
    let denoised = denoised.view(shape.as_slice());
    Ok((0..n).map(|j| denoised.select(1, j)).collect())
}

/// The conditioning rows of the last batched call, kept while a pass passes the same
/// tensors at every step.
#[derive(Default)]
pub(crate) struct RowCache(RefCell<Option<Prepared>>);

/// Conditioning rows built for a batch, and the tensors they were built from. Holding those
/// keeps their storage alive, so no other tensor can have their address while they are here:
/// the address, shape and type name them.
struct Prepared {
    inputs: Vec<Tensor>,
    batch: i64,
    context: Tensor,
    vector: Option<Tensor>,
}

impl Prepared {
    fn same_inputs(&self, inputs: &[&Tensor]) -> bool {
        self.inputs.len() == inputs.len()
            && self.inputs.iter().zip(inputs).all(|(a, b)| {
                a.data_ptr() == b.data_ptr()
                    && a.size() == b.size()
                    && a.stride() == b.stride()
                    && a.kind() == b.kind()
                    && a.device() == b.device()
            })
    }
}

impl RowCache {
    /// Forgets the kept rows (the UNet they were for was released).
    pub fn clear(&self) {
        *self.0.borrow_mut() = None;
    }

    /// The UNet's text and vector conditioning for `batch` images, image-major (image i's
    /// rows are its conditionings in order, so each image's part of the call has the shapes
    /// of its single run: see `layers::per_image`), contexts repeated to `common` tokens, on
    /// the device and dtype of `on`. Built once and reused while the inputs are the same.
    fn rows(
        &self,
        conds: &[&Conditioning],
        batch: i64,
        common: i64,
        (device, kind): (Device, Kind),
    ) -> Result<(Tensor, Option<Tensor>)> {
        let inputs: Vec<&Tensor> = conds
            .iter()
            .flat_map(|c| std::iter::once(&c.context).chain(c.vector.as_ref()))
            .collect();
        if let Some(p) = self.0.borrow().as_ref() {
            if p.batch == batch && p.same_inputs(&inputs) {
                return Ok((
                    p.context.shallow_clone(),
                    p.vector.as_ref().map(Tensor::shallow_clone),
                ));
            }
        }
        let all_images = |ts: Vec<Tensor>| -> Result<Tensor> {
            let one = Tensor::f_cat(&ts, 0)?;
            let mut shape = vec![batch];
            shape.extend(std::iter::repeat_n(1, one.dim() - 1));
            Ok(one.repeat(shape.as_slice()).to_device(device).to_kind(kind))
        };
        let context = all_images(
            conds
                .iter()
                .map(|c| c.context.repeat([1, common / c.context.size()[1], 1]))
                .collect(),
        )?;
        let vector = match conds
            .iter()
            .map(|c| c.vector.as_ref())
            .collect::<Option<Vec<_>>>()
        {
            Some(v) => Some(all_images(v.iter().map(|t| t.shallow_clone()).collect())?),
            None => None,
        };
        *self.0.borrow_mut() = Some(Prepared {
            inputs: inputs.iter().map(|t| t.shallow_clone()).collect(),
            batch,
            context: context.shallow_clone(),
            vector: vector.as_ref().map(Tensor::shallow_clone),
        });
        Ok((context, vector))
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn lcm(a: i64, b: i64) -> i64 {
    a / gcd(a, b) * b
}
