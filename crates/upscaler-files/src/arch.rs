//! The architecture of a super-resolution file from its keys and shapes alone, no tensor data:
//! RRDBNet (both key layouts) or SRVGGNetCompact, with every convolution's shape checked
//! against its neighbours, the block, conv and upsampling counts bounded and the scale
//! computed with checked arithmetic — before any tensor operation. A file that is damaged,
//! cut or of another architecture is one error naming the tensor at fault.
use std::collections::{BTreeMap, BTreeSet};

/// RRDB blocks at most (Real-ESRGAN x4plus has 23, the largest known models a few hundred).
pub const MAX_BLOCKS: usize = 1000;
/// SRVGGNetCompact convs at most (realesr-general-x4v3 has 34).
pub const MAX_CONVS: usize = 1000;
/// Upsampling convs at most: scales 1, 2, 4, 8 and 16 exist.
pub const MAX_UPS: usize = 4;
/// Channels of any convolution at most (the widest known models use 64–256).
pub const MAX_CHANNELS: i64 = 4096;

/// A file's tensor shapes by key.
pub type Shapes = BTreeMap<String, Vec<i64>>;

/// What a file is.
#[derive(Debug, Clone, PartialEq)]
pub enum Arch {
    Rrdb {
        /// `Real-ESRGAN layout` or `ESRGAN layout`.
        layout: &'static str,
        blocks: usize,
        features: i64,
        /// Upsampling convs.
        ups: usize,
        /// Pixel-unshuffle factor of the input (1: none).
        unshuffle: i64,
        scale: i64,
    },
    Compact {
        convs: usize,
        features: i64,
        scale: i64,
    },
}

impl Arch {
    pub fn scale(&self) -> i64 {
        match self {
            Arch::Rrdb { scale, .. } | Arch::Compact { scale, .. } => *scale,
        }
    }
}

type Check<T> = std::result::Result<T, String>;

/// The keys a network reads, each checked once.
struct Reader<'a> {
    shapes: &'a Shapes,
    used: BTreeSet<&'a str>,
}

impl<'a> Reader<'a> {
    /// The shape of `key`, or an error naming it as missing.
    fn get(&mut self, key: &str) -> Check<&'a [i64]> {
        let (k, shape) = self.shapes.get_key_value(key).ok_or_else(|| {
            format!("tensor `{key}` is missing — the file is cut or of another architecture")
        })?;
        self.used.insert(k.as_str());
        Ok(shape)
    }

    /// A convolution `prefix.weight` [out, in, k, k] (k odd, at most 7) with an optional
    /// `prefix.bias` [out]; returns (out, in). `want_in` / `want_out`: the channels the
    /// network needs there.
    fn conv(
        &mut self,
        prefix: &str,
        want_in: Option<i64>,
        want_out: Option<i64>,
    ) -> Check<(i64, i64)> {
        let key = format!("{prefix}.weight");
        let shape = self.get(&key)?;
        let [out, inc, kh, kw] = shape else {
            return Err(format!(
                "tensor `{key}` has shape {shape:?}, not a conv's [out, in, k, k] — the file is damaged"
            ));
        };
        if let Some(d) = shape.iter().find(|d| **d < 1 || **d > MAX_CHANNELS) {
            return Err(format!(
                "tensor `{key}` has shape {shape:?} (a dimension of {d}) — the file is damaged"
            ));
        }
        if kh != kw || kh % 2 == 0 || *kh > 7 {
            return Err(format!(
                "tensor `{key}` has a {kh}×{kw} kernel, not a square odd one (3×3) — the file is damaged"
            ));
        }
        let channels = |what: &str, got: i64, want: Option<i64>| match want {
            Some(want) if want != got => Err(format!(
                "tensor `{key}` has {got} {what} channels, not {want} — the file is damaged"
            )),
            _ => Ok(()),
        };
        channels("input", *inc, want_in)?;
        channels("output", *out, want_out)?;
        let bias = format!("{prefix}.bias");
        if let Some((k, b)) = self.shapes.get_key_value(&bias) {
            self.used.insert(k.as_str());
            if b.as_slice() != [*out] {
                return Err(format!(
                    "tensor `{bias}` has shape {b:?}, not [{out}] for `{key}` — the file is damaged"
                ));
            }
        }
        Ok((*out, *inc))
    }

    /// Indices `i` of keys `{prefix}{i}{suffix}` present, ascending.
    fn indices(&self, prefix: &str, suffix: &str) -> Vec<usize> {
        indices_in(self.shapes.keys(), prefix, suffix)
    }

    /// Every key read, else the first left over.
    fn all_used(&self, what: &str) -> Check<()> {
        let left: Vec<&String> = self
            .shapes
            .keys()
            .filter(|k| !self.used.contains(k.as_str()))
            .collect();
        match left.first() {
            None => Ok(()),
            Some(first) => Err(format!(
                "{} {what} does not use (first: `{}`) — not a plain {what}",
                count(left.len(), "tensor"),
                cut(first)
            )),
        }
    }
}

/// `n thing` or `n things`.
pub fn count(n: usize, thing: &str) -> String {
    match n {
        1 => format!("1 {thing}"),
        n => format!("{n} {thing}s"),
    }
}

/// `text` cut to 80 characters with an ellipsis.
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Indices `0..n` with none missing; else the first missing key.
fn contiguous(found: &[usize], start: usize, key: impl Fn(usize) -> String) -> Check<usize> {
    for (expected, got) in (start..).zip(found) {
        if expected != *got {
            return Err(format!(
                "tensor `{}` is missing — the file is cut or damaged",
                key(expected)
            ));
        }
    }
    Ok(found.len())
}

/// The architecture of a file with these tensor shapes (as Spandrel detects it).
pub fn infer(shapes: &Shapes) -> Check<Arch> {
    let mut r = Reader {
        shapes,
        used: BTreeSet::new(),
    };
    let arch = if shapes.contains_key("conv_first.weight") || shapes.contains_key("model.0.weight")
    {
        rrdb(&mut r)?
    } else if shapes.contains_key("body.0.weight") && shapes.contains_key("body.1.weight") {
        compact(&mut r)?
    } else {
        let first: Vec<String> = shapes
            .keys()
            .take(3)
            .map(|k| format!("`{}`", cut(k)))
            .collect();
        return Err(match first.is_empty() {
            true => "holds no tensors — not an ESRGAN-family model".into(),
            false => format!(
                "not an ESRGAN-family model (RRDBNet or SRVGGNetCompact): its keys start {}",
                first.join(", ")
            ),
        });
    };
    let name = match arch {
        Arch::Rrdb { .. } => "RRDBNet",
        Arch::Compact { .. } => "SRVGGNetCompact",
    };
    r.all_used(name)?;
    Ok(arch)
}

/// RRDBNet's image channels: 3 out, and 3, 12 or 48 in (×2 / ×1 models pixel-unshuffle the
/// input by 2 / 4); the unshuffle factor.
fn rgb(first: &str, inc: i64, last: &str, outc: i64) -> Check<i64> {
    if outc != 3 {
        return Err(format!(
            "tensor `{last}.weight` gives {outc} output channel{}: hiresfix runs RGB models (3 channels)",
            if outc == 1 { "" } else { "s" }
        ));
    }
    match inc {
        3 => Ok(1),
        12 => Ok(2),
        48 => Ok(4),
        _ => Err(format!(
            "tensor `{first}.weight` takes {inc} input channel{}: hiresfix runs RGB models (3, or 12 / 48 unshuffled)",
            if inc == 1 { "" } else { "s" }
        )),
    }
}

fn rrdb(r: &mut Reader) -> Check<Arch> {
    let basicsr = r.shapes.contains_key("conv_first.weight");
    let (first, layout) = match basicsr {
        true => ("conv_first", "Real-ESRGAN layout"),
        false => ("model.0", "ESRGAN layout"),
    };
    let (features, inc) = r.conv(first, None, None)?;
    let (block, rdb, suffix) = match basicsr {
        true => ("body.", ["rdb1", "rdb2", "rdb3"], ""),
        false => ("model.1.sub.", ["RDB1", "RDB2", "RDB3"], ".0"),
    };
    let found = r.indices(block, &format!(".{}.conv1{suffix}.weight", rdb[0]));
    if found.len() > MAX_BLOCKS {
        return Err(format!(
            "{} RRDB blocks: more than {MAX_BLOCKS} is not a real model — the file is damaged",
            found.len()
        ));
    }
    let blocks = contiguous(&found, 0, |i| {
        format!("{block}{i}.{}.conv1{suffix}.weight", rdb[0])
    })?;
    if blocks == 0 {
        return Err(format!(
            "tensor `{block}0.{}.conv1{suffix}.weight` is missing: an RRDBNet without blocks",
            rdb[0]
        ));
    }
    let growth_key = format!("{block}0.{}.conv1{suffix}", rdb[0]);
    let growth = r.conv(&growth_key, Some(features), None)?.0;
    for i in 0..blocks {
        for name in rdb {
            for k in 1..=5i64 {
                let want_in = features + (k - 1) * growth;
                let want_out = if k == 5 { features } else { growth };
                r.conv(
                    &format!("{block}{i}.{name}.conv{k}{suffix}"),
                    Some(want_in),
                    Some(want_out),
                )?;
            }
        }
    }
    let (ups, last) = match basicsr {
        true => {
            r.conv("conv_body", Some(features), Some(features))?;
            let found = r.indices("conv_up", ".weight");
            let ups = bounded_ups(found.len(), "conv_upN")?;
            contiguous(&found, 1, |i| format!("conv_up{i}.weight"))?;
            for i in 1..=ups {
                r.conv(&format!("conv_up{i}"), Some(features), Some(features))?;
            }
            r.conv("conv_hr", Some(features), Some(features))?;
            (ups, "conv_last".to_string())
        }
        false => {
            r.conv(
                &format!("model.1.sub.{blocks}"),
                Some(features),
                Some(features),
            )?;
            // After the trunk: the upsampling convs, then the HR conv and the last conv.
            let tail: Vec<usize> = r
                .indices("model.", ".weight")
                .into_iter()
                .filter(|i| *i >= 2)
                .collect();
            if tail.len() < 2 {
                return Err("tensors `model.N.weight` after the trunk are missing: an ESRGAN file ends in its HR and last convs — the file is cut".into());
            }
            let ups = bounded_ups(tail.len() - 2, "model.N before the HR conv")?;
            for i in &tail[..tail.len() - 1] {
                r.conv(&format!("model.{i}"), Some(features), Some(features))?;
            }
            (ups, format!("model.{}", tail[tail.len() - 1]))
        }
    };
    let (outc, _) = r.conv(&last, Some(features), None)?;
    let unshuffle = rgb(first, inc, &last, outc)?;
    // ups ≤ MAX_UPS, so the shift cannot overflow.
    let up = 1i64 << ups;
    if up < unshuffle {
        return Err(format!(
            "tensor `{first}.weight` takes {inc} channels (input unshuffled ×{unshuffle}) but the file has {ups} upsampling conv{}: a scale below 1",
            if ups == 1 { "" } else { "s" }
        ));
    }
    Ok(Arch::Rrdb {
        layout,
        blocks,
        features,
        ups,
        unshuffle,
        scale: up / unshuffle,
    })
}

fn bounded_ups(n: usize, what: &str) -> Check<usize> {
    match n {
        n if n <= MAX_UPS => Ok(n),
        n => Err(format!(
            "{n} upsampling convs ({what}): real RRDBNet files have at most {MAX_UPS} (16×) — the file is damaged"
        )),
    }
}

fn compact(r: &mut Reader) -> Check<Arch> {
    let mut convs = 0usize;
    let mut features = 0;
    let mut last_out = 0;
    let mut k = 0usize;
    loop {
        let prefix = format!("body.{k}");
        if !r.shapes.contains_key(&format!("{prefix}.weight")) {
            break;
        }
        if convs >= MAX_CONVS {
            return Err(format!(
                "more than {MAX_CONVS} convs (`{prefix}.weight`): not a real SRVGGNetCompact — the file is damaged"
            ));
        }
        let want_in = match convs {
            0 => None,
            _ => Some(features),
        };
        let (out, inc) = r.conv(&prefix, want_in, None)?;
        if convs == 0 {
            if inc != 3 {
                return Err(format!(
                    "tensor `{prefix}.weight` takes {inc} input channel{}: hiresfix runs RGB models (3 channels)",
                    if inc == 1 { "" } else { "s" }
                ));
            }
            features = out;
        }
        convs += 1;
        last_out = out;
        let prelu = format!("body.{}.weight", k + 1);
        match r.shapes.get(&prelu) {
            None => break,
            Some(p) => {
                r.get(&prelu)?;
                if out != features || !(p.as_slice() == [out] || p.as_slice() == [1]) {
                    return Err(format!(
                        "tensor `{prelu}` has shape {p:?}, not the PReLU [{features}] of a {features}-channel conv — the file is damaged"
                    ));
                }
            }
        }
        k += 2;
    }
    if convs < 2 {
        return Err("tensor `body.2.weight` is missing: SRVGGNetCompact needs a first and a last conv — the file is cut".into());
    }
    let last = format!("body.{}.weight", 2 * (convs - 1));
    let scale = (1..=8i64).find(|s| 3 * s * s == last_out).ok_or_else(|| {
        format!("tensor `{last}` gives {last_out} channels, not 3 × scale² (scale 1 to 8) — the file is damaged")
    })?;
    Ok(Arch::Compact {
        convs,
        features,
        scale,
    })
}

/// Indices `i` of the keys `{prefix}{i}{suffix}` among `keys`, ascending, once each.
pub fn indices_in<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    prefix: &str,
    suffix: &str,
) -> Vec<usize> {
    let mut found: Vec<usize> = keys
        .into_iter()
        .filter_map(|k| k.strip_prefix(prefix)?.strip_suffix(suffix)?.parse().ok())
        .collect();
    found.sort_unstable();
    found.dedup();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(s: &mut Shapes, prefix: &str, out: i64, inc: i64) {
        s.insert(format!("{prefix}.weight"), vec![out, inc, 3, 3]);
        s.insert(format!("{prefix}.bias"), vec![out]);
    }

    /// A Real-ESRGAN layout RRDBNet: `blocks` blocks, 8 features, growth 4, `ups` up convs.
    fn rrdb(blocks: usize, ups: usize, inc: i64) -> Shapes {
        let mut s = Shapes::new();
        conv(&mut s, "conv_first", 8, inc);
        for i in 0..blocks {
            for name in ["rdb1", "rdb2", "rdb3"] {
                for k in 1..=5 {
                    let out = if k == 5 { 8 } else { 4 };
                    conv(
                        &mut s,
                        &format!("body.{i}.{name}.conv{k}"),
                        out,
                        8 + (k - 1) * 4,
                    );
                }
            }
        }
        conv(&mut s, "conv_body", 8, 8);
        for i in 1..=ups {
            conv(&mut s, &format!("conv_up{i}"), 8, 8);
        }
        conv(&mut s, "conv_hr", 8, 8);
        conv(&mut s, "conv_last", 3, 8);
        s
    }

    fn compact(convs: usize, last_out: i64) -> Shapes {
        let mut s = Shapes::new();
        for c in 0..convs {
            let (out, inc) = match c {
                0 => (8, 3),
                c if c == convs - 1 => (last_out, 8),
                _ => (8, 8),
            };
            conv(&mut s, &format!("body.{}", 2 * c), out, inc);
            if c + 1 < convs {
                s.insert(format!("body.{}.weight", 2 * c + 1), vec![8]);
            }
        }
        s
    }

    #[test]
    fn real_layouts_give_their_scales() {
        let scale = |s: &Shapes| infer(s).map(|a| a.scale());
        assert_eq!(scale(&rrdb(2, 2, 3)), Ok(4));
        assert_eq!(scale(&rrdb(1, 3, 3)), Ok(8));
        assert_eq!(scale(&rrdb(1, 2, 12)), Ok(2));
        assert_eq!(scale(&rrdb(1, 2, 48)), Ok(1));
        assert_eq!(scale(&compact(4, 48)), Ok(4));
        assert_eq!(scale(&compact(2, 12)), Ok(2));
    }

    #[test]
    fn the_original_esrgan_layout_counts_its_tail_and_blocks_are_bounded() {
        let mut s = Shapes::new();
        conv(&mut s, "model.0", 8, 3);
        for name in ["RDB1", "RDB2", "RDB3"] {
            for k in 1..=5 {
                let out = if k == 5 { 8 } else { 4 };
                conv(
                    &mut s,
                    &format!("model.1.sub.0.{name}.conv{k}.0"),
                    out,
                    8 + (k - 1) * 4,
                );
            }
        }
        conv(&mut s, "model.1.sub.1", 8, 8);
        for i in [3, 6, 8] {
            conv(&mut s, &format!("model.{i}"), 8, 8);
        }
        conv(&mut s, "model.10", 3, 8);
        assert_eq!(
            infer(&s),
            Ok(Arch::Rrdb {
                layout: "ESRGAN layout",
                blocks: 1,
                features: 8,
                ups: 2,
                unshuffle: 1,
                scale: 4
            })
        );
        let mut many = rrdb(1, 2, 3);
        for i in 1..=MAX_BLOCKS {
            many.insert(format!("body.{i}.rdb1.conv1.weight"), vec![4, 8, 3, 3]);
        }
        assert!(infer(&many).unwrap_err().contains("1001 RRDB blocks"));
        let mut gap = rrdb(3, 2, 3);
        gap.retain(|k, _| !k.starts_with("body.1."));
        assert!(infer(&gap)
            .unwrap_err()
            .contains("`body.1.rdb1.conv1.weight` is missing"));
    }

    #[test]
    fn hostile_shapes_are_errors_naming_the_tensor() {
        let err = |s: Shapes| infer(&s).unwrap_err();
        assert!(err(rrdb(1, 40, 3)).contains("40 upsampling convs"));
        assert!(err(rrdb(1, 2, 1)).contains("`conv_first.weight` takes 1 input channel:"));
        let mut s = rrdb(1, 2, 3);
        s.insert("conv_last.weight".into(), vec![1, 8, 3, 3]);
        s.insert("conv_last.bias".into(), vec![1]);
        assert!(err(s).contains("`conv_last.weight` gives 1 output channel:"));
        let mut s = rrdb(1, 2, 3);
        s.insert("conv_hr.weight".into(), vec![8, 8, 3, 1]);
        assert!(err(s).contains("`conv_hr.weight` has a 3×1 kernel"));
        let mut s = rrdb(1, 2, 3);
        s.insert("conv_first.weight".into(), vec![0, 3, 3, 3]);
        assert!(err(s).contains("a dimension of 0"));
        let mut s = rrdb(2, 2, 3);
        s.remove("body.1.rdb2.conv3.weight");
        assert!(err(s).contains("`body.1.rdb2.conv3.weight` is missing"));
        let mut s = rrdb(1, 2, 3);
        s.insert("extra.weight".into(), vec![1]);
        assert!(err(s).contains("1 tensor RRDBNet does not use (first: `extra.weight`)"));
        let mut s = rrdb(1, 2, 3);
        s.insert("body.0.rdb1.conv2.weight".into(), vec![4, 9, 3, 3]);
        assert!(err(s).contains("has 9 input channels, not 12"));
        assert!(err(compact(4, 1)).contains("gives 1 channels, not 3 × scale²"));
        assert!(err(Shapes::new()).contains("holds no tensors"));
    }
}
