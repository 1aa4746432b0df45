//! GroupNorm with statistics that can be recorded on one pass and reused on another, so that
//! VAE tiles all normalise with the whole image's statistics instead of their own (the A1111
//! "Tiled VAE" extension, `tile_utils/attn.py` / `vae_tiling.py` `GroupNormParam`).
use anyhow::{bail, Result};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Per-group mean and variance `[B, G, 1]` of one GroupNorm's input.
#[derive(Debug)]
pub struct GroupStats {
    mean: Tensor,
    var: Tensor,
}

impl GroupStats {
    fn shallow_clone(&self) -> Self {
        Self {
            mean: self.mean.shallow_clone(),
            var: self.var.shallow_clone(),
        }
    }

    /// The statistics of the union of disjoint parts from each part's statistics and its
    /// share of the union, layer by layer: the weighted mean of means, and of (var + mean²)
    /// less the union's mean².
    pub fn pool(parts: &[(Vec<GroupStats>, f64)]) -> Result<Vec<GroupStats>> {
        let Some((first, _)) = parts.first() else {
            bail!("no GroupNorm statistics to pool");
        };
        if parts.iter().any(|(p, _)| p.len() != first.len()) {
            bail!("GroupNorm statistics of the parts do not match layer for layer");
        }
        let total: f64 = parts.iter().map(|(_, share)| share).sum();
        Ok((0..first.len())
            .map(|layer| {
                let average = |f: &dyn Fn(&GroupStats) -> Tensor| {
                    let zero = Tensor::zeros_like(&first[layer].mean);
                    parts
                        .iter()
                        .fold(zero, |sum, (p, share)| sum + f(&p[layer]) * (share / total))
                };
                let mean = average(&|s| s.mean.shallow_clone());
                let square = average(&|s| &s.var + s.mean.square());
                let var = (square - mean.square()).clamp_min(0.0);
                GroupStats { mean, var }
            })
            .collect())
    }
}

/// Where a GroupNorm takes its statistics from.
pub enum GroupNormStats<'a> {
    /// From its own input, as `nn::GroupNorm` does.
    Normal,
    /// From its own input, appending them (over the `Owned` part only) in layer order.
    Record(&'a mut Vec<GroupStats>, Owned),
    /// From a recording, consumed in the same layer order.
    Use(std::slice::Iter<'a, GroupStats>),
    /// From a recording, as `Use`, while recording its own input's as `Record`: one step
    /// of refining an estimate of the whole image's statistics.
    Refine(
        std::slice::Iter<'a, GroupStats>,
        &'a mut Vec<GroupStats>,
        Owned,
    ),
}

/// The part of a tile its recorded statistics cover, as fractions of its height and width:
/// the cells nearer to it than to a neighbour, so the tiles' parts cover the image once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Owned {
    pub top: f64,
    pub bottom: f64,
    pub left: f64,
    pub right: f64,
}

impl Owned {
    pub const WHOLE: Self = Self {
        top: 0.0,
        bottom: 1.0,
        left: 0.0,
        right: 1.0,
    };

    /// `x` `[B, C, H, W]` narrowed to this part.
    fn of(&self, x: &Tensor) -> Tensor {
        let s = x.size();
        let cut = |dim: usize, from: f64, to: f64| {
            let n = s[dim] as f64;
            let start = (from * n).round() as i64;
            (start, ((to * n).round() as i64 - start).max(1))
        };
        let ((y, h), (x0, w)) = (cut(2, self.top, self.bottom), cut(3, self.left, self.right));
        x.narrow(2, y, h).narrow(3, x0, w)
    }
}

/// `norm` over `x` `[B, C, H, W]`, with its statistics taken as `stats` says; the affine
/// weight and bias apply as usual.
pub fn group_norm(
    norm: &nn::GroupNorm,
    eps: f64,
    x: &Tensor,
    stats: &mut GroupNormStats,
) -> Result<Tensor> {
    let (b, g) = (x.size()[0], norm.num_groups);
    let grouped = || x.to_kind(Kind::Float).reshape([b, g, -1]);
    let given = |recorded: &mut std::slice::Iter<GroupStats>| match recorded.next() {
        Some(s) if s.mean.size()[..2] == [b, g] => Ok(s.shallow_clone()),
        _ => bail!("recorded GroupNorm statistics do not match this pass's layers"),
    };
    let stats_of = |t: &Tensor| {
        let (var, mean) =
            t.to_kind(Kind::Float)
                .reshape([b, g, -1])
                .var_mean_dim([2].as_slice(), false, true);
        // Copied out: libtorch's `var_mean` results keep a buffer the size of their input
        // alive, so each tile's recorded statistics held a whole activation (measured on the
        // 2048 px decode of the tiny model with an 8× VAE, 25 tiles: 1.84 GiB resident after
        // the first run of the tiles, 0.24 GiB with the copies; at 8192 px it grew past
        // 12 GiB).
        GroupStats {
            mean: mean.copy(),
            var: var.copy(),
        }
    };
    let GroupStats { mean, var } = match stats {
        GroupNormStats::Normal => return Ok(norm.forward(x)),
        GroupNormStats::Record(recorded, owned) => {
            recorded.push(stats_of(&owned.of(x)));
            stats_of(x)
        }
        GroupNormStats::Use(recorded) => given(recorded)?,
        GroupNormStats::Refine(estimate, recorded, owned) => {
            recorded.push(stats_of(&owned.of(x)));
            given(estimate)?
        }
    };
    // Folded into one per-channel scale and shift, so the only full-size temporary is the output.
    let c = x.size()[1];
    let per_channel = |t: &Option<Tensor>, default: f64| match t {
        Some(t) => t.to_kind(Kind::Float).view([1, g, c / g, 1]),
        None => Tensor::full([1, g, c / g, 1], default, (Kind::Float, x.device())),
    };
    let scale = (var + eps).rsqrt().unsqueeze(2) * per_channel(&norm.ws, 1.0);
    let shift = per_channel(&norm.bs, 0.0) - mean.unsqueeze(2) * &scale;
    let mut normed = grouped().view([b, g, c / g, -1]) * scale;
    let _ = normed.f_add_(&shift)?;
    let normed = normed.reshape(x.size());
    Ok(normed.to_kind(x.kind()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    #[test]
    fn recorded_and_reused_statistics_match_plain_group_norm() {
        let vs = VarStore::new(Device::Cpu);
        let norm = nn::group_norm(vs.root(), 4, 8, Default::default());
        tch::manual_seed(0);
        let x = Tensor::randn([2, 8, 5, 7], (Kind::Float, Device::Cpu)) * 3.0 + 1.0;
        let plain = norm.forward(&x);
        let mut stats = Vec::new();
        let recorded = group_norm(
            &norm,
            1e-5,
            &x,
            &mut GroupNormStats::Record(&mut stats, Owned::WHOLE),
        )
        .unwrap();
        let reused = group_norm(&norm, 1e-5, &x, &mut GroupNormStats::Use(stats.iter())).unwrap();
        let diff = |a: &Tensor| f64::try_from((a - &plain).abs().max()).unwrap();
        assert!(diff(&recorded) < 1e-5, "{}", diff(&recorded));
        assert!(diff(&reused) < 1e-5, "{}", diff(&reused));
    }
}
