//! `replay --to-profile`: an A1111 / Forge `parameters` text (PNG Info) turned into a
//! profile. Names become this registry's ids (A1111's sampler, schedule and upscaler names
//! are their aliases); what has no place in a profile is reported, never silently dropped. A
//! value outside a profile's range ([`crate::defaults`]) is reported too, and left unset.
use std::collections::BTreeMap;

use anyhow::{anyhow, Result};
use host_api::prompt::extract_loras;

use crate::defaults::{self, Rule};
use crate::infotext::{self, Parameters};
use crate::plan::find_sampler;
use crate::profile::{Pass, PatchEntry, Profile};
use crate::registry::{find, Named, Registry};

/// An imported profile and the fields it could not map, each with what to do about it.
pub struct Imported {
    pub profile: Profile,
    pub unmapped: Vec<String>,
}

/// Fields that only describe the run (versions, hashes of files named elsewhere).
const INFORMATIONAL: &[&str] = &[
    "Version",
    "Model hash",
    "VAE hash",
    "Lora hashes",
    "Batch size",
    "Batch pos",
    "Hires Module 1",
];

/// Imports the A1111 `parameters` text `text`.
pub fn from_parameters(text: &str, registry: &Registry) -> Result<Imported> {
    let p = infotext::parse(text);
    if p.pairs.is_empty() {
        return Err(anyhow!(
            "no `Steps: …, Sampler: …` line: this is not A1111 parameters text"
        ));
    }
    let mut out = Importer {
        p: &p,
        registry,
        used: Vec::new(),
        unmapped: Vec::new(),
    };
    let mut profile = Profile::empty();
    profile.prompt = p.prompt.clone();
    profile.negative = p.negative.clone();
    let mut first = Pass::default();
    if let Some(seed) = out.number::<i64>("Seed") {
        profile.seed = seed;
    }
    first.steps = out.checked("Steps", defaults::steps);
    if let Some(cfg) = out.checked("CFG scale", defaults::cfg) {
        profile.cfg = Some(cfg);
    }
    profile.guidance = out.checked("Distilled CFG Scale", defaults::guidance);
    if let Some((w, h)) = out.size("Size") {
        (first.width, first.height) = (Some(w), Some(h));
    }
    out.sampler("Sampler", "Schedule type", &mut first);
    out.variation(&mut profile);
    out.sampler_knobs(&mut first);
    if let Some(skip) = out.checked("Clip skip", defaults::at_least_one) {
        profile.model.clip_skip = skip;
    }
    if let Some(delta) = out
        .number("ENSD")
        .or_else(|| out.number("Eta noise seed delta"))
    {
        profile.eta_noise_seed_delta = delta;
    }
    if out
        .take("Tiling")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    {
        profile.tiling = true;
    }
    if let Some(model) = out.take("Model") {
        out.unmapped.push(format!(
            "Model: {model} — set [model] checkpoint to its file"
        ));
    }
    if let Some(vae) = out.take("VAE") {
        out.unmapped
            .push(format!("VAE: {vae} — set [model] vae to its file"));
    }
    if let Some(patches) = out.patches("") {
        profile.patches = patches;
    }
    first.tiled = out.tiled("Tiled Diffusion");
    profile.passes.push(first);
    if let Some(mut hires) = out.hires() {
        hires.tiled = out.tiled("Hires Tiled Diffusion");
        profile.passes.push(hires);
    }
    out.refiner(&mut profile.passes);
    let loras: Vec<String> = match extract_loras(&p.prompt) {
        Ok((_, tags)) => tags.into_iter().map(|l| l.name).collect(),
        Err(e) => {
            out.unmapped.push(format!("prompt: {e}"));
            Vec::new()
        }
    };
    if !loras.is_empty() {
        out.unmapped.push(format!(
            "<lora:> tags ({}) — set lora_dirs to the folder holding them",
            loras.join(", ")
        ));
    }
    if let Some(hashes) = out.take("TI hashes") {
        let (dirs, notes) = embedding_dirs(hashes);
        profile.embedding_dirs = dirs;
        out.unmapped.extend(notes);
    }
    let Importer {
        used, mut unmapped, ..
    } = out;
    for (key, value) in &p.pairs {
        if !used.contains(&key.as_str()) && !INFORMATIONAL.contains(&key.as_str()) {
            unmapped.push(format!("{key}: {value} — no profile key does this"));
        }
    }
    // What a TOML profile or a server request must pass, this must too.
    profile.validate().map_err(|e| anyhow!(e))?;
    Ok(Imported { profile, unmapped })
}

/// A1111's `TI hashes` as `embedding_dirs`: the folder (in `$HIRESFIX_EMBEDDING_PATH`) of
/// each named embedding whose file has the hash written; a missing or different file is a
/// note naming it.
fn embedding_dirs(hashes: &str) -> (Vec<std::path::PathBuf>, Vec<String>) {
    use crate::embeddings;
    let files = embeddings::files(&crate::registry::env_dirs("HIRESFIX_EMBEDDING_PATH"));
    let (mut dirs, mut notes) = (Vec::new(), Vec::new());
    for (name, hash) in embeddings::parse_ti_hashes(hashes) {
        let found = files.iter().find(|f| f.name.as_str() == name);
        let Some(file) = found else {
            notes.push(format!("TI hashes: {name}: {hash} — no embedding `{name}` in $HIRESFIX_EMBEDDING_PATH; add the folder holding {name}.safetensors to embedding_dirs"));
            continue;
        };
        let path = std::path::Path::new(file.path.as_str());
        match embeddings::short_hash(path) {
            Ok(h) if h.eq_ignore_ascii_case(&hash) => {
                if let Some(dir) = path.parent().map(|d| d.to_path_buf()) {
                    if !dirs.contains(&dir) {
                        dirs.push(dir);
                    }
                }
            }
            Ok(h) => notes.push(format!("TI hashes: {name}: {hash} — {} has hash {h}, another version; find the one with {hash}", path.display())),
            Err(e) => notes.push(format!("TI hashes: {name}: {hash} — {e}")),
        }
    }
    (dirs, notes)
}

/// An infotext value as a profile value: `True`/`False`, a whole number, a number, or text.
fn infotext_value(value: &str) -> toml::Value {
    let v = value.trim();
    if v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("false") {
        return toml::Value::Boolean(v.eq_ignore_ascii_case("true"));
    }
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    match v.parse::<f64>() {
        Ok(f) => toml::Value::Float(f),
        Err(_) => toml::Value::String(v.to_owned()),
    }
}

struct Importer<'a> {
    p: &'a Parameters,
    registry: &'a Registry,
    used: Vec<&'a str>,
    unmapped: Vec<String>,
}

impl<'a> Importer<'a> {
    /// The value of `key`, marked as handled.
    /// A1111's `Refiner: name [hash]`, `Refiner switch at` and `Hires refiner`: the refiner on
    /// the passes it ran in, named `name.safetensors` beside the profile (reported: the file
    /// is the user's to place, as the model's).
    fn refiner(&mut self, passes: &mut [Pass]) {
        let Some(title) = self.take("Refiner") else {
            return;
        };
        let name = title.rsplit_once(" [").map_or(title, |(n, _)| n).trim();
        let switch_at = self.checked("Refiner switch at", defaults::refiner_switch_at);
        let hires_refiner = self.take("Hires refiner");
        let file = format!("{name}.safetensors");
        let on = crate::refiner::passes_of(hires_refiner, passes.len() > 1);
        let count = passes.len();
        for &i in on.iter().filter(|&&i| i < count) {
            let pass = &mut passes[i];
            pass.refiner_checkpoint = Some(file.clone());
            pass.refiner_switch_at = switch_at;
        }
        let numbers: Vec<String> = on.iter().map(|i| (i + 1).to_string()).collect();
        self.unmapped.push(format!(
            "Refiner: {title} — pass {} refiner_checkpoint = \"{file}\": put the file there or set its path",
            numbers.join(" and ")
        ));
    }

    /// The A1111 extension's `Tiled Diffusion` field (behind a pass's prefix) as `tiled`.
    fn tiled(&mut self, key: &'a str) -> Option<crate::tiled::setting::TiledSetting> {
        let value = self.take(key)?;
        match crate::tiled::Tiled::from_infotext(value) {
            Ok(t) => Some(crate::tiled::setting::TiledSetting::Table(t)),
            Err(what) => {
                self.unmapped.push(format!("{key}: {value} — {what}"));
                None
            }
        }
    }

    fn take(&mut self, key: &'a str) -> Option<&'a str> {
        let value = self.p.get(key)?;
        self.used.push(key);
        Some(value)
    }

    fn number<T: std::str::FromStr>(&mut self, key: &'a str) -> Option<T> {
        let value = self.take(key)?;
        let parsed = value.trim().parse().ok();
        if parsed.is_none() {
            self.unmapped.push(format!("{key}: {value} — not a number"));
        }
        parsed
    }

    /// A number under a profile's range `rule`; outside it, reported and left unset.
    fn checked<T: std::str::FromStr>(&mut self, key: &'a str, rule: Rule<T>) -> Option<T> {
        let value = self.number(key)?;
        match rule(value) {
            Ok(value) => Some(value),
            Err(what) => {
                let text = self.p.get(key).unwrap_or_default();
                self.unmapped.push(format!("{key}: {text} — {what}"));
                None
            }
        }
    }

    /// `WxH`, each side in a profile's range.
    fn size(&mut self, key: &'a str) -> Option<(u32, u32)> {
        let value = self.take(key)?;
        let parsed = value
            .split_once('x')
            .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
        let Some((w, h)) = parsed else {
            self.unmapped
                .push(format!("{key}: {value} — not WIDTHxHEIGHT"));
            return None;
        };
        match defaults::size(w).and_then(|_| defaults::size(h)) {
            Ok(_) => Some((w, h)),
            Err(what) => {
                self.unmapped.push(format!("{key}: {value} — {what}"));
                None
            }
        }
    }

    /// A1111's sampler knobs ("Eta", "Eta DDIM", "Sigma churn", ...) as pass 1's
    /// `sampler_options`, where its sampler has that option.
    fn sampler_knobs(&mut self, pass: &mut Pass) {
        let sampler = pass
            .sampler
            .clone()
            .unwrap_or_else(|| defaults::SAMPLER.to_owned());
        let options = find(&self.registry.samplers, &sampler, "sampler")
            .map(|e| e.decl.options.clone())
            .unwrap_or_default();
        let keys = [
            ("eta", "Eta"),
            ("eta", "Eta DDIM"),
            ("s_churn", "Sigma churn"),
            ("s_tmin", "Sigma tmin"),
            ("s_tmax", "Sigma tmax"),
            ("s_noise", "Sigma noise"),
        ];
        for (option, key) in keys {
            let Some(value) = self.number::<f64>(key) else {
                continue;
            };
            if !value.is_finite() {
                self.unmapped.push(format!("{key}: {value} — not a number"));
            } else if options.iter().any(|o| o == option) {
                pass.sampler_options
                    .insert(option.to_owned(), toml::Value::Float(value));
            } else {
                self.unmapped.push(format!(
                    "{key}: {value} — sampler `{sampler}` has no {option} option"
                ));
            }
        }
    }

    /// A1111's variation seed, its strength and "Seed resize from" (`WxH`, any sizes).
    fn variation(&mut self, profile: &mut Profile) {
        if let Some(subseed) = self.number::<i64>("Variation seed") {
            profile.subseed = subseed.max(-1);
        }
        if let Some(strength) = self.checked("Variation seed strength", defaults::subseed_strength)
        {
            profile.subseed_strength = strength;
        }
        if let Some(value) = self.take("Seed resize from") {
            let parsed = value
                .split_once('x')
                .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
            match parsed {
                // A1111 writes it only when both are set; -1 or 0 would mean off.
                Some((w, h))
                    if w > 0 && h > 0 && w <= defaults::MAX_SIZE && h <= defaults::MAX_SIZE =>
                {
                    (profile.seed_resize_from_w, profile.seed_resize_from_h) = (w, h)
                }
                _ => self.unmapped.push(format!(
                    "Seed resize from: {value} — not WIDTHxHEIGHT in pixels"
                )),
            }
        }
    }

    /// A sampler (A1111's combined "DPM++ 2M Karras" names a schedule too) and a schedule
    /// type, as this registry's ids.
    fn sampler(&mut self, sampler_key: &'a str, schedule_key: &'a str, pass: &mut Pass) {
        if let Some(name) = self.take(sampler_key) {
            match find_sampler(self.registry, name) {
                Ok((sampler, schedule)) => {
                    pass.sampler = Some(sampler.decl.name().to_owned());
                    pass.schedule = schedule.map(|s| s.decl.name().to_owned());
                }
                Err(e) => self.unmapped.push(format!("{sampler_key}: {name} — {e}")),
            }
        }
        if let Some(name) = self.take(schedule_key) {
            if name.eq_ignore_ascii_case("automatic") {
                return; // the sampler's own default
            }
            match find(&self.registry.schedules, name, "schedule") {
                Ok(schedule) => pass.schedule = Some(schedule.decl.name().to_owned()),
                Err(e) => self.unmapped.push(format!("{schedule_key}: {name} — {e}")),
            }
        }
    }

    /// A1111's hires fields as pass 2, if the text has any.
    fn hires(&mut self) -> Option<Pass> {
        let keys = [
            "Hires upscale",
            "Hires resize",
            "Hires steps",
            "Hires upscaler",
        ];
        if !keys.iter().any(|k| self.p.get(k).is_some()) {
            return None;
        }
        // hiresfix's img2img + hires writes the hires strength apart from pass 1's.
        let denoise = match self.p.get("Hires denoising strength").is_some() {
            true => self.checked("Hires denoising strength", defaults::denoise),
            false => self.checked("Denoising strength", defaults::denoise),
        };
        let mut pass = Pass {
            scale: self.checked("Hires upscale", defaults::scale),
            denoise,
            cfg: self.checked("Hires CFG Scale", defaults::cfg),
            guidance: self.checked("Hires Distilled CFG Scale", defaults::guidance),
            ..Default::default()
        };
        if let Some((w, h)) = self.size("Hires resize") {
            (pass.width, pass.height) = (Some(w), Some(h));
            pass.scale = None;
        }
        // A1111 writes 0 for "as many as pass 1", which is also the profile's default.
        let steps: Rule<u32> = |s| match s {
            0 => Ok(0),
            s => defaults::steps(s),
        };
        pass.steps = self.checked("Hires steps", steps).filter(|s| *s > 0);
        if let Some(name) = self.take("Hires upscaler") {
            match find(&self.registry.upscalers, name, "upscaler") {
                Ok(up) => pass.upscaler = Some(up.decl.name().to_owned()),
                // Not a built-in one: a model upscaler (ESRGAN family) by its name.
                Err(_) => {
                    pass.upscaler = Some(name.to_owned());
                    self.unmapped.push(format!(
                        "Hires upscaler: {name} — a model upscaler: the profile names it; put {name}.safetensors in upscaler_dirs"
                    ));
                }
            }
        }
        self.sampler("Hires sampler", "Hires schedule type", &mut pass);
        pass.prompt = self.take("Hires prompt").map(str::to_owned);
        pass.negative = self.take("Hires negative prompt").map(str::to_owned);
        if let Some(model) = self.take("Hires checkpoint") {
            self.unmapped.push(format!(
                "Hires checkpoint: {model} — set pass 2 checkpoint to its file"
            ));
        }
        pass.patches = self.patches("Hires ");
        Some(pass)
    }

    /// The Forge extensions' fields (`kohya_hrfix_*` → `deep_shrink`, `freeu_*` → `freeu`),
    /// behind `prefix` (`"Hires "`: a hires pass's own, as hiresfix writes them), as patches;
    /// `None` when the text names none (`Hires patches: None`: an empty list).
    fn patches(&mut self, prefix: &str) -> Option<Vec<PatchEntry>> {
        let p = self.p;
        let mut found: Vec<(&str, bool, BTreeMap<String, toml::Value>)> = Vec::new();
        let mut none = false;
        for (key, value) in &p.pairs {
            let Some(rest) = key.strip_prefix(prefix) else {
                continue;
            };
            if rest == "patches" && value == "None" {
                self.used.push(key);
                none = true;
                continue;
            }
            let (patch, field) = match (
                rest.strip_prefix("kohya_hrfix_"),
                rest.strip_prefix("freeu_"),
                attention_patch_field(rest),
            ) {
                (Some(field), ..) => ("deep_shrink", field),
                (_, Some(field), _) => ("freeu", field),
                (.., Some(found)) => found,
                _ => continue,
            };
            self.used.push(key);
            let option = match (patch, field) {
                (_, "enabled") => None,
                ("hypertile", f @ ("max_depth" | "tile_size" | "swap_size" | "scale_depth")) => {
                    Some(f)
                }
                ("tome", f @ ("ratio" | "max_downsample" | "sx" | "sy" | "use_rand")) => Some(f),
                ("deep_shrink", "block_number") => Some("block"),
                ("deep_shrink", "downscale_factor") => Some("factor"),
                ("deep_shrink", "start_percent") => Some("start"),
                ("deep_shrink", "end_percent") => Some("end"),
                ("deep_shrink", "downscale_after_skip") => Some("after_skip"),
                ("deep_shrink", f @ ("downscale_method" | "upscale_method")) => Some(f),
                ("freeu", f @ ("version" | "b1" | "b2" | "s1" | "s2")) => Some(f),
                _ => {
                    self.unmapped
                        .push(format!("{key}: {value} — no {patch} option does this"));
                    continue;
                }
            };
            let index = match found.iter().position(|(name, ..)| *name == patch) {
                Some(i) => i,
                None => {
                    found.push((patch, false, BTreeMap::new()));
                    found.len() - 1
                }
            };
            let entry = &mut found[index];
            // A1111 writes ToMe as its ratio alone (0: off).
            if (patch, field) == ("tome", "ratio") {
                entry.1 = value.parse::<f64>().is_ok_and(|r| r > 0.0);
            }
            match option {
                None => entry.1 = value.eq_ignore_ascii_case("true"),
                Some(option) => {
                    entry.2.insert(option.to_owned(), infotext_value(value));
                }
            }
        }
        let patches: Vec<PatchEntry> = found
            .into_iter()
            .filter(|(_, enabled, _)| *enabled)
            .map(|(name, _, mut options)| {
                if name == "tome" {
                    // A1111 runs tomesd with use_rand = false and does not write it.
                    options
                        .entry("use_rand".to_owned())
                        .or_insert(toml::Value::Boolean(false));
                }
                PatchEntry {
                    name: name.to_owned(),
                    options,
                }
            })
            .collect();
        (none || !patches.is_empty()).then_some(patches)
    }
}

/// A1111's built-in Hypertile and token-merging fields (and ours beside them) as
/// `(patch, field)`: `Hypertile U-Net: True` enables `hypertile`, `Token merging ratio` > 0
/// enables `tome`.
fn attention_patch_field(key: &str) -> Option<(&'static str, &'static str)> {
    Some(match key {
        "Hypertile U-Net" => ("hypertile", "enabled"),
        "Hypertile U-Net max depth" => ("hypertile", "max_depth"),
        "Hypertile U-Net max tile size" => ("hypertile", "tile_size"),
        "Hypertile U-Net swap size" => ("hypertile", "swap_size"),
        "Hypertile U-Net scale depth" => ("hypertile", "scale_depth"),
        "Token merging ratio" => ("tome", "ratio"),
        "Token merging max downsample" => ("tome", "max_downsample"),
        "Token merging sx" => ("tome", "sx"),
        "Token merging sy" => ("tome", "sy"),
        "Token merging random" => ("tome", "use_rand"),
        _ => return None,
    })
}
