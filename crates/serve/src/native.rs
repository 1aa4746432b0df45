//! hiresfix's own endpoints: `POST /hiresfix/v1/generate` takes a whole profile (TOML, or
//! JSON with the same keys) and streams the job as server-sent events — `queued`, `started`,
//! `progress`, `preview` (a live preview PNG, as `/progress`'s current_image), one `image` per PNG, then `done` or `error`; `GET /hiresfix/v1/plugins` lists
//! what the registry offers. A request names models, VAEs and LoRAs as the server lists them,
//! never by path, and cannot set folders or plugins: those are the server's.
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::body::Payload;
use super::content_type::Declared;
use super::error::{cut, ApiError, ApiResult};
use super::sdapi::{images_of, run_job};
use super::Shared;
use hiresfix_engine::defaults;
use hiresfix_engine::profile::{DeviceChoice, DtypeChoice, Profile};

/// The body as a profile: JSON or TOML, as its content type declared ([`Payload`]).
fn parse_profile(payload: &Payload) -> ApiResult<Profile> {
    bounded_profile(payload.bytes.len())?;
    let text = payload.text()?;
    let parsed = match payload.declared {
        Declared::Toml => Profile::parse(text, "profile"),
        _ => serde_json::from_str::<Profile>(text)
            .map_err(|e| anyhow::anyhow!("profile (JSON): {e}")),
    };
    parsed.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            hiresfix_engine::errors::one_line(&e),
        )
    })
}

/// The longest text a profile can be: every prompt it may hold (the main two and two per
/// pass) at the prompt limit in 4-byte characters, and 64 KiB for everything else.
const MAX_PROFILE_BYTES: usize =
    (2 + 2 * hiresfix_engine::limits::MAX_PASSES) * hiresfix_engine::limits::MAX_PROMPT_CHARS * 4
        + 64 * 1024;

/// A body longer than any profile can be is refused before it is parsed (parsing is the
/// slow part of refusing a 4 MB prompt).
fn bounded_profile(bytes: usize) -> ApiResult<()> {
    if bytes <= MAX_PROFILE_BYTES {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the profile is {bytes} bytes, longer than any profile can be ({MAX_PROFILE_BYTES}: each prompt is at most {} characters) — shorten the prompt",
            hiresfix_engine::limits::MAX_PROMPT_CHARS
        ),
    ))
}

/// Server-side names made paths, and what only the server may set refused.
fn adopt(state: &Shared, mut profile: Profile) -> ApiResult<Profile> {
    let server_only = [
        ("plugin_dirs", !profile.plugin_dirs.is_empty()),
        ("plugin_sha256", !profile.plugin_sha256.is_empty()),
        ("lora_dirs", !profile.lora_dirs.is_empty()),
        ("embedding_dirs", !profile.embedding_dirs.is_empty()),
        ("upscaler_dirs", !profile.upscaler_dirs.is_empty()),
        ("vae_approx_dirs", !profile.vae_approx_dirs.is_empty()),
    ];
    if let Some((key, _)) = server_only.iter().find(|(_, set)| *set) {
        return Err(ApiError::field(
            key,
            format!("{key} is the server's (--plugins, --loras, --upscalers, <models>/VAE-approx); leave it out"),
        ));
    }
    // Prompts are bounded before their tags are scanned.
    hiresfix_engine::limits::check_profile(&profile)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let path = |c: &super::catalog::Checkpoint| c.path.to_string_lossy().into_owned();
    // The family (for pass 1's default size) is the checkpoint's, or a merge's first model's;
    // the default checkpoint is filled in only when there is no merge (never both).
    let family = match &mut profile.model.merge {
        Some(_) if profile.model.checkpoint.is_some() => {
            return Err(ApiError::field(
                "model.checkpoint",
                "[model] has both checkpoint and merge — keep one",
            ))
        }
        Some(merge) => {
            let mut family = None;
            for entry in merge.iter_mut() {
                let model = state.checkpoint("model.merge", &entry.checkpoint)?;
                entry.checkpoint = path(&model);
                family.get_or_insert(model.family);
            }
            family.unwrap_or_default()
        }
        None => {
            let model = match &profile.model.checkpoint {
                Some(name) => state.checkpoint("model.checkpoint", name)?,
                None => state.default_checkpoint()?,
            };
            profile.model.checkpoint = Some(path(&model));
            model.family
        }
    };
    profile.model.vae = match &profile.model.vae {
        Some(name) => state.vae("model.vae", name)?,
        None => state.default_vae(),
    };
    let loras = state.loras();
    let lora = |key: &str, name: &str| -> ApiResult<String> {
        loras
            .iter()
            .find(|l| {
                l.name
                    .eq_ignore_ascii_case(name.trim_end_matches(".safetensors"))
            })
            .map(|l| l.path.to_string_lossy().into_owned())
            .ok_or_else(|| {
                ApiError::field(
                    key,
                    format!("{key}: no LoRA `{}` (GET /sdapi/v1/loras)", cut(name, 80)),
                )
            })
    };
    for entry in &mut profile.model.loras {
        entry.path = lora("model.loras", &entry.path)?;
    }
    super::plain_lora_tags("prompt", &profile.prompt)?;
    super::plain_lora_tags("negative", &profile.negative)?;
    for (i, pass) in profile.passes.iter_mut().enumerate() {
        let key = |k: &str| format!("pass.{}.{k}", i + 1);
        for (k, text) in [("prompt", &pass.prompt), ("negative", &pass.negative)] {
            if let Some(text) = text {
                super::plain_lora_tags(&key(k), text)?;
            }
        }
        if let Some(name) = &pass.upscaler {
            super::plain_name(&key("upscaler"), name)?;
        }
        // A path on the server would read its files into the image: img2img comes by upload.
        if let Some(k) = ["init_image", "mask"].into_iter().find(|k| match *k {
            "init_image" => pass.init_image.is_some(),
            _ => pass.mask.is_some(),
        }) {
            return Err(ApiError::field(
                &key(k),
                format!("{} is a file on the server; send the image to /sdapi/v1/img2img (init_images, mask) instead", key(k)),
            ));
        }
        if let Some(name) = &pass.checkpoint {
            pass.checkpoint = Some(path(&state.checkpoint(&key("checkpoint"), name)?));
        }
        if let Some(name) = &pass.refiner_checkpoint {
            let model = state.checkpoint(&key("refiner_checkpoint"), name)?;
            pass.refiner_checkpoint = Some(path(&model));
        }
        if let Some(name) = &pass.vae {
            pass.vae = state.vae(&key("vae"), name)?;
        }
        for entry in pass.loras.iter_mut().flatten() {
            entry.path = lora(&key("loras"), &entry.path)?;
        }
    }
    if profile.device == DeviceChoice::Auto {
        profile.device = state.device.clone();
    }
    if profile.dtype == DtypeChoice::Auto {
        profile.dtype = state.dtype;
    }
    profile.lora_dirs = state.lora_dirs();
    profile.embedding_dirs = state.embedding_dirs();
    profile.upscaler_dirs = state.upscaler_dirs();
    profile.vae_approx_dirs = state.vae_approx_dirs();
    check_limits(state, &profile, &family)?;
    Ok(profile)
}

/// The server's limits on a whole profile: images, steps and every pass's size.
fn check_limits(state: &Shared, profile: &Profile, family: &str) -> ApiResult<()> {
    let limits = &state.limits;
    hiresfix_engine::limits::check_profile(profile)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    if i64::from(profile.batch) > limits.images {
        return Err(ApiError::field(
            "batch",
            format!(
                "batch = {} is above this server's {} images per request",
                profile.batch, limits.images
            ),
        ));
    }
    let mut probe = profile.clone();
    probe
        .resolve_defaults(defaults::family_size(family))
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    for (i, pass) in probe.passes.iter().enumerate() {
        let steps = defaults::resolved(pass.steps, i + 1, "steps")
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let steps = i64::from(steps);
        if steps > limits.steps {
            return Err(ApiError::field(
                &format!("pass.{}.steps", i + 1),
                format!(
                    "pass.{}.steps = {steps} is above this server's {}",
                    i + 1,
                    limits.steps
                ),
            ));
        }
    }
    let (sizes, _) = hiresfix_engine::plan::pass_sizes(&probe.passes, 8)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    for (i, size) in sizes.iter().enumerate() {
        if size.width.max(size.height) > limits.side {
            return Err(ApiError::field(
                &format!("pass.{}", i + 1),
                format!(
                    "pass {} is {}x{} px, above this server's {} px a side",
                    i + 1,
                    size.width,
                    size.height,
                    limits.side
                ),
            ));
        }
    }
    Ok(())
}

fn event(name: &str, data: Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

pub async fn generate(
    State(state): State<Shared>,
    payload: Payload,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let profile = adopt(&state, parse_profile(&payload)?)?;
    let (started_tx, started) = oneshot::channel();
    let task = crate::progress::task_id("hiresfix", None);
    let outcome = run_job(&state, profile, Some(started_tx), task).await?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    let position = state.queue.jobs();
    let observer = state.queue.observer.clone();
    tokio::spawn(stream_job(tx, started, outcome, position, observer));
    let stream = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Feeds one job's events into `tx` until it ends (a closed stream only stops the events).
async fn stream_job(
    tx: mpsc::Sender<Event>,
    started: oneshot::Receiver<()>,
    mut outcome: oneshot::Receiver<super::worker::Outcome>,
    position: usize,
    observer: std::sync::Arc<super::progress::JobObserver>,
) {
    let _ = tx
        .send(event(
            "queued",
            json!({"jobs_ahead": position.saturating_sub(1)}),
        ))
        .await;
    let clock = std::time::Instant::now();
    let result = tokio::select! {
        biased;
        result = &mut outcome => Some(result),
        started = started => match started {
            Ok(()) => None,
            Err(_) => Some((&mut outcome).await), // never started: the outcome says why
        },
    };
    let result = match result {
        Some(result) => result,
        None => {
            let _ = tx.send(event("started", json!({}))).await;
            let mut last = (usize::MAX, usize::MAX);
            let mut previews = 0;
            loop {
                tokio::select! {
                    result = &mut outcome => break result,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        let p = observer.snapshot();
                        // A new live preview (options live_previews_enable, every N steps).
                        if let (Some(png), made) = observer.latest_preview() {
                            if made != previews && p.active {
                                previews = made;
                                let data = json!({
                                    "pass": p.pass, "step": p.pass_step,
                                    "png": base64::engine::general_purpose::STANDARD.encode(png),
                                });
                                let _ = tx.send(event("preview", data)).await;
                            }
                        }
                        if (p.done, p.pass) != last && p.active {
                            last = (p.done, p.pass);
                            let data = json!({
                                "pass": p.pass, "step": p.pass_step, "steps": p.pass_steps,
                                "done": p.done, "total": p.job_steps,
                                "progress": p.fraction(), "eta": p.eta(),
                            });
                            let _ = tx.send(event("progress", data)).await;
                        }
                    }
                }
            }
        }
    };
    match images_of(result) {
        Ok((images, interrupted)) => {
            for (index, image) in images.iter().enumerate() {
                let data = json!({
                    "index": index, "seed": image.seed, "parameters": image.parameters,
                    "png": base64::engine::general_purpose::STANDARD.encode(&image.png),
                });
                let _ = tx.send(event("image", data)).await;
            }
            let data = json!({
                "images": images.len(), "interrupted": interrupted,
                "seconds": clock.elapsed().as_secs_f64(),
            });
            let _ = tx.send(event("done", data)).await;
        }
        Err(e) => {
            let data = json!({"status": e.status.as_u16(), "detail": e.message, "field": e.field});
            let _ = tx.send(event("error", data)).await;
        }
    }
}

pub async fn plugins(State(state): State<Shared>) -> Json<Value> {
    let r = state.registry;
    fn entries<D: hiresfix_engine::registry::Named>(
        list: &[hiresfix_engine::registry::Entry<D>],
    ) -> Value {
        Value::Array(
            list.iter()
                .map(
                    |e| json!({"name": e.decl.name(), "aliases": e.decl.aliases(), "file": e.file}),
                )
                .collect(),
        )
    }
    let refused: Vec<Value> = r
        .refused
        .iter()
        .map(|f| json!({"file": f.file, "reason": f.reason}))
        .collect();
    Json(json!({
        "samplers": entries(&r.samplers),
        "schedules": entries(&r.schedules),
        "upscalers": entries(&r.upscalers),
        "backends": entries(&r.backends),
        "patches": entries(&r.patches),
        "refused": refused,
    }))
}
