//! Working memory of one UNet call, traced block by block as `UNetModel::forward` runs them:
//! the skip connections stored so far, plus what the block being run holds. Everything is
//! counted in values per latent of the batch, then scaled by the batch and the dtype.
//!
//! Per block (beyond its input, which is the last stored skip or the concatenation):
//! - a ResBlock from `c_in` to `c_out` channels on `n` cells holds `(2·c_in + 4·c_out)·n`
//!   (GroupNorm and SiLU of the input, the first conv, its norm, the second conv, the skip
//!   projection and the sum);
//! - a SpatialTransformer of width `c` holds `RES_TO_TRANSFORMER·c·n` at its peak, in the
//!   GEGLU feed-forward (the `8c` projection, the `4c` GELU and the `4c` product beside the
//!   block's input, the norm, `proj_in` output and the residual); materialised attention
//!   scores add `2·heads·n²` (scores and softmax) when the kernel is not a flash one;
//! - a down-sample holds its output; an up-sample the nearest-upsampled copy and the conv
//!   output, both at 4× the cells.
use super::config::UNetConfig;
use crate::vae::memory::AttentionMemory;

/// Values a SpatialTransformer holds per channel and cell at its peak (see the module doc).
pub const TRANSFORMER_LIVE: u64 = 22;

/// Cells of level `level` for an `h × w` latent (each down-sample halves, rounding up).
fn cells(h: i64, w: i64, level: usize) -> u64 {
    let side = |s: i64| ((s.max(0) as u64) + (1 << level) - 1) >> level;
    side(h) * side(w)
}

fn res(c_in: i64, c_out: i64, n: u64) -> u64 {
    (2 * c_in as u64 + 4 * c_out as u64) * n
}

fn transformer(c: i64, heads: i64, n: u64, attention: AttentionMemory) -> u64 {
    let scores = match attention {
        AttentionMemory::Efficient => 0,
        AttentionMemory::Materialized => 2 * heads.max(1) as u64 * n.saturating_mul(n),
    };
    TRANSFORMER_LIVE * c as u64 * n + scores
}

/// A ResBlock, then the level's SpatialTransformer if it has one: the larger working set.
fn res_attention(
    cfg: &UNetConfig,
    level: usize,
    c_in: i64,
    n: u64,
    attention: AttentionMemory,
) -> u64 {
    let width = cfg.model_channels * cfg.channel_mult[level];
    let mut peak = res(c_in, width, n);
    if cfg.transformer_depth[level] > 0 {
        peak = peak.max(width as u64 * n + transformer(width, cfg.heads[level], n, attention));
    }
    peak
}

/// Peak working bytes of one call on `batch` latents of `h × w` cells, `element_bytes` each.
pub fn working_bytes(
    cfg: &UNetConfig,
    (h, w): (i64, i64),
    batch: u64,
    element_bytes: u64,
    attention: AttentionMemory,
) -> u64 {
    let levels = cfg.channel_mult.len();
    let mc = cfg.model_channels;
    let mut skips: Vec<u64> = Vec::new(); // values of each stored skip
    let mut peak = 0u64;
    let mut step = |stored: &[u64], working: u64| {
        peak = peak.max(stored.iter().sum::<u64>() + working);
    };
    // conv_in
    let n0 = cells(h, w, 0);
    step(&skips, (cfg.in_channels + mc) as u64 * n0);
    skips.push(mc as u64 * n0);
    let mut ch = mc;
    let mut widths = vec![mc];
    for level in 0..levels {
        let n = cells(h, w, level);
        for _ in 0..cfg.num_res_blocks[level] {
            step(&skips, res_attention(cfg, level, ch, n, attention));
            ch = mc * cfg.channel_mult[level];
            skips.push(ch as u64 * n);
            widths.push(ch);
        }
        if level + 1 < levels {
            let down = ch as u64 * cells(h, w, level + 1);
            step(&skips, down);
            skips.push(down);
            widths.push(ch);
        }
    }
    let n = cells(h, w, levels - 1);
    let mid = res(ch, ch, n).max(ch as u64 * n + transformer(ch, cfg.mid_heads, n, attention));
    step(&skips, ch as u64 * n + mid);
    for level in (0..levels).rev() {
        let n = cells(h, w, level);
        for i in 0..=cfg.num_res_blocks[level] {
            let skip = widths.pop().unwrap_or(0);
            skips.pop();
            let c_in = ch + skip;
            let mut working = c_in as u64 * n + res_attention(cfg, level, c_in, n, attention);
            ch = mc * cfg.channel_mult[level];
            if level > 0 && i == cfg.num_res_blocks[level] {
                let up = cells(h, w, level - 1);
                working = working.max(ch as u64 * (n + 2 * up));
            }
            step(&skips, working);
        }
    }
    peak.saturating_mul(batch).saturating_mul(element_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::{sd1, sdxl};

    #[test]
    fn the_trace_counts_skips_and_the_widest_transformer() {
        let sd = sd1::unet();
        // SD 1.x at 64×64 cells: the peak is in the first up level's transformers, beside the
        // level-1 skips still stored.
        let n = 64 * 64;
        let bytes = working_bytes(&sd, (64, 64), 1, 1, AttentionMemory::Efficient);
        // Stored: conv_in's and the first res block's skips (the second was just popped);
        // working: the concatenation (640 from below + 320), the transformer's input, its peak.
        let expected = 2 * 320 * n + 960 * n + 320 * n + TRANSFORMER_LIVE * 320 * n;
        assert_eq!(bytes, expected);
        assert_eq!(
            working_bytes(&sd, (64, 64), 2, 4, AttentionMemory::Efficient),
            8 * expected
        );
        let scores = working_bytes(&sd, (64, 64), 1, 1, AttentionMemory::Materialized);
        assert_eq!(scores - bytes, 2 * 8 * n * n);
        // Without materialised scores the working set is linear in the cells.
        let xl = sdxl::unet();
        let small = working_bytes(&xl, (64, 64), 1, 1, AttentionMemory::Efficient);
        let large = working_bytes(&xl, (128, 128), 1, 1, AttentionMemory::Efficient);
        assert_eq!(large, 4 * small);
    }
}
