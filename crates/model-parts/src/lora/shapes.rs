//! The shape of each LoRA layer's change from its tensors' shapes alone, no data: every
//! format's factors are checked against each other and against the weight they change before
//! any tensor operation, so a damaged file or one for another model is one line naming the
//! layer and tensor, never a libtorch error. Sizes are multiplied with checked arithmetic.
use std::collections::BTreeMap;

/// The suffixes a LoRA file puts after a layer's name, longest first so that one that is a
/// suffix of another (`.alpha`) is tried last.
const SUFFIXES: &[&str] = &[
    ".lora_down.weight",
    ".lora_up.weight",
    ".lora_mid.weight",
    ".lora_A.weight",
    ".lora_B.weight",
    ".hada_w1_a",
    ".hada_w1_b",
    ".hada_w2_a",
    ".hada_w2_b",
    ".hada_t1",
    ".hada_t2",
    ".lokr_w1_a",
    ".lokr_w1_b",
    ".lokr_w2_a",
    ".lokr_w2_b",
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_t2",
    ".dora_scale",
    ".alpha",
];

/// `text` cut to 80 characters with an ellipsis (file and layer names in messages).
pub fn cut(text: &str) -> String {
    match text.char_indices().nth(80) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_owned(),
    }
}

/// Splits `key` into (layer name, part) for a known suffix.
pub fn split_key(key: &str) -> Option<(&str, &'static str)> {
    SUFFIXES.iter().find_map(|suffix| {
        let layer = key.strip_suffix(suffix)?;
        Some((layer, &suffix[1..]))
    })
}

/// Largest dimension of a LoRA tensor taken (the widest SDXL weight has 10,240 columns;
/// a LoKr factor of a whole weight at most that).
pub const MAX_DIM: i64 = 1 << 20;

/// One layer's tensor shapes, by part (suffix without the dot: `lora_down.weight`, `alpha`).
pub type Shapes<'a> = BTreeMap<&'a str, &'a [i64]>;

/// What a layer's shapes say: the rank its alpha divides by (none: alpha is not used).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub rank: Option<i64>,
}

/// Checks one layer's shapes against the weight `key` of shape `target` it changes; the error
/// names the layer's tensor at fault and the fix.
pub fn check(layer: &str, parts: &Shapes, key: &str, target: &[i64]) -> Result<Plan, String> {
    // A layer name is the file's: bounded in messages.
    let layer = &cut(layer);
    for (part, shape) in parts {
        let scalar = *part == "alpha" && shape.iter().all(|d| *d == 1);
        if *part == "alpha" && !scalar {
            return Err(format!(
                "tensor `{layer}.alpha` has shape {shape:?}, not a single number — the file is damaged"
            ));
        }
        if let Some(bad) = shape.iter().find(|d| **d < 1 || **d > MAX_DIM) {
            return Err(format!(
                "tensor `{layer}.{part}` has shape {shape:?} (a dimension of {bad}) — the file is damaged"
            ));
        }
    }
    if parts.contains_key("dora_scale") {
        return Err(format!(
            "layer `{layer}` is DoRA (dora_scale), which is not supported yet — use a plain LoRA"
        ));
    }
    let tensor = |part: &str| parts.get(part).copied();
    let (implied, plan) = if let (Some((up_name, up)), Some((down_name, down))) = (
        pick(parts, &["lora_up.weight", "lora_B.weight"]),
        pick(parts, &["lora_down.weight", "lora_A.weight"]),
    ) {
        low_rank(
            layer,
            (up_name, up),
            (down_name, down),
            tensor("lora_mid.weight"),
        )?
    } else if let (Some(w1a), Some(w1b), Some(w2a), Some(w2b)) = (
        tensor("hada_w1_a"),
        tensor("hada_w1_b"),
        tensor("hada_w2_a"),
        tensor("hada_w2_b"),
    ) {
        let one = hada_half(layer, "1", w1a, w1b, tensor("hada_t1"))?;
        let two = hada_half(layer, "2", w2a, w2b, tensor("hada_t2"))?;
        if one != two {
            return Err(format!(
                "layer `{layer}`: its LoHa halves make {one:?} and {two:?} — the file is damaged"
            ));
        }
        (one, Plan { rank: Some(w1b[0]) })
    } else if tensor("lokr_w1").is_some() || tensor("lokr_w1_a").is_some() {
        lokr(layer, parts)?
    } else {
        return Err(format!(
            "layer `{layer}` has none of the tensor sets of LoRA, LoHa or LoKr (it has {}) — the file is damaged or of an unknown format",
            parts.keys().copied().collect::<Vec<_>>().join(", ")
        ));
    };
    let exact = pick(parts, &["lora_up.weight", "lora_B.weight"]).is_some();
    fits(layer, &implied, exact, key, target)?;
    Ok(plan)
}

/// The first of `names` present, with its shape.
fn pick<'a>(parts: &Shapes<'a>, names: &[&'a str]) -> Option<(&'a str, &'a [i64])> {
    names.iter().find_map(|n| parts.get(n).map(|s| (*n, *s)))
}

/// The product of `shape`, `None` past i64.
pub fn numel(shape: &[i64]) -> Option<i64> {
    shape.iter().try_fold(1i64, |n, d| n.checked_mul(*d))
}

/// For an inpainting UNet's input convolution (`[out, 9, kh, kw]`: latent, mask, masked
/// image), the shape of a change made for a text-to-image model's (`[out, 4, kh, kw]`),
/// which applies to the latent's channels zero-padded to the mask's and masked image's, as
/// A1111 does (`networks.py`: "inpainting model. zero pad updown to make channel[1] 4 to
/// 9"). `None` for any other weight.
pub fn inpainting_input(target: &[i64]) -> Option<Vec<i64>> {
    match target {
        [out, 9, kh, kw] => Some(vec![*out, 4, *kh, *kw]),
        _ => None,
    }
}

fn fits(
    layer: &str,
    implied: &[i64],
    exact: bool,
    _key: &str,
    target: &[i64],
) -> Result<(), String> {
    let same = implied == target;
    // LoHa and LoKr changes of conv weights come flattened ([out, in·k·k]).
    let numel_same = numel(implied).is_some() && numel(implied) == numel(target);
    if same || (!exact && numel_same && implied.first() == target.first()) {
        return Ok(());
    }
    if let Some(latent_only) = inpainting_input(target) {
        let fits_latent = implied == latent_only.as_slice()
            || (!exact
                && numel(implied) == numel(&latent_only)
                && implied.first() == target.first());
        if fits_latent {
            return Ok(());
        }
    }
    Err(format!(
        "layer `{layer}` changes a {implied:?} weight, which does not fit the model's {target:?} — a LoRA for another model family?"
    ))
}

fn dims(layer: &str, part: &str, shape: &[i64], allowed: &[usize]) -> Result<(), String> {
    match allowed.contains(&shape.len()) {
        true => Ok(()),
        false => Err(format!(
            "tensor `{layer}.{part}` has shape {shape:?}: {} dimensions where a LoRA stores {} — the file is damaged",
            shape.len(),
            allowed.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" or ")
        )),
    }
}

/// kohya LoRA / LoCon (`lora_down` [r, in, k…], `lora_up` [out, r(, 1, 1)], Tucker
/// `lora_mid` [r', r, kh, kw]) and peft (`lora_A`, `lora_B`).
fn low_rank(
    layer: &str,
    (up_name, up): (&str, &[i64]),
    (down_name, down): (&str, &[i64]),
    mid: Option<&[i64]>,
) -> Result<(Vec<i64>, Plan), String> {
    dims(layer, down_name, down, &[2, 4])?;
    dims(layer, up_name, up, &[2, 4])?;
    let rank = down[0];
    let (inner, kernel) = match mid {
        Some(mid) => {
            dims(layer, "lora_mid.weight", mid, &[4])?;
            if mid[1] != rank || down[2..].iter().any(|d| *d != 1) {
                return Err(format!(
                    "tensor `{layer}.lora_mid.weight` has shape {mid:?} but `{layer}.{down_name}` is {down:?} (rank {rank}, 1×1) — the file is damaged"
                ));
            }
            (mid[0], mid[2..].to_vec())
        }
        None => (rank, down[2..].to_vec()),
    };
    if up[1] != inner || up[2..].iter().any(|d| *d != 1) {
        return Err(format!(
            "tensor `{layer}.{up_name}` has shape {up:?} but `{layer}.{down_name}` is {down:?}: ranks {} and {inner} differ — the file is damaged",
            up[1]
        ));
    }
    let implied = [&[up[0], down[1]][..], &kernel].concat();
    numel(&implied).ok_or_else(|| {
        format!("layer `{layer}` changes a {implied:?} weight, past any size — the file is damaged")
    })?;
    Ok((implied, Plan { rank: Some(rank) }))
}

/// One LoHa half: `a @ b` ([out, r] @ [r, n]), or with CP `t` [r, r', kh, kw], `a` [r, out],
/// `b` [r', in].
fn hada_half(
    layer: &str,
    n: &str,
    a: &[i64],
    b: &[i64],
    t: Option<&[i64]>,
) -> Result<Vec<i64>, String> {
    let (a_name, b_name) = (format!("hada_w{n}_a"), format!("hada_w{n}_b"));
    dims(layer, &a_name, a, &[2])?;
    dims(layer, &b_name, b, &[2])?;
    let (shape, agree) = match t {
        Some(t) => {
            dims(layer, &format!("hada_t{n}"), t, &[4])?;
            (vec![a[1], b[1], t[2], t[3]], t[0] == a[0] && t[1] == b[0])
        }
        None => (vec![a[0], b[1]], a[1] == b[0]),
    };
    if !agree {
        return Err(format!(
            "tensors `{layer}.{a_name}` {a:?} and `{layer}.{b_name}` {b:?} have different ranks — the file is damaged"
        ));
    }
    Ok(shape)
}

/// LoKr: `kron(w1, w2)`, each stored whole or as a low-rank product.
fn lokr(layer: &str, parts: &Shapes) -> Result<(Vec<i64>, Plan), String> {
    let factor = |n: &str| -> Result<(Vec<i64>, Option<i64>), String> {
        let whole = format!("lokr_w{n}");
        if let Some(w) = parts.get(whole.as_str()) {
            dims(layer, &whole, w, &[2, 4])?;
            return Ok((w.to_vec(), None));
        }
        let (a_name, b_name) = (format!("lokr_w{n}_a"), format!("lokr_w{n}_b"));
        let (Some(a), Some(b)) = (parts.get(a_name.as_str()), parts.get(b_name.as_str())) else {
            return Err(format!(
                "layer `{layer}` is LoKr without `{whole}` or `{a_name}`/`{b_name}` — the file is damaged"
            ));
        };
        dims(layer, &a_name, a, &[2])?;
        let t = parts.get("lokr_t2").filter(|_| n == "2");
        let (shape, agree) = match t {
            Some(t) => {
                dims(layer, "lokr_t2", t, &[4])?;
                dims(layer, &b_name, b, &[2])?;
                (vec![a[1], b[1], t[2], t[3]], t[0] == a[0] && t[1] == b[0])
            }
            None => {
                dims(layer, &b_name, b, &[2, 4])?;
                ([&[a[0]][..], &b[1..]].concat(), a[1] == b[0])
            }
        };
        if !agree {
            return Err(format!(
                "tensors `{layer}.{a_name}` {a:?} and `{layer}.{b_name}` {b:?} have different ranks — the file is damaged"
            ));
        }
        // `b` has 2 or 4 dimensions here.
        Ok((shape, Some(b[0])))
    };
    let (mut w1, rank1) = factor("1")?;
    let (w2, rank2) = factor("2")?;
    if w2.len() == 4 && w1.len() == 2 {
        w1.extend([1, 1]);
    }
    // torch.kron: the shorter shape is padded with leading 1s, sizes multiply.
    let len = w1.len().max(w2.len());
    let pad = |w: &[i64]| [vec![1; len - w.len()], w.to_vec()].concat();
    let (p1, p2) = (pad(&w1), pad(&w2));
    let implied = p1
        .iter()
        .zip(&p2)
        .map(|(x, y)| x.checked_mul(*y))
        .collect::<Option<Vec<i64>>>()
        .filter(|s| numel(s).is_some())
        .ok_or_else(|| {
            format!("layer `{layer}`: its LoKr factors {w1:?} and {w2:?} make a weight past any size — the file is damaged")
        })?;
    Ok((
        implied,
        Plan {
            rank: rank2.or(rank1),
        },
    ))
}

/// Groups `(key, value)` pairs by layer, with the suffix of each key; keys with no known
/// suffix are returned apart.
pub fn group<T>(
    items: Vec<(String, T)>,
) -> (BTreeMap<String, BTreeMap<&'static str, T>>, Vec<String>) {
    let mut layers: BTreeMap<String, BTreeMap<&'static str, T>> = BTreeMap::new();
    let mut unknown = Vec::new();
    for (key, value) in items {
        match split_key(&key) {
            Some((layer, part)) => {
                layers
                    .entry(layer.to_owned())
                    .or_default()
                    .insert(part, value);
            }
            None => unknown.push(key),
        }
    }
    (layers, unknown)
}

/// Every layer of a file given as (key, shape) against the weight `target(layer)` names
/// (`None`: matches nothing, skipped): the number of layers that fit, or the first error.
/// The key-and-shape half of loading a LoRA, apart for the fuzz target.
pub fn check_file(
    entries: Vec<(String, Vec<i64>)>,
    target: impl Fn(&str) -> Option<(String, Vec<i64>)>,
) -> Result<usize, String> {
    let (layers, _) = group(entries);
    let mut fit = 0;
    for (layer, parts) in &layers {
        let Some((key, shape)) = target(layer) else {
            continue;
        };
        let shapes: Shapes = parts.iter().map(|(p, s)| (*p, s.as_slice())).collect();
        check(layer, &shapes, &key, &shape)?;
        fit += 1;
    }
    Ok(fit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(parts: &[(&'static str, &[i64])], target: &[i64]) -> Result<Plan, String> {
        let shapes: Shapes = parts.iter().map(|(p, s)| (*p, *s)).collect();
        check("x", &shapes, "model.w", target)
    }

    #[test]
    fn a_plain_lora_fits_its_weight_and_names_its_rank() {
        let plan = run(
            &[
                ("lora_down.weight", &[4, 8]),
                ("lora_up.weight", &[6, 4]),
                ("alpha", &[]),
            ],
            &[6, 8],
        );
        assert_eq!(plan, Ok(Plan { rank: Some(4) }));
        // A 1×1 conv change does not fit a linear weight (SD 1.x's proj_in on SD 2.x / SDXL).
        assert!(run(
            &[
                ("lora_down.weight", &[4, 8, 1, 1]),
                ("lora_up.weight", &[6, 4, 1, 1])
            ],
            &[6, 8]
        )
        .unwrap_err()
        .contains("does not fit"));
    }

    #[test]
    fn every_bad_shape_is_an_error_naming_the_tensor() {
        type Case<'a> = (&'a [(&'static str, &'a [i64])], &'a [i64], &'a str);
        let cases: &[Case] = &[
            (
                &[("lora_down.weight", &[4, 8]), ("lora_up.weight", &[6, 3])],
                &[6, 8],
                "`x.lora_up.weight` has shape [6, 3]",
            ),
            (
                &[("lora_down.weight", &[8]), ("lora_up.weight", &[6, 4])],
                &[6, 8],
                "`x.lora_down.weight` has shape [8]: 1 dimensions",
            ),
            (
                &[("lora_down.weight", &[0, 8]), ("lora_up.weight", &[6, 0])],
                &[6, 8],
                "a dimension of 0",
            ),
            (
                &[
                    ("lora_down.weight", &[4, 8]),
                    ("lora_up.weight", &[6, 4]),
                    ("alpha", &[2]),
                ],
                &[6, 8],
                "`x.alpha` has shape [2], not a single number",
            ),
            (
                &[("lora_down.weight", &[4, 9]), ("lora_up.weight", &[6, 4])],
                &[6, 8],
                "changes a [6, 9] weight, which does not fit the model's [6, 8]",
            ),
            (
                &[
                    ("lora_down.weight", &[4, 8, 3, 3]),
                    ("lora_up.weight", &[6, 4, 1, 1]),
                ],
                &[6, 8],
                "changes a [6, 8, 3, 3] weight",
            ),
            (
                &[
                    ("hada_w1_a", &[6, 2]),
                    ("hada_w1_b", &[3, 8]),
                    ("hada_w2_a", &[6, 2]),
                    ("hada_w2_b", &[2, 8]),
                ],
                &[6, 8],
                "different ranks",
            ),
            (
                &[
                    ("lokr_w1", &[1 << 20, 1 << 20]),
                    ("lokr_w2", &[1 << 20, 1 << 20, 1 << 20, 1 << 20]),
                ],
                &[6, 8],
                "past any size",
            ),
            (&[("lokr_w1_a", &[2, 2])], &[6, 8], "LoKr without"),
            (&[("weird", &[2])], &[6, 8], "none of the tensor sets"),
        ];
        for (parts, target, want) in cases {
            let err = run(parts, target).unwrap_err();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn a_file_of_keys_and_shapes_is_checked_layer_by_layer() {
        let entries = vec![
            ("a.lora_down.weight".to_string(), vec![2, 8]),
            ("a.lora_up.weight".to_string(), vec![6, 2]),
            ("b.lora_down.weight".to_string(), vec![2, 8]),
            ("stray".to_string(), vec![1]),
        ];
        let target = |layer: &str| (layer == "a").then(|| ("m.a.weight".to_string(), vec![6, 8]));
        assert_eq!(check_file(entries, target), Ok(1));
    }
}
