//! A1111's "SD upscale" img2img script (`scripts/sd_upscale.py`): the init image upscaled in
//! pixels, cut into tiles of the request's size with its overlap (`images.split_grid`), each
//! tile run as an img2img job (seed, seed + 1, ... as A1111 with batch size 1), and the tiles
//! blended back (`images.combine_grid`). `script_args` are A1111's: `[info, overlap,
//! upscaler, scale]`; the upscaler is any a request may name (by name, or by its index in
//! `/sdapi/v1/upscalers` as A1111's `upscaler_index`): "None", "Lanczos" (PIL's, exactly),
//! "Nearest", a model file.
use axum::Json;
use base64::Engine;
use serde_json::{json, Map, Value};

use super::request::{echo, io_error, scratch_dir, to_profile, Uploads};
use crate::error::{cut, ApiError, ApiResult};
use crate::txt2img::{self, Fields};
use crate::Shared;
use hiresfix_engine::img2img::resample::{resize, Filter, Image8};
use hiresfix_engine::img2img::{flatten, init, tiles};

/// Most tiles one request may make.
pub const MAX_TILES: usize = 256;

fn field(message: impl Into<String>) -> ApiError {
    ApiError::field("script_args", message)
}

/// The upscaler SD upscale runs on the init image.
enum Upscale {
    None,
    /// PIL's Lanczos, exactly (A1111's "Lanczos").
    Lanczos,
    /// Any other pixel upscaler a request may name (a model file, "Nearest"), as extras runs it.
    Named(String),
}

/// `[info, overlap, upscaler, scale]` with A1111's UI defaults (64, "None", 2); the upscaler
/// by name or by its index in `/sdapi/v1/upscalers` (A1111's `upscaler_index`).
fn script_args(state: &Shared, request: &Map<String, Value>) -> ApiResult<(usize, Upscale, f64)> {
    let args = match request.get("script_args") {
        Some(Value::Array(a)) => a.clone(),
        None | Some(Value::Null) => Vec::new(),
        Some(_) => {
            return Err(field(
                "script_args must be a list: [\"\", overlap, upscaler, scale]",
            ))
        }
    };
    let number = |i: usize, default: f64, what: &str| -> ApiResult<f64> {
        match args.get(i) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                field(format!(
                    "script_args[{i}] ({what}) must be a number, not {}",
                    cut(&v.to_string(), 40)
                ))
            }),
        }
    };
    let overlap = number(1, 64.0, "tile overlap")?;
    if !(0.0..=512.0).contains(&overlap) || overlap.fract() != 0.0 {
        return Err(field(format!(
            "script_args[1]: tile overlap {overlap} must be a whole number of pixels in 0..=512"
        )));
    }
    let name = match args.get(2) {
        None | Some(Value::Null) => "None".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => {
            let names = crate::sdapi::upscaler_names(state);
            n.as_u64()
                .and_then(|i| names.get(usize::try_from(i).ok()?).cloned())
                .ok_or_else(|| {
                    field(format!(
                        "script_args[2]: upscaler index {n} is not in /sdapi/v1/upscalers (0..{})",
                        names.len()
                    ))
                })?
        }
        Some(v) => {
            return Err(field(format!(
                "script_args[2]: the upscaler must be a name or an index, not {}",
                cut(&v.to_string(), 40)
            )))
        }
    };
    let upscale = match name.trim() {
        n if n.is_empty() || n.eq_ignore_ascii_case("none") => Upscale::None,
        n if n.eq_ignore_ascii_case("lanczos") => Upscale::Lanczos,
        n => {
            crate::plain_name("script_args[2]", n)?;
            let dirs = hiresfix_engine::upscaler_models::dirs(&state.upscaler_dirs());
            hiresfix_engine::extras::resolve(state.registry, &dirs, "script_args[2]", n).map_err(
                |e| {
                    field(format!(
                        "script_args[2]: {}",
                        hiresfix_engine::errors::one_line(&e)
                    ))
                },
            )?;
            Upscale::Named(n.to_owned())
        }
    };
    let scale = number(3, 2.0, "scale")?;
    if !(scale > 0.0 && scale <= 8.0) {
        return Err(field(format!(
            "script_args[3]: scale {scale} must be greater than 0 and at most 8"
        )));
    }
    Ok((overlap as usize, upscale, scale))
}

/// PNG bytes → RGB8 (through a file: the engine's reader is bounded and handles every type).
fn png_rgb(dir: &std::path::Path, png: &[u8]) -> ApiResult<Image8> {
    let path = dir.join("tile-out.png");
    std::fs::write(&path, png).map_err(io_error)?;
    let (w, h, rgb) = hiresfix_engine::png_pixels::read_rgb8(&path)
        .map_err(|e| ApiError::internal(format!("reading a finished tile: {e}")))?;
    Ok(hiresfix_engine::img2img::from_rgb8(w, h, rgb))
}

pub(crate) async fn run(
    state: &Shared,
    request: &Map<String, Value>,
    uploads: &Uploads,
) -> ApiResult<Json<Value>> {
    let (overlap, upscale, scale) = script_args(state, request)?;
    let upscaler_name = match &upscale {
        Upscale::None => "None".to_owned(),
        Upscale::Lanczos => "Lanczos".to_owned(),
        Upscale::Named(name) => name.clone(),
    };
    // The tiles' own requests: the script's fields gone, one image each, seeds from one.
    let mut base = request.clone();
    for key in [
        "script_name",
        "script_args",
        "enable_hr",
        "mask",
        "batch_size",
        "n_iter",
    ] {
        base.remove(key);
    }
    let probe = to_profile(state, &base, uploads)?.0;
    let first = &probe.passes[0];
    let (tile_w, tile_h) = (
        first.width.unwrap_or(512) as usize,
        first.height.unwrap_or(512) as usize,
    );
    if overlap >= tile_w.min(tile_h) {
        return Err(field(format!("script_args[1]: tile overlap {overlap} must be smaller than the tile ({tile_w}x{tile_h})")));
    }
    let decoded = init::read(&uploads.init, "init_images[0]")
        .map_err(|e| ApiError::field("init_images[0]", e.to_string()))?;
    let image = flatten(decoded);
    let image = match upscale {
        // A1111's Lanczos upscaler: `resize((int(w * scale), int(h * scale)), LANCZOS)`.
        Upscale::Lanczos => resize(
            &image,
            (image.width as f64 * scale) as usize,
            (image.height as f64 * scale) as usize,
            Filter::Lanczos,
        ),
        Upscale::Named(name) => {
            let rgb = hiresfix_engine::extras::Rgb8 {
                width: image.width as u32,
                height: image.height as u32,
                pixels: image.data,
            };
            match crate::extras::upscale_by(state, rgb, &name, scale).await? {
                Some(png) => flatten(
                    init::decode(&png, "the upscaled image", "(upscaled)")
                        .map_err(|e| ApiError::internal(hiresfix_engine::errors::one_line(&e)))?,
                ),
                None => return Err(ApiError::internal("the upscale was interrupted")),
            }
        }
        Upscale::None => image,
    };
    let side = state.limits.side as usize;
    if image.width > side || image.height > side {
        return Err(field(format!(
            "the upscaled image {}x{} is over this server's {side} px a side",
            image.width, image.height
        )));
    }
    if image.width < tile_w || image.height < tile_h {
        return Err(field(format!(
            "the upscaled image {}x{} is smaller than a tile ({tile_w}x{tile_h}, the request's width and height) — raise the scale or lower width/height",
            image.width, image.height
        )));
    }
    let mut grid = tiles::split(&image, tile_w, tile_h, overlap);
    let count: usize = grid.rows.iter().map(Vec::len).sum();
    if count > MAX_TILES {
        return Err(field(format!("SD upscale would run {count} tiles (at most {MAX_TILES}) — raise width/height or lower the scale")));
    }
    let seed = match Fields(request).int("seed")? {
        Some(s) if s >= 0 => s,
        _ => hiresfix_engine::job::random_seed(),
    };
    let dir = scratch_dir()?;
    let _cleanup = Uploads {
        init: dir.join("tile.png"),
        mask: None,
        dir: dir.clone(),
    };
    let mut rendered = Vec::new();
    let mut profiles = Vec::new();
    let mut interrupted = false;
    let mut i = 0;
    for row in grid.rows.iter_mut() {
        for tile in row.iter_mut() {
            let png = hiresfix_engine::output::encode_png(
                tile.image.width as u32,
                tile.image.height as u32,
                &tile.image.data,
                "",
                "",
                None,
            )
            .map_err(|e| ApiError::internal(e.to_string()))?;
            std::fs::write(dir.join("tile.png"), &png).map_err(io_error)?;
            let mut one = base.clone();
            one.insert("seed".into(), json!(seed + i as i64));
            let tile_uploads = Uploads {
                init: dir.join("tile.png"),
                mask: None,
                dir: dir.join("never-made"),
            };
            let (profile, _) = to_profile(state, &one, &tile_uploads)?;
            let task = crate::progress::task_id("img2img", None);
            let outcome = crate::sdapi::run_job(state, profile.clone(), None, task)
                .await?
                .await;
            let (mut images, stopped) = crate::sdapi::images_of(outcome)?;
            if let Some(done) = images.pop() {
                tile.image = png_rgb(&dir, &done.png)?;
                rendered.push(done);
                profiles.push(profile);
            }
            i += 1;
            if stopped {
                interrupted = true;
                break;
            }
        }
        if interrupted {
            break;
        }
    }
    let combined = tiles::combine(&grid);
    let parameters = rendered
        .first()
        .map(|r| r.parameters.clone())
        .unwrap_or_default();
    let png = hiresfix_engine::output::encode_png(
        combined.width as u32,
        combined.height as u32,
        &combined.data,
        &parameters,
        "",
        None,
    )
    .map_err(|e| ApiError::internal(e.to_string()))?;
    let model = crate::sdapi::chosen_model(state, &probe)?;
    let label = txt2img::sampler_label(state, &probe);
    let mut info = txt2img::info(
        profiles.first().unwrap_or(&probe),
        &model,
        &label,
        &rendered[..rendered.len().min(1)],
    );
    info["denoising_strength"] = json!(probe.passes[0].denoise);
    info["width"] = json!(combined.width);
    info["height"] = json!(combined.height);
    info["extra_generation_params"]["SD upscale overlap"] = json!(overlap);
    info["extra_generation_params"]["SD upscale upscaler"] = json!(upscaler_name);
    let warnings = crate::ignored::warnings(request);
    if !warnings.is_empty() {
        info["warnings"] = json!(warnings);
    }
    if interrupted {
        info["interrupted"] = Value::Bool(true);
    }
    Ok(Json(json!({
        "images": [base64::engine::general_purpose::STANDARD.encode(&png)],
        "parameters": echo(request, false),
        "info": info.to_string(),
    })))
}
