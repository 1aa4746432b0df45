//! `POST /sdapi/v1/txt2img`: A1111 1.10's request fields mapped onto a profile, checked field
//! by field (a 422 names the field), and the response's `parameters` echo and `info` JSON.
//! `null`, `""` and the UI's "Use same …" sentinels mean unset; unknown keys are ignored, as
//! A1111 ignores them.
use std::path::PathBuf;

use serde_json::{json, Map, Value};

use super::error::{cut, ApiError, ApiResult};
use super::{catalog, ServerState};
use hiresfix_engine::defaults::{self, a1111};
use hiresfix_engine::generate::Rendered;
use hiresfix_engine::plan::find_sampler;
use hiresfix_engine::profile::{Pass, Profile};
use hiresfix_engine::registry::{display_name, find, Registry};

/// A1111's txt2img fields with their API defaults (the `parameters` echo starts from these).
pub fn defaults() -> Value {
    serde_json::from_str(DEFAULTS).expect("the defaults are JSON")
}

const DEFAULTS: &str = r#"{
        "prompt": "", "negative_prompt": "", "styles": null, "seed": -1, "subseed": -1,
        "subseed_strength": 0, "seed_resize_from_h": -1, "seed_resize_from_w": -1,
        "sampler_name": null, "scheduler": null, "batch_size": 1, "n_iter": 1, "steps": 50,
        "cfg_scale": 7.0, "width": 512, "height": 512, "restore_faces": null, "tiling": null,
        "do_not_save_samples": false, "do_not_save_grid": false, "eta": null,
        "denoising_strength": 0.75, "s_min_uncond": null, "s_churn": null, "s_tmax": null,
        "s_tmin": null, "s_noise": null, "override_settings": null,
        "override_settings_restore_afterwards": true, "refiner_checkpoint": null,
        "refiner_switch_at": null, "disable_extra_networks": false, "firstpass_image": null,
        "comments": null, "enable_hr": false, "firstphase_width": 0, "firstphase_height": 0,
        "hr_scale": 2.0, "hr_upscaler": null, "hr_second_pass_steps": 0, "hr_resize_x": 0,
        "hr_resize_y": 0, "hr_checkpoint_name": null, "hr_sampler_name": null,
        "hr_scheduler": null, "hr_prompt": "", "hr_negative_prompt": "", "force_task_id": null,
        "sampler_index": "Euler", "script_name": null, "script_args": [], "send_images": true,
        "save_images": false, "alwayson_scripts": {}, "infotext": null
    }"#;

/// The `parameters` echo: A1111's fields with defaults, overlaid with the request's values
/// for those fields (and Forge's `hr_cfg`, `distilled_cfg_scale` and `hr_distilled_cfg`).
pub fn echo(request: &Map<String, Value>) -> Value {
    let mut out = defaults();
    if let Some(map) = out.as_object_mut() {
        for (key, value) in request {
            if map.contains_key(key) || FORGE_FIELDS.contains(&key.as_str()) {
                map.insert(key.clone(), value.clone());
            }
        }
    }
    out
}

/// Forge's fields A1111 lacks, echoed in `parameters` when sent.
const FORGE_FIELDS: [&str; 3] = ["hr_cfg", "distilled_cfg_scale", "hr_distilled_cfg"];

/// Reads request fields: `null`, `""` and "Use same …" are unset; numbers may come as text
/// (openOutpaint sends `"seed": "1234"`).
pub struct Fields<'a>(pub &'a Map<String, Value>);

impl Fields<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        match self.0.get(key)? {
            Value::Null => None,
            Value::String(s) if s.trim().is_empty() || s.starts_with("Use same") => None,
            v => Some(v),
        }
    }

    /// A text field, bounded before anything reads it: prompts by the engine's prompt limit,
    /// names by [`crate::MAX_NAME_CHARS`].
    pub fn text(&self, key: &str) -> ApiResult<Option<String>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => {
                match PROMPTS.contains(&key) {
                    true => super::bounded_prompt(key, s)?,
                    false => super::bounded_text(key, s, super::MAX_NAME_CHARS)?,
                }
                Ok(Some(s.clone()))
            }
            Some(other) => Err(ApiError::field(
                key,
                format!("{key} must be text, not {}", echo_value(other)),
            )),
        }
    }

    pub fn float(&self, key: &str) -> ApiResult<Option<f64>> {
        let bad = |v: &Value| {
            ApiError::field(
                key,
                format!("{key} must be a number, not {}", echo_value(v)),
            )
        };
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_f64().map(Some).ok_or_else(|| bad(&json!(n))),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| bad(&json!(s))),
            Some(v) => Err(bad(v)),
        }
    }

    pub fn int(&self, key: &str) -> ApiResult<Option<i64>> {
        match self.float(key)? {
            None => Ok(None),
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(f as i64)),
            Some(f) => Err(ApiError::field(
                key,
                format!("{key} must be a whole number, not {}", echo_number(f)),
            )),
        }
    }

    /// A flag as A1111 reads it ([`crate::bool_field`]); `None` when unset.
    pub fn flag(&self, key: &str) -> ApiResult<Option<bool>> {
        self.get(key).map(|v| super::bool_field(key, v)).transpose()
    }

    /// `override_settings`' fields.
    fn overrides(&self) -> Map<String, Value> {
        match self.0.get("override_settings") {
            Some(Value::Object(map)) => map.clone(),
            _ => Map::new(),
        }
    }
}

/// The fields that hold prompts (bounded by the prompt limit, not the name limit).
const PROMPTS: &[&str] = &[
    "prompt",
    "negative_prompt",
    "hr_prompt",
    "hr_negative_prompt",
];

/// A request value as an error echoes it: at most 80 characters.
fn echo_value(value: &Value) -> String {
    match value {
        Value::String(s) => format!("\"{}\"", cut(s, 80)),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
        other => cut(&other.to_string(), 80),
    }
}

/// A number as an error echoes it: exponent form where the decimal one would be long.
fn echo_number(f: f64) -> String {
    match f != 0.0 && (f.abs() >= 1e15 || f.abs() < 1e-6) {
        true => format!("{f:e}"),
        false => cut(&f.to_string(), 80),
    }
}

/// Limits a server puts on one request (`hiresfix serve --max-*`).
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest side of any pass, in pixels.
    pub side: u32,
    pub steps: i64,
    /// Images per request (batch_size × n_iter).
    pub images: i64,
}

impl Limits {
    /// No limit but a profile's own ranges ([`defaults`]) and the engine's batch limit.
    pub fn of_a_profile() -> Self {
        Self {
            side: defaults::MAX_SIZE,
            steps: i64::from(defaults::MAX_STEPS),
            images: i64::from(hiresfix_engine::limits::MAX_BATCH),
        }
    }
}

/// What a request is mapped against: the registry's names, the `--defaults` profile, the
/// limits, and — on a running server — its models, VAEs, options and folders.
struct Site<'a> {
    registry: &'a Registry,
    defaults: &'a Profile,
    limits: &'a Limits,
    /// `None` for [`request_profile`]: the model, VAE, folders and device stay unset.
    server: Option<&'a ServerState>,
}

impl Site<'_> {
    fn upscaler_dirs(&self) -> Vec<PathBuf> {
        self.server.map(|s| s.upscaler_dirs()).unwrap_or_default()
    }
}

/// A field's value under one of a profile's range rules ([`defaults`]), else a 422 naming it.
fn ruled<T: std::fmt::Display + Copy>(
    key: &str,
    value: T,
    rule: defaults::Rule<T>,
) -> ApiResult<T> {
    defaults::check(key, value, rule).map_err(|e| ApiError::field(key, e.message))
}

fn in_range(key: &str, value: i64, low: i64, high: i64, fix: &str) -> ApiResult<i64> {
    match (low..=high).contains(&value) {
        true => Ok(value),
        false => Err(ApiError::field(
            key,
            format!("{key} = {value} is outside {low}..={high} — {fix}"),
        )),
    }
}

/// A request as a profile, every field checked (a 422 names the one at fault). Unset fields
/// take the server's `--defaults` profile's values, else A1111's defaults.
pub fn to_profile(state: &ServerState, body: &Map<String, Value>) -> ApiResult<Profile> {
    to_profile_as(state, body, Endpoint::Txt2img)
}

/// Which endpoint a request came to: what its `denoising_strength` means.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Endpoint {
    /// `denoising_strength` is the hires pass's.
    Txt2img,
    /// `denoising_strength` is pass 1's img2img strength; the hires pass reads
    /// `hr_denoising_strength` (A1111 has no hires fix on img2img).
    Img2img,
}

/// [`to_profile`] for the request of `endpoint` (the img2img handler adds its own fields to
/// pass 1 after this shared mapping).
pub fn to_profile_as(
    state: &ServerState,
    body: &Map<String, Value>,
    endpoint: Endpoint,
) -> ApiResult<Profile> {
    let site = Site {
        registry: state.registry,
        defaults: &state.defaults,
        limits: &state.limits,
        server: Some(state),
    };
    map_request(&site, body, endpoint)
}

/// A request body as the profile a server without `--defaults` would run, with no server: the
/// same mapping and checks as [`to_profile`] under a profile's own limits, names looked up in
/// `registry`; what only a running server knows — the model and VAE (`override_settings`,
/// `hr_checkpoint_name`), its folders, device and dtype — stays unset.
pub fn request_profile(registry: &Registry, body: &Map<String, Value>) -> ApiResult<Profile> {
    let site = Site {
        registry,
        defaults: &Profile::empty(),
        limits: &Limits::of_a_profile(),
        server: None,
    };
    map_request(&site, body, Endpoint::Txt2img)
}

/// [`to_profile`] and [`request_profile`]: the fields in order, each checked as it is read,
/// then the whole profile under [`Profile::validate`] (what a TOML profile must pass).
fn map_request(
    site: &Site<'_>,
    body: &Map<String, Value>,
    endpoint: Endpoint,
) -> ApiResult<Profile> {
    super::ignored::no_script(body)?;
    let f = Fields(body);
    let limits = site.limits;
    let base = site.defaults;
    let base_first = base.passes.first().cloned().unwrap_or_default();
    let mut profile = base.clone();
    profile.passes.clear();
    let overrides = Fields(&f.overrides());
    profile.prompt = f.text("prompt")?.unwrap_or_else(|| base.prompt.clone());
    profile.negative = f
        .text("negative_prompt")?
        .unwrap_or_else(|| base.negative.clone());
    super::plain_lora_tags("prompt", &profile.prompt)?;
    super::plain_lora_tags("negative_prompt", &profile.negative)?;
    profile.seed = f.int("seed")?.unwrap_or(base.seed).max(-1); // any negative seed is random
    variation_seeds(&f, &mut profile)?;
    let images = "send fewer images per request";
    let one = i64::from(defaults::BATCH);
    let per_batch = in_range(
        "batch_size",
        f.int("batch_size")?.unwrap_or(one),
        1,
        limits.images,
        images,
    )?;
    let iterations = in_range(
        "n_iter",
        f.int("n_iter")?.unwrap_or(one),
        1,
        limits.images,
        images,
    )?;
    let fix = "batch_size × n_iter is the image count; send fewer";
    in_range("batch_size", per_batch * iterations, 1, limits.images, fix)?;
    profile.batch = (per_batch * iterations) as u32;
    // A1111's API default (7) where neither the request nor the server's profile sets one.
    let cfg = f.float("cfg_scale")?.or(base.cfg).unwrap_or(defaults::CFG);
    profile.cfg = Some(ruled("cfg_scale", cfg, defaults::cfg)?);
    // Forge's "Distilled CFG Scale" (Flux dev's guidance); other families ignore it.
    if let Some(g) = f.float("distilled_cfg_scale")? {
        profile.guidance = Some(ruled("distilled_cfg_scale", g, defaults::guidance)?);
    }
    if let Some(tiling) = f.flag("tiling")? {
        profile.tiling = tiling;
    }
    let side = i64::from(limits.side);
    let size_fix = format!("this server makes images of at most {side} px a side");
    let size = |key: &str, fallback: Option<u32>| -> ApiResult<u32> {
        let value = f
            .int(key)?
            .unwrap_or(i64::from(fallback.unwrap_or(a1111::SIZE)));
        Ok(in_range(key, value, 64, side, &size_fix)? as u32)
    };
    let steps = f
        .int("steps")?
        .unwrap_or(i64::from(base_first.steps.unwrap_or(a1111::STEPS)));
    let mut first = Pass {
        width: Some(size("width", base_first.width)?),
        height: Some(size("height", base_first.height)?),
        steps: Some(in_range("steps", steps, 1, limits.steps, "use fewer steps")? as u32),
        ..base_first.clone()
    };
    let sampler_key = match f.get("sampler_name") {
        Some(_) => "sampler_name",
        None => "sampler_index",
    };
    if let Some(sampler) = f.text(sampler_key)? {
        (first.sampler, first.schedule) = sampler_and_schedule(site, sampler_key, &sampler)?;
    } else if first.sampler.is_none() {
        (first.sampler, first.schedule) = sampler_and_schedule(site, sampler_key, a1111::SAMPLER)?;
    }
    if let Some(schedule) = schedule(site, &f, "scheduler")? {
        first.schedule = Some(schedule);
    }
    // The model: override_settings, else the server's current default.
    if let Some(state) = site.server {
        let model = match overrides.text("sd_model_checkpoint")? {
            Some(name) => state.checkpoint("override_settings.sd_model_checkpoint", &name)?,
            None => state.default_checkpoint()?,
        };
        profile.model.checkpoint = Some(model.path.to_string_lossy().into_owned());
        profile.model.vae = match overrides.text("sd_vae")? {
            Some(vae) => state.vae("override_settings.sd_vae", &vae)?,
            None => state.default_vae(),
        };
    }
    let clip_skip = match overrides.int("CLIP_stop_at_last_layers")? {
        Some(n) => Some(("override_settings.CLIP_stop_at_last_layers", n)),
        None => f.int("clip_skip")?.map(|n| ("clip_skip", n)),
    };
    profile.model.clip_skip = match (clip_skip, site.server) {
        (Some((key, n)), _) => in_range(key, n, 1, 12, "CLIP skip is 1 (none) to 12")? as u32,
        (None, Some(state)) => state.options_clip_skip(),
        (None, None) => defaults::CLIP_SKIP,
    };
    if let Some(state) = site.server {
        // A1111's ENSD option (`override_settings` may carry it for one request).
        profile.eta_noise_seed_delta = match overrides.int("eta_noise_seed_delta")? {
            Some(n) => n,
            None => match state.options_noise_seed_delta() {
                0 => base.eta_noise_seed_delta,
                n => n,
            },
        };
        profile.hires_fix_use_firstpass_conds =
            match overrides.flag("hires_fix_use_firstpass_conds")? {
                Some(on) => on,
                None => state.options_firstpass_conds(),
            };
        profile.lora_dirs = state.lora_dirs();
        profile.embedding_dirs = state.embedding_dirs();
        profile.upscaler_dirs = state.upscaler_dirs();
        profile.vae_approx_dirs = state.vae_approx_dirs();
        if profile.device == hiresfix_engine::profile::DeviceChoice::Auto {
            profile.device = state.device.clone();
        }
        if profile.dtype == hiresfix_engine::profile::DtypeChoice::Auto {
            profile.dtype = state.dtype;
        }
    }
    profile.passes.push(first);
    if f.flag("enable_hr")?.unwrap_or(false) {
        let hires = hires_pass(site, &f, &profile, endpoint)?;
        profile.passes.push(hires);
    }
    refiner(site, &f, &overrides, &mut profile.passes)?;
    super::sampler_fields::apply(site.registry, &f, &mut profile)?;
    profile
        .validate()
        .map_err(|e| ApiError::field(&e.key, e.message))?;
    Ok(profile)
}

/// A1111's `refiner_checkpoint` (a model name; "" or "None": none) and `refiner_switch_at`
/// (A1111's UI default 0.8 when unset) on the passes A1111 runs the refiner in: pass 1, or with
/// hires fix the option `hires_fix_refiner_pass` says ("second pass" by default). Without a
/// server the model stays unset, as `hr_checkpoint_name`.
fn refiner(
    site: &Site<'_>,
    f: &Fields<'_>,
    overrides: &Fields<'_>,
    passes: &mut [Pass],
) -> ApiResult<()> {
    let switch_at = match f.float("refiner_switch_at")? {
        Some(v) => Some(ruled("refiner_switch_at", v, defaults::refiner_switch_at)?),
        None => None,
    };
    let name = f
        .text("refiner_checkpoint")?
        .filter(|n| !matches!(n.trim(), "" | "None" | "none"));
    let (Some(name), Some(state)) = (name, site.server) else {
        return Ok(());
    };
    let model = state.checkpoint("refiner_checkpoint", &name)?;
    let which = match overrides.text("hires_fix_refiner_pass")? {
        Some(v) => super::options::checked("hires_fix_refiner_pass", &Value::from(v))?
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        None => state.options_refiner_pass(),
    };
    let on = hiresfix_engine::refiner::passes_of(Some(&which), passes.len() > 1);
    let count = passes.len();
    for &i in on.iter().filter(|&&i| i < count) {
        let pass = &mut passes[i];
        pass.refiner_checkpoint = Some(model.path.to_string_lossy().into_owned());
        pass.refiner_switch_at = switch_at;
    }
    Ok(())
}

/// A1111's variation seeds: `subseed` (any negative one is random), `subseed_strength` (0 to
/// 1) and `seed_resize_from_w` / `_h` (-1 or 0: off).
fn variation_seeds(f: &Fields<'_>, profile: &mut Profile) -> ApiResult<()> {
    if let Some(subseed) = f.int("subseed")? {
        profile.subseed = subseed.max(-1);
    }
    if let Some(strength) = f.float("subseed_strength")? {
        profile.subseed_strength = ruled("subseed_strength", strength, defaults::subseed_strength)?;
    }
    for key in ["seed_resize_from_w", "seed_resize_from_h"] {
        let Some(side) = f.int(key)? else {
            continue;
        };
        let side = in_range(
            key,
            side.max(0),
            0,
            i64::from(defaults::MAX_SIZE),
            "0 is off",
        )?;
        match key {
            "seed_resize_from_w" => profile.seed_resize_from_w = side as u32,
            _ => profile.seed_resize_from_h = side as u32,
        }
    }
    Ok(())
}

/// A1111's hires fields as pass 2 (unset ones from `--defaults`' pass 2).
fn hires_pass(
    site: &Site<'_>,
    f: &Fields<'_>,
    profile: &Profile,
    endpoint: Endpoint,
) -> ApiResult<Pass> {
    let base = site.defaults.passes.get(1).cloned().unwrap_or_default();
    let side = site.limits.side as f64;
    let (w, h) = match profile.passes.first().map(|p| (p.width, p.height)) {
        Some((Some(w), Some(h))) => (w as f64, h as f64),
        _ => return Err(ApiError::internal("pass 1 has no size")),
    };
    let (key, fallback) = match endpoint {
        Endpoint::Txt2img => ("denoising_strength", a1111::DENOISE),
        Endpoint::Img2img => ("hr_denoising_strength", defaults::HIRES_DENOISE),
    };
    let denoise = f.float(key)?.or(base.denoise).unwrap_or(fallback);
    let denoise = ruled(key, denoise, defaults::denoise)?;
    let mut pass = Pass {
        denoise: Some(denoise),
        width: None,
        height: None,
        scale: None,
        ..base.clone()
    };
    let rx = f.int("hr_resize_x")?.unwrap_or(0);
    let ry = f.int("hr_resize_y")?.unwrap_or(0);
    let (target_w, target_h, key) = match (rx, ry) {
        (0, 0) => {
            let scale = f
                .float("hr_scale")?
                .or(base.scale)
                .unwrap_or(defaults::HIRES_SCALE);
            let scale = ruled("hr_scale", scale, defaults::scale)?;
            pass.scale = Some(scale);
            (w * scale, h * scale, "hr_scale")
        }
        (x, y) if x < 0 || y < 0 => {
            let key = if x < 0 { "hr_resize_x" } else { "hr_resize_y" };
            let message = "hr_resize_x and hr_resize_y are sizes in pixels (0 = from hr_scale)";
            return Err(ApiError::field(key, message));
        }
        // One side given: the other keeps pass 1's aspect; both: cover and crop (A1111).
        (x, 0) => {
            pass.width = Some(x as u32);
            (x as f64, x as f64 * h / w, "hr_resize_x")
        }
        (0, y) => {
            pass.height = Some(y as u32);
            (y as f64 * w / h, y as f64, "hr_resize_y")
        }
        (x, y) => {
            (pass.width, pass.height) = (Some(x as u32), Some(y as u32));
            let s = (x as f64 / w).max(y as f64 / h);
            (w * s, h * s, "hr_resize_x")
        }
    };
    if target_w > side || target_h > side || target_w < 64.0 || target_h < 64.0 {
        let message = format!(
            "the hires size {}x{} is outside 64..={side} px a side — this server makes images of at most {side} px a side",
            target_w as i64, target_h as i64
        );
        return Err(ApiError::field(key, message));
    }
    let steps = match f.get("hr_second_pass_steps") {
        Some(_) => f.int("hr_second_pass_steps")?,
        None => f.int("hr_steps")?,
    };
    pass.steps = match steps {
        None => base.steps,
        Some(0) => None,
        Some(n) => {
            let n = in_range(
                "hr_second_pass_steps",
                n,
                1,
                site.limits.steps,
                "use fewer steps",
            )?;
            Some(n as u32)
        }
    };
    pass.upscaler = Some(upscaler(site, f, base.upscaler.as_deref())?);
    if let Some(name) = f.text("hr_sampler_name")? {
        let (sampler, schedule) = sampler_and_schedule(site, "hr_sampler_name", &name)?;
        pass.sampler = sampler;
        pass.schedule = schedule;
    }
    if let Some(schedule) = schedule(site, f, "hr_scheduler")? {
        pass.schedule = Some(schedule);
    }
    if let Some(prompt) = f.text("hr_prompt")? {
        super::plain_lora_tags("hr_prompt", &prompt)?;
        pass.prompt = Some(prompt);
    }
    if let Some(negative) = f.text("hr_negative_prompt")? {
        super::plain_lora_tags("hr_negative_prompt", &negative)?;
        pass.negative = Some(negative);
    }
    if let (Some(name), Some(state)) = (f.text("hr_checkpoint_name")?, site.server) {
        let model = state.checkpoint("hr_checkpoint_name", &name)?;
        let path = model.path.to_string_lossy().into_owned();
        if profile.model.checkpoint.as_deref() != Some(path.as_str()) {
            pass.checkpoint = Some(path);
        }
    }
    // Forge's hr_cfg; A1111 has none and uses cfg_scale, as does an unset one here.
    if let Some(cfg) = f.float("hr_cfg")? {
        let cfg = ruled("hr_cfg", cfg, defaults::cfg)?;
        pass.cfg = (Some(cfg) != profile.cfg).then_some(cfg);
    }
    // Forge's hires "Distilled CFG Scale" (the hires pass's Flux guidance).
    if let Some(g) = f.float("hr_distilled_cfg")? {
        pass.guidance = Some(ruled("hr_distilled_cfg", g, defaults::guidance)?);
    }
    Ok(pass)
}

/// A sampler name (A1111's, combined with a schedule or not) as registry ids.
fn sampler_and_schedule(
    site: &Site<'_>,
    key: &str,
    name: &str,
) -> ApiResult<(Option<String>, Option<String>)> {
    let (sampler, schedule) = find_sampler(site.registry, name)
        .map_err(|e| ApiError::field(key, format!("{key}: {e}")))?;
    Ok((
        Some(sampler.decl.name.to_string()),
        schedule.map(|s| s.decl.name.to_string()),
    ))
}

/// A schedule field (`scheduler`, `hr_scheduler`): "automatic" is the sampler's own.
fn schedule(site: &Site<'_>, f: &Fields<'_>, key: &str) -> ApiResult<Option<String>> {
    let Some(name) = f.text(key)? else {
        return Ok(None);
    };
    if name.eq_ignore_ascii_case("automatic") {
        return Ok(None);
    }
    let entry = find(&site.registry.schedules, &name, "schedule")
        .map_err(|e| ApiError::field(key, format!("{key}: {e}")))?;
    Ok(Some(entry.decl.name.to_string()))
}

/// `hr_upscaler`: a latent mode, "None" / "Lanczos" / "Nearest", or a model upscaler's name.
fn upscaler(site: &Site<'_>, f: &Fields<'_>, fallback: Option<&str>) -> ApiResult<String> {
    let Some(name) = f.text("hr_upscaler")? else {
        // The --defaults profile's, else A1111's default latent mode (a profile's too).
        return Ok(fallback.unwrap_or(defaults::HIRES_UPSCALER).to_owned());
    };
    if name.eq_ignore_ascii_case("none") {
        return Ok("pixel-lanczos".into()); // no model; A1111 resizes with Lanczos
    }
    // openOutpaint offers "Latent (bicubic, antialiased)"; A1111 spells it without the comma.
    for candidate in [name.clone(), name.replace(", ", " ")] {
        if let Ok(entry) = find(&site.registry.upscalers, &candidate, "upscaler") {
            return Ok(entry.decl.name.to_string());
        }
    }
    super::plain_name("hr_upscaler", &name)?;
    match hiresfix_engine::upscaler_models::find(&site.upscaler_dirs(), &name) {
        Ok(Some(_)) => Ok(name),
        // An A1111 name without its file, another architecture, a refused pickle.
        Err(e) => Err(ApiError::field(
            "hr_upscaler",
            format!(
                "hr_upscaler: {}",
                hiresfix_engine::errors::one_line(&e)
            ),
        )),
        Ok(None) => Err(ApiError::field(
            "hr_upscaler",
            format!(
                "hr_upscaler: unknown upscaler `{}` — see GET /sdapi/v1/upscalers and /sdapi/v1/latent-upscale-modes",
                cut(&name, 80)
            ),
        )),
    }
}

/// The response's `info` JSON (A1111's `Processed.js()` keys) for the images made.
pub fn info(
    profile: &Profile,
    model: &catalog::Checkpoint,
    sampler_label: &str,
    rendered: &[Rendered],
) -> Value {
    let seeds: Vec<i64> = rendered.iter().map(|r| r.seed).collect();
    let first_seed = seeds.first().copied().unwrap_or(profile.seed);
    let subseeds: Vec<i64> = rendered.iter().map(|r| r.subseed).collect();
    let first_subseed = subseeds.first().copied().unwrap_or(profile.subseed);
    let resize = |side: u32| match side {
        0 => -1,
        side => i64::from(side),
    };
    let infotexts: Vec<&str> = rendered.iter().map(|r| r.parameters.as_str()).collect();
    let n = rendered.len().max(1);
    let first = profile.passes.first();
    let hires = profile.passes.get(1);
    let mut extra = Map::new();
    if let Some(text) = infotexts.first() {
        const BASIC: &[&str] = &[
            "Steps",
            "Sampler",
            "CFG scale",
            "Seed",
            "Size",
            "Model",
            "Model hash",
        ];
        for (key, value) in hiresfix_engine::infotext::parse(text).pairs {
            if !BASIC.contains(&key.as_str()) {
                extra.insert(key, Value::String(value));
            }
        }
    }
    let stamp = job_timestamp();
    json!({
        "prompt": profile.prompt,
        "all_prompts": vec![profile.prompt.clone(); n],
        "negative_prompt": profile.negative,
        "all_negative_prompts": vec![profile.negative.clone(); n],
        "seed": first_seed,
        "all_seeds": seeds,
        "subseed": first_subseed,
        "all_subseeds": subseeds,
        "subseed_strength": profile.subseed_strength,
        "width": first.and_then(|p| p.width),
        "height": first.and_then(|p| p.height),
        "sampler_name": sampler_label,
        "cfg_scale": profile.cfg.unwrap_or(defaults::CFG),
        "steps": first.and_then(|p| p.steps),
        "batch_size": profile.batch,
        "restore_faces": false,
        "face_restoration_model": null,
        "sd_model_name": model.name,
        "sd_model_hash": hiresfix_engine::parameters::model_hash(&model.path),
        "sd_vae_name": profile.model.vae.as_deref().map(|v| std::path::Path::new(v).file_stem().map(|s| s.to_string_lossy().into_owned())),
        "sd_vae_hash": null,
        "seed_resize_from_w": resize(profile.seed_resize_from_w),
        "seed_resize_from_h": resize(profile.seed_resize_from_h),
        "denoising_strength": hires.and_then(|p| p.denoise),
        "extra_generation_params": extra,
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": stamp,
        "clip_skip": profile.model.clip_skip,
        "is_using_inpainting_conditioning": false,
        "version": concat!("hiresfix ", env!("CARGO_PKG_VERSION")),
    })
}

/// The display name of the sampler a profile's pass 1 runs (for `info.sampler_name`).
pub fn sampler_label(state: &ServerState, profile: &Profile) -> String {
    let id = profile
        .passes
        .first()
        .and_then(|p| p.sampler.clone())
        .unwrap_or_else(|| defaults::SAMPLER.into());
    find(&state.registry.samplers, &id, "sampler")
        .map(|e| display_name(&e.decl))
        .unwrap_or(id)
}

/// Now as A1111's `job_timestamp` (`YYYYmmddHHMMSS`, UTC).
fn job_timestamp() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `parameters` echo's A1111 defaults are the ones an unset field is mapped with.
    #[test]
    fn the_echoed_defaults_are_the_mapped_ones() {
        let echoed = defaults();
        assert_eq!(echoed["steps"], json!(a1111::STEPS));
        assert_eq!(echoed["denoising_strength"], json!(a1111::DENOISE));
        assert_eq!(echoed["sampler_index"], json!(a1111::SAMPLER));
        assert_eq!(echoed["width"], json!(a1111::SIZE));
        assert_eq!(echoed["height"], json!(a1111::SIZE));
        assert_eq!(
            echoed["hr_scale"],
            json!(hiresfix_engine::defaults::HIRES_SCALE)
        );
        assert_eq!(echoed["cfg_scale"], json!(hiresfix_engine::defaults::CFG));
        assert_eq!(
            echoed["batch_size"],
            json!(hiresfix_engine::defaults::BATCH)
        );
    }
}
