//! The A1111 `parameters` text of an image: the pairs A1111's "PNG Info" and Civitai read
//! (steps, sampler, seed, size, model and its hash, hires fields, LoRA hashes).
use std::path::Path;

use crate::infotext::num;
use crate::noise::ImageSeeds;
use crate::plan::{PassPlan, PassSize};
use crate::profile::Profile;
use crate::registry::display_name;

/// The A1111 `parameters` pairs for one image.
pub fn infotext_pairs(
    profile: &Profile,
    plans: &[PassPlan<'_>],
    sizes: &[PassSize],
    seeds: ImageSeeds,
    model_hash: Option<&str>,
    ti_hashes: Option<String>,
) -> Vec<(String, String)> {
    let first = &plans[0];
    let mut pairs: Vec<(String, String)> = vec![
        // img2img runs t_enc of the steps asked for; A1111 writes the steps asked for.
        (
            "Steps".into(),
            first
                .img2img
                .as_ref()
                .map_or(first.steps, |i| i.requested_steps)
                .to_string(),
        ),
        ("Sampler".into(), display_name(&first.sampler.decl)),
        ("Schedule type".into(), display_name(&first.schedule.decl)),
        ("CFG scale".into(), num(first.cfg)),
        ("Seed".into(), seeds.seed.to_string()),
        (
            "Size".into(),
            format!("{}x{}", sizes[0].width, sizes[0].height),
        ),
    ];
    // Forge's name for Flux dev's distilled guidance, written when the profile sets one.
    if let Some(g) = first.guidance {
        pairs.push(("Distilled CFG Scale".into(), num(g)));
    }
    if let Some(hash) = model_hash {
        pairs.push(("Model hash".into(), hash.to_owned()));
    }
    let model = match first.merge.is_empty() {
        true => model_name(&first.checkpoint),
        // A merge from the profile: its recipe, as a merged file's name would stand for it.
        false => first
            .merge
            .iter()
            .map(|(path, weight)| format!("{} {}", model_name(path), num(*weight)))
            .collect::<Vec<_>>()
            .join(" + "),
    };
    pairs.push(("Model".into(), model));
    pairs.extend(variation_pairs(profile, seeds));
    // A1111's order: the networks' fields are added before the conditioning's.
    if let Some(hashes) = lora_hashes(plans) {
        pairs.push(("Lora hashes".into(), hashes));
    }
    if let Some(hashes) = ti_hashes {
        pairs.push(("TI hashes".into(), hashes));
    }
    if let Some(i2i) = &first.img2img {
        pairs.extend(crate::img2img::infotext(i2i, first.denoise));
    }
    if first.clip_skip > 1 {
        pairs.push(("Clip skip".into(), first.clip_skip.to_string()));
    }
    // Patches as the Forge extensions write them (`kohya_hrfix_enabled: True, ...`); a later
    // pass with other patches than pass 1 writes its own, prefixed like its other fields.
    pairs.extend(first.patches.iter().flat_map(|p| p.infotext.clone()));
    // The A1111 extension's field; a later pass's behind its prefix.
    if let Some(tiled) = &first.tiled {
        pairs.push(("Tiled Diffusion".into(), tiled.infotext()));
    }
    for (i, (plan, size)) in plans.iter().zip(sizes).enumerate().skip(1) {
        let p = if i == 1 {
            "Hires".to_owned()
        } else {
            format!("Hires {i}")
        };
        let pass = &profile.passes[i];
        if i == 1 && first.img2img.is_none() {
            pairs.push(("Denoising strength".into(), num(plan.denoise)));
        } else {
            pairs.push((format!("{p} denoising strength"), num(plan.denoise)));
        }
        match pass.scale {
            Some(s) if pass.width.is_none() && pass.height.is_none() => {
                pairs.push((format!("{p} upscale"), num(s)))
            }
            _ => pairs.push((
                format!("{p} resize"),
                format!("{}x{}", size.width, size.height),
            )),
        }
        pairs.push((format!("{p} steps"), plan.steps.to_string()));
        if let Some(up) = plan.upscaler {
            let name = plan
                .upscaler_model
                .clone()
                .unwrap_or_else(|| display_name(&up.decl));
            pairs.push((format!("{p} upscaler"), name));
        }
        if plan.checkpoint != first.checkpoint {
            pairs.push((format!("{p} checkpoint"), model_name(&plan.checkpoint)));
        }
        if plan.sampler.decl.name != first.sampler.decl.name {
            pairs.push((format!("{p} sampler"), display_name(&plan.sampler.decl)));
        }
        if plan.schedule.decl.name != first.schedule.decl.name {
            pairs.push((
                format!("{p} schedule type"),
                display_name(&plan.schedule.decl),
            ));
        }
        let prompt = infotext_prompt(plan);
        if prompt != infotext_prompt(first) {
            pairs.push((format!("{p} prompt"), prompt));
        }
        if plan.negative != first.negative {
            pairs.push((format!("{p} negative prompt"), plan.negative.clone()));
        }
        if plan.cfg != first.cfg {
            pairs.push((format!("{p} CFG Scale"), num(plan.cfg)));
        }
        if let Some(g) = plan.guidance.filter(|_| plan.guidance != first.guidance) {
            pairs.push((format!("{p} Distilled CFG Scale"), num(g)));
        }
        if let Some(tiled) = &plan.tiled {
            pairs.push((format!("{p} Tiled Diffusion"), tiled.infotext()));
        }
        let fields = |plan: &PassPlan<'_>| -> Vec<(String, String)> {
            plan.patches
                .iter()
                .flat_map(|p| p.infotext.clone())
                .collect()
        };
        if fields(plan) != fields(first) {
            match fields(plan) {
                none if none.is_empty() => pairs.push((format!("{p} patches"), "None".into())),
                some => pairs.extend(some.into_iter().map(|(k, v)| (format!("{p} {k}"), v))),
            }
        }
    }
    pairs.extend(refiner_pairs(plans));
    pairs.extend(sampler_knob_pairs(first));
    if profile.tiling {
        pairs.push(("Tiling".into(), "True".into()));
    }
    if profile.eta_noise_seed_delta != 0 {
        pairs.push(("ENSD".into(), profile.eta_noise_seed_delta.to_string()));
    }
    pairs.push((
        "Version".into(),
        format!("hiresfix {}", env!("CARGO_PKG_VERSION")),
    ));
    pairs
}

/// A1111's infotext fields: `Refiner: name [hash]`, `Refiner switch at`, and with a hires
/// pass `Hires refiner: first pass` or `both passes` when the refiner is not (only) in the
/// second pass, A1111's default (`hires_fix_refiner_pass`). A1111 has one refiner per image:
/// the first pass's that has one is written.
fn refiner_pairs(plans: &[PassPlan<'_>]) -> Vec<(String, String)> {
    let Some(refiner) = plans.iter().find_map(|p| p.refiner.as_ref()) else {
        return Vec::new();
    };
    let name = model_name(&refiner.checkpoint);
    let title = match model_hash(&refiner.checkpoint) {
        Some(hash) => format!("{name} [{hash}]"),
        None => name,
    };
    let mut pairs = vec![
        ("Refiner".to_owned(), title),
        (
            "Refiner switch at".to_owned(),
            crate::infotext::num(refiner.switch_at),
        ),
    ];
    let has = |i: usize| plans.get(i).is_some_and(|p| p.refiner.is_some());
    if plans.len() > 1 {
        match (has(0), has(1)) {
            (true, false) => pairs.push(("Hires refiner".into(), "first pass".into())),
            (true, true) => pairs.push(("Hires refiner".into(), "both passes".into())),
            _ => {}
        }
    }
    pairs
}

/// A1111's variation-seed fields: "Variation seed" and its strength when the strength is
/// above 0, "Seed resize from" when both sides are set.
fn variation_pairs(profile: &Profile, seeds: ImageSeeds) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    if profile.subseed_strength != 0.0 {
        pairs.push(("Variation seed".into(), seeds.subseed.to_string()));
        pairs.push((
            "Variation seed strength".into(),
            num(profile.subseed_strength),
        ));
    }
    let (w, h) = (profile.seed_resize_from_w, profile.seed_resize_from_h);
    if w > 0 && h > 0 {
        pairs.push(("Seed resize from".into(), format!("{w}x{h}")));
    }
    pairs
}

/// A1111's sampler knobs and their infotext keys (`sd_samplers_common`, the k-diffusion
/// sampler's `initialize`): written when pass 1's `sampler_options` sets one to other than
/// its default. DDIM's eta is A1111's "Eta DDIM" (default 0); s_tmax 0 means no bound.
pub const SAMPLER_KNOBS: [(&str, &str, f64); 5] = [
    ("eta", "Eta", 1.0),
    ("s_churn", "Sigma churn", 0.0),
    ("s_tmin", "Sigma tmin", 0.0),
    ("s_tmax", "Sigma tmax", 0.0),
    ("s_noise", "Sigma noise", 1.0),
];

/// The infotext key and default of the knob `option` for the sampler `sampler` (an id).
pub fn knob_key(sampler: &str, option: &str) -> Option<(&'static str, f64)> {
    if option == "eta" && sampler == "ddim" {
        return Some(("Eta DDIM", 0.0));
    }
    SAMPLER_KNOBS
        .iter()
        .find(|(o, ..)| *o == option)
        .map(|(_, key, default)| (*key, *default))
}

fn sampler_knob_pairs(plan: &PassPlan<'_>) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for entry in &plan.options {
        let (key, value) = (entry.key.as_str(), &entry.value);
        let (Some((label, default)), host_api::OptionValue::Number(v)) =
            (knob_key(&plan.sampler.decl.name, key), value)
        else {
            continue;
        };
        if *v != default {
            pairs.push((label.to_owned(), num(*v)));
        }
    }
    pairs
}

/// A1111's `Lora hashes`: `name: hash` of every LoRA any pass used, once each.
fn lora_hashes(plans: &[PassPlan<'_>]) -> Option<String> {
    let mut seen = Vec::new();
    let mut parts = Vec::new();
    for lora in plans.iter().flat_map(|p| &p.loras) {
        if seen.contains(&&lora.path) {
            continue;
        }
        seen.push(&lora.path);
        let hash = crate::loras::short_hash(&lora.path).unwrap_or_else(|_| "unknown".into());
        parts.push(format!("{}: {hash}", lora.name));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The prompt as the infotext shows it: a LoRA the profile lists (rather than a tag in the
/// prompt) is written as its A1111 tag, so A1111 and Civitai see it.
pub fn infotext_prompt(plan: &PassPlan<'_>) -> String {
    let mut prompt = plan.prompt.clone();
    for lora in plan.loras.iter().filter(|l| !l.from_tag) {
        prompt.push(' ');
        prompt.push_str(&lora.tag());
    }
    prompt
}

fn model_name(checkpoint: &Path) -> String {
    checkpoint
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// A1111's "Model hash": the first 10 hex digits of the file's sha256 (none for a folder).
pub fn model_hash(checkpoint: &Path) -> Option<String> {
    if !checkpoint.is_file() {
        return None;
    }
    let hex = crate::hash_cache::cached("sha256", checkpoint, crate::registry::sha256_hex).ok()?;
    Some(hex[..10].to_owned())
}
