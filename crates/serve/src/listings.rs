//! A1111's remaining listing and housekeeping endpoints, in its response shapes: what hiresfix
//! has no kind of (hypernetworks, face restorers, prompt styles) is an empty list, never a 404
//! that a client reads as "this is not an A1111 server".
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::body::Payload;
use super::error::ApiResult;
use super::Shared;

/// `GET /internal/ping`: A1111 answers `{}`.
pub async fn ping() -> Json<Value> {
    Json(json!({}))
}

/// `GET /sdapi/v1/cmd-flags`: A1111's command-line flags as this server runs (the ones that
/// mean something here; a client reads `api`, `nowebui`, `listen`, `api_auth`).
pub async fn cmd_flags(State(state): State<Shared>) -> Json<Value> {
    Json(json!({
        "api": true, "nowebui": true, "listen": !state.loopback,
        "api_auth": null, "ckpt_dir": state.models_dir, "lora_dir": state.loras_dir,
        "esrgan_models_path": state.upscalers_dir, "lowvram": false, "medvram": false,
        "no_half": matches!(state.dtype, hiresfix_engine::profile::DtypeChoice::Fp32),
        "precision": "full",
    }))
}

/// `GET /sdapi/v1/memory`: RAM from `/proc/meminfo`; CUDA as A1111 reports a machine
/// without it (`{"error": …}`) — the server's device figures are in the native API.
pub async fn memory() -> Json<Value> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
    };
    let ram = match (kib("MemTotal:"), kib("MemAvailable:")) {
        (Some(total), Some(free)) => json!({
            "free": free * 1024, "used": total.saturating_sub(free) * 1024, "total": total * 1024
        }),
        _ => json!({"error": "/proc/meminfo is not readable"}),
    };
    Json(json!({"ram": ram, "cuda": {"error": "not reported by hiresfix"}}))
}

/// Kinds hiresfix has none of: `hypernetworks`, `face-restorers`, `prompt-styles`.
pub async fn none() -> Json<Value> {
    Json(json!([]))
}

/// `GET /sdapi/v1/realesrgan-models`: the ESRGAN-family model files in the upscaler folders.
pub async fn realesrgan_models(State(state): State<Shared>) -> Json<Value> {
    let dirs = hiresfix_engine::upscaler_models::dirs(&state.upscaler_dirs());
    let list: Vec<Value> = hiresfix_engine::upscaler_models::scan(&dirs)
        .into_iter()
        .map(|file| match hiresfix_engine::upscaler_models::a1111_name(&file.stem) {
            Some((name, scale)) => json!({"name": name, "path": file.path, "scale": scale}),
            None => json!({"name": file.stem, "path": file.path, "scale": null}),
        })
        .collect();
    Json(Value::Array(list))
}

/// `POST /sdapi/v1/unload-checkpoint`: every loaded model is dropped (after the running job);
/// the next request loads its checkpoint again. A1111 answers `{}`.
pub async fn unload_checkpoint(
    State(state): State<Shared>,
    payload: Payload,
) -> ApiResult<Json<Value>> {
    payload.ignored()?;
    let (reply, outcome) = tokio::sync::oneshot::channel();
    let chore = |models: &mut hiresfix_engine::models::Models<'_>| {
        models.trim(0);
        hiresfix_engine::models::return_free_pages();
        super::worker::Outcome::Done(Vec::new())
    };
    super::sdapi::submit(
        &state,
        super::worker::Work {
            profile: hiresfix_engine::profile::Profile::empty(),
            started: None,
            reply,
            chore: Some(Box::new(chore)),
        },
    )?;
    super::sdapi::images_of(outcome.await)?;
    Ok(Json(json!({})))
}

/// `POST /sdapi/v1/reload-checkpoint`: A1111 moves its model back to the device; here a
/// checkpoint loads when a request needs it, so there is nothing to do. `{}`.
pub async fn reload_checkpoint(payload: Payload) -> ApiResult<Json<Value>> {
    payload.ignored()?;
    Ok(Json(json!({})))
}

/// `POST /sdapi/v1/refresh-vae` and `/refresh-embeddings`: folders are read on every request.
pub async fn refreshed(payload: Payload) -> ApiResult<Json<Value>> {
    payload.ignored()?;
    Ok(Json(Value::Null))
}
