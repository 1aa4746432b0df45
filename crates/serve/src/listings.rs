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
        "embeddings_dir": state.embeddings_dir,
        "esrgan_models_path": state.upscalers_dir, "lowvram": false, "medvram": false,
        "no_half": matches!(state.dtype, hiresfix_engine::profile::DtypeChoice::Fp32),
        "precision": "full",
    }))
}

/// `GET /sdapi/v1/memory`, as A1111 answers it: `ram` from `/proc` (psutil's view: `used`
/// is this process's resident set, `free` the rest of the total) and `cuda.system` from the
/// CUDA runtime (free / used / total of the server's device); `{"error": "unavailable"}`
/// without CUDA. libtorch's allocator statistics (A1111's active / allocated / reserved) are
/// not exposed by tch, so those keys are absent.
pub async fn memory(State(state): State<Shared>) -> Json<Value> {
    use hiresfix_engine::device_memory;
    let ram = match device_memory::ram() {
        Some((free, used, total)) => json!({"free": free, "used": used, "total": total}),
        None => json!({"error": "/proc/meminfo is not readable"}),
    };
    let index = match hiresfix_engine::models::device_of(&state.device) {
        host_api::tch::Device::Cuda(i) => Some(i),
        _ => None,
    };
    let cuda = match index.and_then(device_memory::cuda) {
        Some((free, total)) => json!({"system": {
            "free": free, "used": total.saturating_sub(free), "total": total
        }}),
        None => json!({"error": "unavailable"}),
    };
    Json(json!({"ram": ram, "cuda": cuda}))
}

/// Kinds hiresfix has none of: `hypernetworks`, `face-restorers`, `prompt-styles`,
/// `script-info` (no scripts) and `extensions`.
pub async fn none() -> Json<Value> {
    Json(json!([]))
}

/// `GET /sdapi/v1/realesrgan-models`: the ESRGAN-family upscalers (A1111's Real-ESRGAN and
/// ESRGAN names, with the file each maps to or `path: null`, and every other model file by
/// stem), `scale` from the file's architecture; a refused file says why in `refused`.
pub async fn realesrgan_models(State(state): State<Shared>) -> Json<Value> {
    let dirs = hiresfix_engine::upscaler_models::dirs(&state.upscaler_dirs());
    let list: Vec<Value> = hiresfix_engine::upscaler_models::listing::list(&dirs)
        .into_iter()
        .filter(|l| {
            hiresfix_engine::upscaler_models::a1111::by_name(&l.name)
                .is_none_or(|k| k.not_run.is_none())
        })
        .map(|l| {
            let mut entry = json!({"name": l.name, "path": l.path, "scale": l.scale});
            if let Some(why) = l.refused {
                entry["refused"] = json!(why);
            }
            entry
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
    let chore = |models: &mut hiresfix_engine::models::Models<'_>| {
        models.trim(0);
        hiresfix_engine::models::return_free_pages();
        super::worker::Outcome::Done(Vec::new())
    };
    super::sdapi::run_chore(&state, Box::new(chore)).await?;
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
