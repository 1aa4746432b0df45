//! The Beta distribution's quantile function, for ComfyUI's `beta_scheduler`, which calls
//! `scipy.stats.beta.ppf`.

/// ln Γ(x) for x > 0: Lanczos approximation (g = 7, 9 terms), about 1e-15 relative.
fn ln_gamma(x: f64) -> f64 {
    const G: f64 = 7.0;
    #[allow(clippy::excessive_precision)] // the published coefficients, as printed
    const C: [f64; 9] = [
        0.999_999_999_999_809_93,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_13,
        -176.615_029_162_140_59,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_571_6e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + G + 0.5;
    let series = C[1..]
        .iter()
        .enumerate()
        .fold(C[0], |acc, (i, c)| acc + c / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// Continued fraction of the incomplete beta function, by the modified Lentz method
/// (Numerical Recipes, 3rd ed., §6.4 `betacf`).
fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut h = d;
    for m in 1..1000 {
        let m = m as f64;
        let m2 = 2.0 * m;
        for aa in [
            m * (b - m) * x / ((qam + m2) * (a + m2)),
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
        ] {
            d = 1.0 + aa * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + aa / c;
            if c.abs() < TINY {
                c = TINY;
            }
            h *= d * c;
        }
        if (d * c - 1.0).abs() < 1e-16 {
            break;
        }
    }
    h
}

/// The regularised incomplete beta function I_x(a, b), the Beta(a, b) CDF.
fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln();
    if x < (a + 1.0) / (a + b + 2.0) {
        ln_front.exp() * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - ln_front.exp() * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

/// The Beta(a, b) quantile of `q` by bisection on the (monotone) CDF, to f64 resolution.
fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0_f64, 1.0_f64);
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return 1.0;
    }
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if beta_cdf(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// ComfyUI's beta timesteps, descending: `rint(ppf(1 - i / steps) * t_max)` for i < steps.
/// ComfyUI drops repeated timesteps, which only happens for hundreds of steps and would return
/// fewer sigmas; we instead move each repeat to the nearest free timestep (up from the low
/// end, then down from the top), so there are always `steps` distinct timesteps.
/// `steps` must be at most `t_max + 1`.
pub(crate) fn timesteps(steps: usize, t_max: usize, a: f64, b: f64) -> Vec<usize> {
    let mut ts: Vec<f64> = (0..steps)
        .map(|i| {
            (beta_ppf(1.0 - i as f64 * (1.0 / steps as f64), a, b) * t_max as f64).round_ties_even()
        })
        .collect();
    for k in (0..steps.saturating_sub(1)).rev() {
        ts[k] = ts[k].max(ts[k + 1] + 1.0);
    }
    for k in 0..steps {
        let cap = if k == 0 {
            t_max as f64
        } else {
            ts[k - 1] - 1.0
        };
        ts[k] = ts[k].min(cap).max(0.0);
    }
    ts.into_iter().map(|t| t as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ln_gamma_matches_known_values() {
        assert!((ln_gamma(0.6) - 0.398_233_858_069_234_8).abs() < 1e-13);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
    }

    #[test]
    fn ppf_inverts_the_cdf_and_is_symmetric_for_equal_shapes() {
        for q in [0.01, 0.2, 0.5, 0.77, 0.999] {
            let x = beta_ppf(q, 0.6, 0.6);
            assert!((beta_cdf(x, 0.6, 0.6) - q).abs() < 1e-13, "q={q}");
            assert!(
                (beta_ppf(1.0 - q, 0.6, 0.6) - (1.0 - x)).abs() < 1e-12,
                "q={q}"
            );
        }
    }

    #[test]
    fn many_steps_still_give_distinct_descending_timesteps() {
        let ts = timesteps(900, 999, 0.6, 0.6);
        assert_eq!(ts.len(), 900);
        assert!(ts.windows(2).all(|w| w[0] > w[1]));
        assert_eq!(ts[0], 999);
    }
}
