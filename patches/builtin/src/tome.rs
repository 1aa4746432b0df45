//! Token Merging for Stable Diffusion (Bolya & Hoffman 2023; dbolya/tomesd, built into A1111
//! as "Token merging ratio"): before the self-attention of the shallow transformer blocks,
//! `ratio` of the tokens are merged (averaged) into their most similar partner, and after it
//! every merged token takes its partner's output — the attention runs on fewer tokens.
//!
//! tomesd's `compute_merge` and `bipartite_soft_matching_random2d` with its defaults: blocks
//! whose token count is at most `max_downsample`² times below the latent's; in each `sx × sy`
//! cell one token is a destination, the others sources; the `r = ⌊N · ratio⌋` sources most
//! cosine-similar (on the block's input) to a destination are averaged into it. Self-attention
//! only (tomesd's `merge_attn`; its `merge_crossattn` and `merge_mlp`, off by default and "not
//! recommended", are not offered). Unlike tomesd, the destination of each cell is a draw from
//! the image's seed (see `seeded`) instead of a torch generator's, and both index sets are in
//! ascending token order (tomesd's unstable `argsort` of −1/0 leaves their order to the sort
//! kernel; attention does not depend on the order of its tokens).
use host_api::tch::{Kind, Tensor};
use host_api::{AttentionCtx, AttentionFn, Error, Options, Patch, PatchModel, Result};

use crate::options::{py_bool, py_float, whole, within};
use crate::seeded::{draw, per_image, seeds};

pub struct ToMe {
    ratio: f64,
    max_downsample: u32,
    sx: u32,
    sy: u32,
    use_rand: bool,
    seeds: Vec<i64>,
}

/// tomesd's merge of one image's rows: the index sets and `merge` / `unmerge`.
struct Merge {
    /// Sources (`a_idx`) and destinations (`b_idx`), `[1, n, 1]` int64.
    a: Tensor,
    b: Tensor,
    unm: Tensor,
    src: Tensor,
    dst: Tensor,
}

fn expand(idx: &Tensor, rows: i64, c: i64) -> Result<Tensor> {
    let n = idx.size()[1];
    Ok(idx.f_expand([rows, n, c], false)?)
}

impl Merge {
    fn split(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let (rows, c) = (x.size()[0], x.size()[2]);
        Ok((
            x.f_gather(1, &expand(&self.a, rows, c)?, false)?,
            x.f_gather(1, &expand(&self.b, rows, c)?, false)?,
        ))
    }

    fn merge(&self, x: &Tensor) -> Result<Tensor> {
        let (src, dst) = self.split(x)?;
        let (rows, c) = (x.size()[0], x.size()[2]);
        let unm = src.f_gather(1, &expand(&self.unm, rows, c)?, false)?;
        let src = src.f_gather(1, &expand(&self.src, rows, c)?, false)?;
        let dst =
            dst.f_internal_scatter_reduce(1, &expand(&self.dst, rows, c)?, &src, "mean", true)?;
        Ok(Tensor::f_cat(&[unm, dst], 1)?)
    }

    fn unmerge(&self, x: &Tensor, n: i64) -> Result<Tensor> {
        let s = x.size();
        let (rows, c) = (s[0], s[2]);
        let unm_len = self.unm.size()[1];
        let unm = x.narrow(1, 0, unm_len);
        let dst = x.narrow(1, unm_len, s[1] - unm_len);
        let src = dst.f_gather(1, &expand(&self.dst, rows, c)?, false)?;
        let at = |idx: &Tensor| -> Result<Tensor> {
            let a = self.a.f_expand([rows, self.a.size()[1], 1], false)?;
            expand(
                &a.f_gather(1, &idx.f_expand([rows, idx.size()[1], 1], false)?, false)?,
                rows,
                c,
            )
        };
        let mut out = Tensor::f_zeros([rows, n, c], (x.kind(), x.device()))?;
        out = out.f_scatter(1, &expand(&self.b, rows, c)?, &dst)?;
        out = out.f_scatter(1, &at(&self.unm)?, &unm)?;
        out = out.f_scatter(1, &at(&self.src)?, &src)?;
        Ok(out)
    }
}

impl ToMe {
    /// tomesd `bipartite_soft_matching_random2d` on one image's rows `metric` `[B, N, C]`
    /// over an `h × w` grid; None when nothing merges.
    fn matching(
        &self,
        metric: &Tensor,
        (h, w): (i64, i64),
        r: i64,
        pick: Option<&dyn Fn(u64) -> u64>,
    ) -> Result<Option<Merge>> {
        let n = metric.size()[1];
        let (sx, sy) = (i64::from(self.sx), i64::from(self.sy));
        let (hsy, wsx) = (h / sy, w / sx);
        if r <= 0 || hsy * wsx == 0 {
            return Ok(None);
        }
        // One destination per sy × sx cell (its position drawn, or the top left).
        let mut is_dst = vec![false; n as usize];
        for i in 0..hsy {
            for j in 0..wsx {
                let k = (i * wsx + j) as u64;
                let p = pick.map_or(0, |f| (f(k) % (sx * sy) as u64) as i64);
                let (dy, dx) = (p / sx, p % sx);
                is_dst[((i * sy + dy) * w + j * sx + dx) as usize] = true;
            }
        }
        let index = |want: bool| {
            let v: Vec<i64> = (0..n).filter(|&t| is_dst[t as usize] == want).collect();
            Tensor::from_slice(&v)
                .to_device(metric.device())
                .reshape([1, -1, 1])
        };
        let (a, b) = (index(false), index(true));
        let mut m = Merge {
            unm: a.shallow_clone(),
            src: a.shallow_clone(),
            dst: a.shallow_clone(),
            a,
            b,
        };
        let metric = metric / metric.f_norm_scalaropt_dim(2, [-1i64].as_slice(), true)?;
        let (ma, mb) = m.split(&metric)?;
        let scores = ma.f_matmul(&mb.f_transpose(-1, -2)?)?;
        let r = r.min(ma.size()[1]);
        let (node_max, node_idx) = scores.f_max_dim(-1, false)?;
        let edge = node_max
            .f_argsort_stable(false, -1, true)?
            .f_unsqueeze(-1)?;
        let na = edge.size()[1];
        m.unm = edge.narrow(1, r, na - r);
        m.src = edge.narrow(1, 0, r);
        m.dst = node_idx.f_unsqueeze(-1)?.f_gather(1, &m.src, false)?;
        Ok(Some(m))
    }
}

impl Patch for ToMe {
    const NAME: &'static str = "tome";
    const ALIASES: &'static [&'static str] = &["ToMe", "token_merging"];
    const OPTIONS: &'static [&'static str] = &["ratio", "max_downsample", "sx", "sy", "use_rand"];

    fn new(options: Options<'_>, model: &PatchModel) -> Result<Self> {
        let max_downsample = whole(&options, "max_downsample", 1)?;
        if ![1, 2, 4, 8].contains(&max_downsample) {
            return Err(Error(format!(
                "option `max_downsample` must be 1, 2, 4 or 8, got {max_downsample}"
            )));
        }
        let stride = |key: &str| -> Result<u32> {
            match whole(&options, key, 2)? {
                0 => Err(Error(format!("option `{key}` must be at least 1, got 0"))),
                v => Ok(v),
            }
        };
        Ok(Self {
            ratio: within(&options, "ratio", 0.5, 0.0, 0.99)?,
            max_downsample,
            sx: stride("sx")?,
            sy: stride("sy")?,
            use_rand: options.flag("use_rand", true)?,
            seeds: seeds(model)?,
        })
    }

    fn infotext(&self) -> Vec<(String, String)> {
        // A1111 records its built-in ToMe as "Token merging ratio" alone; the rest are ours.
        vec![
            ("Token merging ratio".into(), py_float(self.ratio)),
            (
                "Token merging max downsample".into(),
                self.max_downsample.to_string(),
            ),
            ("Token merging sx".into(), self.sx.to_string()),
            ("Token merging sy".into(), self.sy.to_string()),
            ("Token merging random".into(), py_bool(self.use_rand)),
        ]
    }

    fn attention(
        &self,
        ctx: &AttentionCtx,
        x: &Tensor,
        normed: Tensor,
        attention: &AttentionFn<'_>,
    ) -> Result<Tensor> {
        if normed.size() != x.size() {
            // An earlier patch of the chain rearranged the tokens (HyperTile's tiles): the
            // block input no longer measures them.
            return attention.run(&normed);
        }
        let n = x.size()[1];
        let original = i64::from(ctx.latent_height) * i64::from(ctx.latent_width);
        // tomesd: ceil(sqrt(original_tokens // N)).
        let downsample = ((original / n.max(1)) as f64).sqrt().ceil() as i64;
        if downsample > i64::from(self.max_downsample) {
            return attention.run(&normed);
        }
        let grid = (i64::from(ctx.height), i64::from(ctx.width));
        let r = (n as f64 * self.ratio) as i64;
        per_image(x, &normed, &self.seeds, |x, normed, seed| {
            // tomesd: an odd batch turns the random destinations off.
            let random = self.use_rand && x.size()[0] % 2 == 0;
            let draw = |k: u64| draw(seed, ctx.hook.sigma, ctx.transformer, k);
            let pick = random.then_some(&draw as &dyn Fn(u64) -> u64);
            let metric = x.f_to_kind(Kind::Float)?;
            match self.matching(&metric, grid, r, pick)? {
                None => attention.run(normed),
                Some(m) => {
                    let out = attention.run(&m.merge(normed)?)?;
                    m.unmerge(&out, n)
                }
            }
        })
    }
}
