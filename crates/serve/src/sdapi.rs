//! The `/sdapi/v1/*` endpoints, shaped as A1111 1.10 answers them.
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::body::Payload;
use super::error::{cut, ApiError, ApiResult};
use super::worker::{Outcome, Rejected, Work};
use super::{txt2img, Shared};
use hiresfix_engine::profile::Profile;
use hiresfix_engine::registry::display_name;

/// Queues `profile` and waits for its outcome (503 when the queue is full).
pub async fn run_job(
    state: &Shared,
    profile: Profile,
    started: Option<oneshot::Sender<()>>,
    task: String,
) -> ApiResult<oneshot::Receiver<Outcome>> {
    let (reply, outcome) = oneshot::channel();
    let work = Work {
        profile,
        started,
        reply,
        task: Some(task),
        chore: None,
    };
    submit(state, work)?;
    Ok(outcome)
}

/// Queues `work` (503 when the queue is full).
pub fn submit(state: &Shared, work: Work) -> ApiResult<()> {
    match state.queue.submit(work) {
        Ok(()) => Ok(()),
        Err(Rejected::Full) => Err(ApiError::busy(
            format!(
                "busy: {} jobs are already waiting (--queue) — try again in a few seconds",
                state.queue.capacity
            ),
            5,
        )),
        Err(Rejected::ShuttingDown) => Err(ApiError::busy("the server is shutting down", 30)),
    }
}

/// An outcome as the images made (interrupted: those finished before), or the error.
/// Runs `chore` on the generation thread (after the jobs before it) and waits for it: the
/// images it made.
pub async fn run_chore(
    state: &Shared,
    chore: crate::worker::Chore,
) -> ApiResult<Vec<hiresfix_engine::generate::Rendered>> {
    let (reply, outcome) = oneshot::channel();
    submit(
        state,
        Work {
            profile: hiresfix_engine::profile::Profile::empty(),
            started: None,
            reply,
            task: None,
            chore: Some(chore),
        },
    )?;
    Ok(images_of(outcome.await)?.0)
}

pub fn images_of(
    outcome: Result<Outcome, oneshot::error::RecvError>,
) -> ApiResult<(Vec<hiresfix_engine::generate::Rendered>, bool)> {
    match outcome {
        Ok(Outcome::Done(images)) => Ok((images, false)),
        Ok(Outcome::Interrupted(images)) => Ok((images, true)),
        Ok(Outcome::Refused(message)) => {
            Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message))
        }
        Ok(Outcome::Failed(message)) => Err(ApiError::internal(message)),
        Ok(Outcome::ShuttingDown) => Err(ApiError::busy("the server is shutting down", 30)),
        Err(_) => Err(ApiError::internal("the generation thread stopped")),
    }
}

/// The listed checkpoint a request's profile runs (for the response's `info`).
pub fn chosen_model(
    state: &Shared,
    profile: &hiresfix_engine::profile::Profile,
) -> ApiResult<crate::catalog::Checkpoint> {
    let path = profile.model.checkpoint.clone().unwrap_or_default();
    state
        .checkpoint_list()
        .into_iter()
        .find(|c| c.path.to_string_lossy() == path)
        .ok_or_else(|| ApiError::internal("the chosen model vanished"))
}

pub async fn txt2img(State(state): State<Shared>, payload: Payload) -> ApiResult<Json<Value>> {
    let request = payload.json_object()?;
    let profile = txt2img::to_profile(&state, &request)?;
    hiresfix_engine::limits::check_profile(&profile)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let model = chosen_model(&state, &profile)?;
    let label = txt2img::sampler_label(&state, &profile);
    let task =
        crate::progress::task_id("txt2img", txt2img::Fields(&request).text("force_task_id")?);
    let outcome = run_job(&state, profile.clone(), None, task).await?.await;
    let (images, interrupted) = images_of(outcome)?;
    // Only an explicit false turns the images off (null and "" are unset).
    let send = txt2img::Fields(&request)
        .flag("send_images")?
        .unwrap_or(true);
    let encoded: Vec<String> = match send {
        true => images
            .iter()
            .map(|i| base64::engine::general_purpose::STANDARD.encode(&i.png))
            .collect(),
        false => Vec::new(),
    };
    let mut info = txt2img::info(&profile, &model, &label, &images);
    let mut warnings = super::ignored::warnings(&request);
    warnings.extend(super::sampler_fields::warnings(
        state.registry,
        &request,
        &profile,
    ));
    if !warnings.is_empty() {
        info["warnings"] = json!(warnings);
    }
    if interrupted {
        info["interrupted"] = Value::Bool(true);
    }
    // A1111 reports batch_size as sent (the image count is batch_size × n_iter).
    info["batch_size"] = txt2img::Fields(&request)
        .int("batch_size")?
        .unwrap_or(1)
        .into();
    Ok(Json(json!({
        "images": encoded,
        "parameters": txt2img::echo(&request),
        "info": info.to_string(),
    })))
}

pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("{} is not an endpoint of this server (A1111's /sdapi/v1/*, or /hiresfix/v1/generate and /hiresfix/v1/plugins)", uri.path()))
}

pub async fn samplers(State(state): State<Shared>) -> Json<Value> {
    let list: Vec<Value> = state
        .registry
        .samplers
        .iter()
        .map(|e| {
            let name = display_name(&e.decl);
            let mut aliases: Vec<String> = vec![e.decl.name.to_string()];
            aliases.extend(
                e.decl
                    .aliases
                    .iter()
                    .map(|a| a.to_string())
                    .filter(|a| *a != name),
            );
            json!({"name": name, "aliases": aliases, "options": sampler_options(&e.decl)})
        })
        .collect();
    Json(Value::Array(list))
}

/// A1111's sampler `options` that hiresfix's samplers declare: the schedule a sampler runs
/// when the request names none (`scheduler`) and `discard_next_to_last_sigma`.
fn sampler_options(decl: &host_api::SamplerDecl) -> Value {
    let mut options = Map::new();
    if !decl.default_schedule.is_empty() {
        options.insert("scheduler".into(), json!(decl.default_schedule));
    }
    if decl.discard_penultimate_sigma {
        options.insert("discard_next_to_last_sigma".into(), json!(true));
    }
    Value::Object(options)
}

pub async fn schedulers(State(state): State<Shared>) -> Json<Value> {
    let mut list = vec![json!({
        "name": "automatic", "label": "Automatic", "aliases": null,
        "default_rho": -1, "need_inner_model": false
    })];
    for e in &state.registry.schedules {
        let label = display_name(&e.decl);
        let aliases: Vec<String> = e
            .decl
            .aliases
            .iter()
            .map(|a| a.to_string())
            .filter(|a| *a != label)
            .collect();
        let rho = match e.decl.name.as_str() {
            "karras" => 7.0,
            "polyexponential" => 1.0,
            _ => -1.0,
        };
        list.push(json!({
            "name": e.decl.name.as_str(), "label": label,
            "aliases": if aliases.is_empty() { Value::Null } else { json!(aliases) },
            "default_rho": rho, "need_inner_model": false
        }));
    }
    Json(Value::Array(list))
}

/// The names `/upscalers` lists, in its order (A1111's `upscaler_index` counts in it).
pub fn upscaler_names(state: &Shared) -> Vec<String> {
    let mut names = vec!["None".to_owned()];
    names.extend(
        state
            .registry
            .upscalers
            .iter()
            .filter(|e| !e.decl.name.starts_with("latent") && e.decl.name.as_str() != "model")
            .map(|e| display_name(&e.decl)),
    );
    let dirs = hiresfix_engine::upscaler_models::dirs(&state.upscaler_dirs());
    names.extend(
        hiresfix_engine::upscaler_models::listing::list(&dirs)
            .into_iter()
            .map(|l| l.name),
    );
    names
}

pub async fn upscalers(State(state): State<Shared>) -> Json<Value> {
    let mut list = vec![
        json!({"name": "None", "model_name": null, "model_path": null, "model_url": null, "scale": 4}),
    ];
    for e in &state.registry.upscalers {
        if e.decl.name.starts_with("latent") || e.decl.name.as_str() == "model" {
            continue; // latent modes have their own endpoint; `model` runs the files below
        }
        list.push(json!({"name": display_name(&e.decl), "model_name": null, "model_path": null, "model_url": null, "scale": 4}));
    }
    // Every A1111 name (its file's path when present) and every other model file by stem;
    // a file hiresfix refuses keeps A1111's keys and says why in `refused`.
    let dirs = hiresfix_engine::upscaler_models::dirs(&state.upscaler_dirs());
    for listed in hiresfix_engine::upscaler_models::listing::list(&dirs) {
        let mut entry = json!({
            "name": listed.name, "model_name": listed.kind, "model_path": listed.path,
            "model_url": listed.url, "scale": listed.scale
        });
        if let Some(why) = listed.refused {
            entry["refused"] = json!(why);
        }
        list.push(entry);
    }
    Json(Value::Array(list))
}

pub async fn latent_modes(State(state): State<Shared>) -> Json<Value> {
    let list: Vec<Value> = state
        .registry
        .upscalers
        .iter()
        .filter(|e| e.decl.name.starts_with("latent"))
        .map(|e| json!({"name": display_name(&e.decl)}))
        .collect();
    Json(Value::Array(list))
}

pub async fn sd_models(State(state): State<Shared>) -> Json<Value> {
    let checkpoints = state.checkpoint_list();
    let all = checkpoints.clone();
    // Every title carries its [hash]: files not hashed yet are hashed now (once).
    let _ = tokio::task::spawn_blocking(move || super::catalog::hash_all(&all)).await;
    let list: Vec<Value> = checkpoints
        .iter()
        .map(|c| {
            let sha = hiresfix_engine::hash_cache::peek("sha256", &c.path);
            json!({
                "title": c.title(), "model_name": c.name, "hash": c.short_hash(),
                "sha256": sha, "filename": c.path, "config": null
            })
        })
        .collect();
    Json(Value::Array(list))
}

pub async fn sd_vae(State(state): State<Shared>) -> Json<Value> {
    let list: Vec<Value> = state
        .vaes()
        .into_iter()
        .map(|(name, path)| json!({"model_name": name, "filename": path}))
        .collect();
    Json(Value::Array(list))
}

pub async fn loras(State(state): State<Shared>) -> Json<Value> {
    let list: Vec<Value> = state
        .loras()
        .into_iter()
        .map(|l| json!({"name": l.name, "alias": l.name, "path": l.path, "metadata": {}}))
        .collect();
    Json(Value::Array(list))
}

pub async fn refresh_checkpoints(
    State(state): State<Shared>,
    payload: Payload,
) -> ApiResult<Json<Value>> {
    payload.ignored()?;
    for line in state.refresh_checkpoints() {
        eprintln!("note: not a checkpoint, skipped: {line}");
    }
    Ok(Json(Value::Null))
}

pub async fn refresh_loras(payload: Payload) -> ApiResult<Json<Value>> {
    payload.ignored()?;
    Ok(Json(Value::Null)) // scanned on every request
}

pub async fn get_options(State(state): State<Shared>) -> Json<Value> {
    let mut options = state.options_now();
    if let Ok(model) = state.default_checkpoint() {
        let one = vec![model.clone()];
        let _ = tokio::task::spawn_blocking(move || super::catalog::hash_all(&one)).await;
        options.insert("sd_model_checkpoint".into(), Value::String(model.title()));
        options.insert(
            "sd_checkpoint_hash".into(),
            json!(hiresfix_engine::hash_cache::peek("sha256", &model.path)),
        );
    }
    Json(Value::Object(options))
}

pub async fn set_options(State(state): State<Shared>, payload: Payload) -> ApiResult<Json<Value>> {
    let request = payload.json_object()?;
    let mut updates = Map::new();
    for (key, value) in &request {
        bounded_option(key, value)?;
        let checked = match key.as_str() {
            "sd_model_checkpoint" => {
                let name = value.as_str().unwrap_or_default();
                Value::String(state.checkpoint(key, name)?.name)
            }
            "sd_vae" => {
                let name = value.as_str().unwrap_or("Automatic");
                state.vae(key, name)?;
                Value::String(name.to_owned())
            }
            _ => super::options::checked(key, value)?,
        };
        updates.insert(key.clone(), checked);
    }
    state.set_options(updates)?;
    Ok(Json(Value::Null))
}

/// One option under [`crate::MAX_OPTION_BYTES`] (its key under [`crate::MAX_NAME_CHARS`]).
fn bounded_option(key: &str, value: &Value) -> ApiResult<()> {
    crate::bounded_text("options", key, crate::MAX_NAME_CHARS)?;
    let bytes = value.to_string().len();
    if bytes > crate::MAX_OPTION_BYTES {
        return Err(ApiError {
            field: Some(key.to_owned()),
            ..ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "option `{}` is {bytes} bytes as JSON (at most {} per option)",
                    cut(key, 80),
                    crate::MAX_OPTION_BYTES
                ),
            )
        });
    }
    Ok(())
}

pub async fn progress(
    State(state): State<Shared>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Json<Value> {
    let jobs = state.queue.jobs();
    let running = state
        .queue
        .running
        .load(std::sync::atomic::Ordering::SeqCst);
    let p = state.queue.observer.snapshot();
    let task = state.queue.observer.task().filter(|_| running);
    let active = running && p.active;
    // A1111's `skip_current_image` query flag leaves the preview out.
    let skip = query.as_deref().is_some_and(|q| {
        q.split('&').any(|kv| {
            matches!(
                kv,
                "skip_current_image=true" | "skip_current_image=True" | "skip_current_image=1"
            )
        })
    });
    let current_image = match (active, skip, state.queue.observer.latest_preview()) {
        (true, false, (Some(png), _)) => {
            json!(base64::engine::general_purpose::STANDARD.encode(png))
        }
        _ => Value::Null,
    };
    Json(json!({
        "progress": if active { p.fraction() } else { 0.0 },
        "eta_relative": if active { p.eta() } else { 0.0 },
        "state": {
            "skipped": false,
            "interrupted": state.queue.observer.cancelled(),
            "stopping_generation": false,
            "job": if running { job_kind(task.as_deref()) } else { "" },
            "job_count": jobs,
            "job_timestamp": "0",
            "job_no": 0,
            "sampling_step": if active { p.pass_step } else { 0 },
            "sampling_steps": if active { p.pass_steps } else { 0 },
        },
        "current_image": current_image,
        "textinfo": null,
        "current_task": task,
    }))
}

/// A1111's `state.job` of a task id (`task(img2img-…)` → `img2img`).
fn job_kind(task: Option<&str>) -> &str {
    task.and_then(|t| t.strip_prefix("task("))
        .and_then(|t| t.split_once('-'))
        .map_or("txt2img", |(kind, _)| kind)
}

pub async fn interrupt(State(state): State<Shared>, payload: Payload) -> ApiResult<Json<Value>> {
    payload.ignored()?;
    state.queue.interrupt();
    Ok(Json(json!({})))
}

/// A1111's `/skip` skips the current image of a batch; here a job is one batch, so it is
/// accepted and does nothing (`/interrupt` stops the job).
pub async fn skip(payload: Payload) -> ApiResult<Json<Value>> {
    payload.ignored()?;
    Ok(Json(json!({})))
}

pub async fn png_info(payload: Payload) -> ApiResult<Json<Value>> {
    let request = payload.json_object()?;
    let encoded = request
        .get("image")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if encoded.trim().is_empty() {
        return Ok(Json(json!({"info": "", "items": {}, "parameters": {}})));
    }
    // A data URL (`data:image/png;base64,...`) or plain base64.
    let data = match encoded.split_once("base64,") {
        Some((_, rest)) => rest,
        None => encoded,
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::field("image", format!("image: not base64 ({e})")))?;
    let chunks =
        hiresfix_engine::output::read_text_chunks_from(std::io::Cursor::new(bytes), "image")
            .map_err(|e| {
                ApiError::field("image", format!("image: not a PNG hiresfix can read ({e})"))
            })?;
    let mut info = String::new();
    let mut items = Map::new();
    for (key, text) in chunks {
        match key.as_str() {
            "parameters" => info = text,
            _ => {
                items.insert(key, Value::String(text));
            }
        }
    }
    let parsed = hiresfix_engine::infotext::parse(&info);
    let mut parameters = Map::new();
    if !info.is_empty() {
        parameters.insert("Prompt".into(), Value::String(parsed.prompt.clone()));
        parameters.insert(
            "Negative prompt".into(),
            Value::String(parsed.negative.clone()),
        );
    }
    for (key, value) in &parsed.pairs {
        if key == "Size" || key == "Hires resize" {
            if let Some((w, h)) = value.split_once('x') {
                parameters.insert(format!("{key}-1"), Value::String(w.trim().into()));
                parameters.insert(format!("{key}-2"), Value::String(h.trim().into()));
            }
        }
        parameters.insert(key.clone(), Value::String(value.clone()));
    }
    Ok(Json(
        json!({"info": info, "items": items, "parameters": parameters}),
    ))
}

pub async fn scripts() -> Json<Value> {
    Json(json!({"txt2img": [], "img2img": []}))
}
