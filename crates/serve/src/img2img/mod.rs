//! `POST /sdapi/v1/img2img`: a plain img2img / inpainting request ([`request`]) or A1111's
//! "SD upscale" script ([`sd_upscale`]), chosen by `script_name`.
mod request;
mod sd_upscale;

use axum::extract::State;
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};

use crate::body::Payload;
use crate::error::{ApiError, ApiResult};
use crate::txt2img::{self, Fields};
use crate::Shared;
pub use request::MAX_IMAGE_BYTES;
use request::*;

/// Whether the request asks for A1111's "SD upscale" script.
fn is_sd_upscale(request: &Map<String, Value>) -> bool {
    request
        .get("script_name")
        .and_then(Value::as_str)
        .is_some_and(|name| name.trim().eq_ignore_ascii_case("sd upscale"))
}

pub async fn img2img(State(state): State<Shared>, payload: Payload) -> ApiResult<Json<Value>> {
    let request = payload.json_object()?;
    let uploads = write_uploads(&request)?;
    if is_sd_upscale(&request) {
        return sd_upscale::run(&state, &request, &uploads).await;
    }
    let (profile, mut warnings) = to_profile(&state, &request, &uploads)?;
    hiresfix_engine::limits::check_profile(&profile)
        .map_err(|e| ApiError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let model = crate::sdapi::chosen_model(&state, &profile)?;
    let label = txt2img::sampler_label(&state, &profile);
    let task = crate::progress::task_id("img2img", Fields(&request).text("force_task_id")?);
    let outcome = crate::sdapi::run_job(&state, profile.clone(), None, task)
        .await?
        .await;
    drop(uploads);
    let (images, interrupted) = crate::sdapi::images_of(outcome)?;
    let f = Fields(&request);
    let send = f.flag("send_images")?.unwrap_or(true);
    let mut encoded: Vec<String> = match send {
        true => images
            .iter()
            .map(|i| base64::engine::general_purpose::STANDARD.encode(&i.png))
            .collect(),
        false => Vec::new(),
    };
    let include = f.flag("include_init_images")?.unwrap_or(false);
    if include && send {
        if let Some(Value::Array(list)) = request.get("init_images") {
            encoded.extend(
                list.iter()
                    .filter_map(|v| v.as_str())
                    .map(|s| s.split_once(";base64,").map_or(s, |(_, b)| b).to_owned()),
            );
        }
    }
    let mut info = txt2img::info(&profile, &model, &label, &images);
    info["denoising_strength"] = json!(profile.passes[0].denoise);
    warnings.splice(0..0, crate::ignored::warnings(&request));
    if !warnings.is_empty() {
        info["warnings"] = json!(warnings);
    }
    if interrupted {
        info["interrupted"] = Value::Bool(true);
    }
    info["batch_size"] = f.int("batch_size")?.unwrap_or(1).into();
    Ok(Json(json!({
        "images": encoded,
        "parameters": echo(&request, include),
        "info": info.to_string(),
    })))
}
