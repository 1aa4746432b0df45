//! `POST /sdapi/v1/extra-single-image` and `/extra-batch-images`: A1111's Extras upscale
//! (`modules/api/models.py` ExtrasSingleImageRequest / ExtrasBatchImagesRequest, `api.py`
//! extras_single_image_api) over the engine's `extras`, run on the generation thread (it owns
//! the device). Face restoration (GFPGAN, CodeFormer) has no models here: a visibility above
//! 0 is refused.
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::body::Payload;
use super::error::{cut, ApiError, ApiResult};
use super::txt2img::Fields;
use super::worker::Outcome;
use super::Shared;
use hiresfix_engine::errors::one_line;
use hiresfix_engine::extras::{self, Resize, Rgb8, Settings};
use hiresfix_engine::generate::Rendered;

/// One decoded input image and the generation parameters it carried.
struct Input {
    image: Rgb8,
    parameters: String,
}

/// A request's image: base64 (or a `data:image/...;base64,` URL) of a PNG, JPEG or WebP, its size within
/// the server's `--max-side`.
fn decode_image(state: &Shared, field: &str, encoded: &str) -> ApiResult<Input> {
    let data = match encoded.split_once("base64,") {
        Some((_, rest)) => rest,
        None => encoded,
    };
    if data.starts_with("http://") || data.starts_with("https://") {
        return Err(ApiError::field(
            field,
            format!("{field}: hiresfix fetches no URLs — send the image itself as base64"),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|e| ApiError::field(field, format!("{field}: not base64 ({e})")))?;
    // PNG of any colour type, JPEG or WebP, as img2img's init images.
    let decoded = hiresfix_engine::img2img::init::decode(&bytes, field, "(the image sent)")
        .map_err(|e| ApiError::field(field, one_line(&e)))?;
    let (width, height) = (decoded.rgb.width as u32, decoded.rgb.height as u32);
    let pixels = decoded.rgb.data;
    let side = state.limits.side;
    if width.max(height) > side {
        return Err(ApiError::field(
            field,
            format!(
                "{field}: {width}x{height} px is over this server's {side} px a side (--max-side)"
            ),
        ));
    }
    let chunks =
        hiresfix_engine::output::read_text_chunks_from(std::io::Cursor::new(&bytes), field)
            .unwrap_or_default();
    let parameters = chunks
        .into_iter()
        .find(|(k, _)| k == "parameters")
        .map(|(_, v)| v)
        .unwrap_or_default();
    Ok(Input {
        image: Rgb8 {
            width,
            height,
            pixels,
        },
        parameters,
    })
}

/// [`decode_image`] of each `(field, base64)` on a blocking thread (a 4096² PNG takes a
/// while to decode; the async threads keep answering).
async fn decode_off_runtime(
    state: &Shared,
    encoded: Vec<(String, String)>,
) -> ApiResult<Vec<Input>> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        encoded
            .iter()
            .map(|(field, data)| decode_image(&state, field, data))
            .collect()
    })
    .await
    .map_err(|_| ApiError::internal("decoding the image failed"))?
}

/// The upscale settings of a request (A1111's ExtrasBaseRequest defaults), names checked.
fn settings(state: &Shared, request: &Map<String, Value>) -> ApiResult<Settings> {
    let f = Fields(request);
    for key in ["gfpgan_visibility", "codeformer_visibility"] {
        if f.float(key)?.unwrap_or(0.0) > 0.0 {
            return Err(ApiError::field(
                key,
                format!("{key}: face restoration (GFPGAN, CodeFormer) is not offered by hiresfix — send 0"),
            ));
        }
    }
    let upscaler_1 = f.text("upscaler_1")?.unwrap_or_else(|| "None".into());
    let upscaler_2 = f.text("upscaler_2")?.unwrap_or_else(|| "None".into());
    let dirs = hiresfix_engine::upscaler_models::dirs(&state.upscaler_dirs());
    for (field, name) in [("upscaler_1", &upscaler_1), ("upscaler_2", &upscaler_2)] {
        crate::plain_name(field, name)?;
        extras::resolve(state.registry, &dirs, field, name)
            .map_err(|e| ApiError::field(field, one_line(&e)))?;
    }
    let resize = match f.int("resize_mode")?.unwrap_or(0) {
        0 => Resize::By(f.float("upscaling_resize")?.unwrap_or(2.0)),
        1 => {
            let side = |key: &str| -> ApiResult<u32> {
                let v = f.int(key)?.unwrap_or(512);
                u32::try_from(v).ok().filter(|v| *v > 0).ok_or_else(|| {
                    ApiError::field(key, format!("{key}: {v} is not a size in pixels"))
                })
            };
            Resize::To {
                width: side("upscaling_resize_w")?,
                height: side("upscaling_resize_h")?,
                crop: f.flag("upscaling_crop")?.unwrap_or(true),
            }
        }
        other => {
            return Err(ApiError::field(
                "resize_mode",
                format!("resize_mode: {other} is not 0 (scale by upscaling_resize) or 1 (scale to upscaling_resize_w × _h)"),
            ))
        }
    };
    Ok(Settings {
        upscaler_1,
        upscaler_2,
        visibility_2: f.float("extras_upscaler_2_visibility")?.unwrap_or(0.0),
        resize,
        max_side: state.limits.side,
    })
}

/// Runs `settings` over `inputs` on the generation thread: PNGs carrying the input's
/// parameters and A1111's `postprocessing` text, and the HTML info.
async fn upscale_all(
    state: &Shared,
    inputs: Vec<Input>,
    settings: Settings,
) -> ApiResult<(Vec<String>, String)> {
    let images = run_upscales(state, inputs, settings).await?;
    let info = images.first().map_or("", |i| i.parameters.as_str());
    let html = extras::html(info);
    let encoded = images
        .iter()
        .map(|i| base64::engine::general_purpose::STANDARD.encode(&i.png))
        .collect();
    Ok((encoded, html))
}

/// `image` upscaled by `scale` with `upscaler` (any pixel upscaler a request may name: a
/// model file's stem or A1111 name, Lanczos, Nearest), on the generation thread, as A1111's
/// scripts call `upscaler.scaler.upscale(image, scale)`: as a PNG; `None` when interrupted.
pub(crate) async fn upscale_by(
    state: &Shared,
    image: Rgb8,
    upscaler: &str,
    scale: f64,
) -> ApiResult<Option<Vec<u8>>> {
    let settings = Settings {
        upscaler_1: upscaler.to_owned(),
        upscaler_2: "None".into(),
        visibility_2: 0.0,
        resize: Resize::By(scale),
        max_side: state.limits.side,
    };
    let input = Input {
        image,
        parameters: String::new(),
    };
    let mut images = run_upscales(state, vec![input], settings).await?;
    Ok(images.pop().map(|i| i.png))
}

/// The chore of [`upscale_all`]: each input's output PNG (those done when interrupted).
async fn run_upscales(
    state: &Shared,
    inputs: Vec<Input>,
    settings: Settings,
) -> ApiResult<Vec<Rendered>> {
    for input in &inputs {
        extras::check((input.image.width, input.image.height), &settings)
            .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, one_line(&e)))?;
    }
    let registry = state.registry;
    let dirs = hiresfix_engine::upscaler_models::dirs(&state.upscaler_dirs());
    let device = hiresfix_engine::models::device_of(&state.device);
    let second = !settings.upscaler_2.trim().eq_ignore_ascii_case("none")
        && !settings.upscaler_2.trim().is_empty()
        && settings.visibility_2 > 0.0;
    let steps = inputs.len() * (1 + usize::from(second));
    let chore = move |models: &mut hiresfix_engine::models::Models<'_>| {
        // `/progress` counts upscaler runs as steps.
        models.observer.job_started(steps, inputs.len());
        let mut done = Vec::new();
        for input in &inputs {
            let upscaled = match extras::upscale(
                registry,
                &dirs,
                device,
                &input.image,
                &settings,
                models.observer,
            ) {
                Ok(u) => u,
                Err(_) if models.observer.stopped() => return Outcome::Interrupted(done),
                Err(e) => return Outcome::Failed(one_line(&e)),
            };
            let info = extras::infotext(&upscaled.info);
            match encode(&upscaled.image, &input.parameters, &info) {
                Ok(png) => done.push(Rendered {
                    seed: 0,
                    subseed: 0,
                    png,
                    parameters: info,
                }),
                Err(e) => return Outcome::Failed(one_line(&e)),
            }
        }
        Outcome::Done(done)
    };
    super::sdapi::run_chore(state, Box::new(chore)).await
}

/// The output PNG: the input's parameters kept, A1111's `postprocessing` text added.
fn encode(image: &Rgb8, parameters: &str, info: &str) -> anyhow::Result<Vec<u8>> {
    let png = hiresfix_engine::output::encode_png(
        image.width,
        image.height,
        &image.pixels,
        parameters,
        "",
        None,
    )?;
    match info.is_empty() {
        true => Ok(png),
        false => hiresfix_engine::output::add_text_chunk(&png, "postprocessing", info),
    }
}

/// `POST /sdapi/v1/extra-single-image`: `{"html_info": "...", "image": base64 PNG}`.
pub async fn single(State(state): State<Shared>, payload: Payload) -> ApiResult<Json<Value>> {
    let request = payload.json_object()?;
    let encoded = match request.get("image") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        _ => {
            return Err(ApiError::field(
                "image",
                "image: send the image to upscale as base64 (a PNG)",
            ))
        }
    };
    let settings = settings(&state, &request)?;
    let input = decode_off_runtime(&state, vec![("image".into(), encoded)])
        .await?
        .remove(0);
    let (mut images, html) = upscale_all(&state, vec![input], settings).await?;
    let image = match images.is_empty() {
        true => return Err(ApiError::internal("the upscale was interrupted")),
        false => images.remove(0),
    };
    Ok(Json(json!({"html_info": html, "image": image})))
}

/// `POST /sdapi/v1/extra-batch-images`: `imageList: [{"data": base64, "name": ...}]` →
/// `{"html_info": "...", "images": [...]}`.
pub async fn batch(State(state): State<Shared>, payload: Payload) -> ApiResult<Json<Value>> {
    let request = payload.json_object()?;
    let list = match request.get("imageList") {
        Some(Value::Array(list)) => list.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(other) => {
            return Err(ApiError::field(
                "imageList",
                format!(
                    "imageList must be a list of {{\"data\": base64, \"name\": ...}}, not {}",
                    cut(&other.to_string(), 80)
                ),
            ))
        }
    };
    let most = usize::try_from(state.limits.images).unwrap_or(usize::MAX);
    if list.len() > most {
        return Err(ApiError::field(
            "imageList",
            format!(
                "imageList has {} images (at most {most} a request, --max-images)",
                list.len()
            ),
        ));
    }
    let settings = settings(&state, &request)?;
    let mut encoded = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let field = format!("imageList[{i}].data");
        let data = item.get("data").and_then(Value::as_str).ok_or_else(|| {
            ApiError::field(
                "imageList",
                format!("{field}: send the image as base64 text"),
            )
        })?;
        encoded.push((field, data.to_owned()));
    }
    let inputs = decode_off_runtime(&state, encoded).await?;
    if inputs.is_empty() {
        return Ok(Json(json!({"html_info": "", "images": []})));
    }
    let (images, html) = upscale_all(&state, inputs, settings).await?;
    Ok(Json(json!({"html_info": html, "images": images})))
}
