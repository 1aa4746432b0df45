//! `POST /sdapi/v1/img2img`: A1111 1.10's img2img request (an init image, a mask and their
//! settings) mapped onto pass 1 of the same profile txt2img makes (`txt2img::to_profile_as`),
//! plus what A1111 lacks: `enable_hr` and the `hr_*` fields run img2img → upscale →
//! re-denoise in one request (the hires pass's strength is `hr_denoising_strength`). The
//! decoded images are written to a private temporary folder for the job and removed after.
//! `script_name: "sd upscale"` runs A1111's tiled script ([`super::sd_upscale`]); the
//! handler that picks one is [`super`].
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use serde_json::{Map, Value};

use crate::error::{cut, ApiError, ApiResult};
use crate::txt2img::{self, Endpoint, Fields};
use hiresfix_engine::defaults;
use hiresfix_engine::profile::{InpaintingFill, Profile, ResizeMode};

/// Largest decoded init image or mask file (the request body's own limit comes first).
pub const MAX_IMAGE_BYTES: usize = 64 << 20;

/// A1111's img2img fields that txt2img lacks, with its API defaults (the `parameters` echo).
pub(crate) const IMG2IMG_DEFAULTS: &str = r#"{
    "init_images": null, "resize_mode": 0, "image_cfg_scale": null, "mask": null,
    "mask_blur_x": 4, "mask_blur_y": 4, "mask_blur": null, "mask_round": true,
    "inpainting_fill": 0, "inpaint_full_res": true, "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0, "initial_noise_multiplier": null, "latent_mask": null,
    "include_init_images": false
}"#;

/// The request's images on disk for one job; the folder goes when this is dropped.
pub(crate) struct Uploads {
    pub(crate) dir: PathBuf,
    pub(crate) init: PathBuf,
    pub(crate) mask: Option<PathBuf>,
}

/// A fresh private folder for one request's files (removed with the [`Uploads`]).
pub(crate) fn scratch_dir() -> ApiResult<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hiresfix-img2img-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).map_err(io_error)?;
    Ok(dir)
}

pub(crate) fn io_error(e: std::io::Error) -> ApiError {
    ApiError::internal(format!("cannot write the uploaded image: {e}"))
}

impl Drop for Uploads {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A base64 image field (with or without a `data:image/...;base64,` prefix) as bytes.
pub(crate) fn decode_image(field: &str, value: &Value) -> ApiResult<Vec<u8>> {
    let Value::String(text) = value else {
        return Err(ApiError::field(
            field,
            format!("{field} must be a base64 image (text)"),
        ));
    };
    let data = match text.split_once(";base64,") {
        Some((head, rest)) if head.starts_with("data:") => rest,
        _ => text.as_str(),
    };
    let data: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if data.len() / 4 * 3 > MAX_IMAGE_BYTES {
        return Err(ApiError::field(
            field,
            format!(
                "{field} is over {} MiB decoded — send a smaller image",
                MAX_IMAGE_BYTES >> 20
            ),
        ));
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.as_bytes())
        .map_err(|e| {
            ApiError::field(
                field,
                format!("{field} is not base64 ({}) — send the image file's bytes in base64, optionally after data:image/png;base64,", cut(&e.to_string(), 80)),
            )
        })?;
    let known = bytes.starts_with(b"\x89PNG\r\n\x1a\n")
        || bytes.starts_with(&[0xFF, 0xD8, 0xFF])
        || (bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP");
    if !known {
        return Err(ApiError::field(
            field,
            format!(
                "{field} decodes to {} bytes that are not a PNG, JPEG or WebP image",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

/// Writes the init image and mask to a fresh private folder and checks that they decode.
pub(crate) fn write_uploads(request: &Map<String, Value>) -> ApiResult<Uploads> {
    let init = match request.get("init_images") {
        Some(Value::Array(list)) if !list.is_empty() => decode_image("init_images[0]", &list[0])?,
        _ => {
            return Err(ApiError::field(
                "init_images",
                "init_images must be a list of at least one base64 image",
            ))
        }
    };
    let mask = match request.get("mask") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(v) => Some(decode_image("mask", v)?),
    };
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hiresfix-img2img-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let io =
        |e: std::io::Error| ApiError::internal(format!("cannot write the uploaded image: {e}"));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let mut uploads = Uploads {
        init: dir.join("init"),
        mask: None,
        dir,
    };
    std::fs::write(&uploads.init, &init).map_err(io)?;
    let image = check_decodes("init_images[0]", &uploads.init)?;
    if let Some(bytes) = mask {
        let path = uploads.dir.join("mask");
        std::fs::write(&path, &bytes).map_err(io)?;
        let mask = check_decodes("mask", &path)?;
        if !hiresfix_engine::img2img::init::same_shape(mask, image) {
            return Err(ApiError::field(
                "mask",
                format!(
                    "mask is {}x{} but init_images[0] is {}x{}: send a mask of the image's size (or its shape)",
                    mask.0, mask.1, image.0, image.1
                ),
            ));
        }
        uploads.mask = Some(path);
    }
    Ok(uploads)
}

/// A 422 naming the field when the image does not decode (not the temporary path); its size.
pub(crate) fn check_decodes(field: &str, path: &Path) -> ApiResult<(usize, usize)> {
    hiresfix_engine::img2img::init::read(path, field)
        .map(|d| (d.rgb.width, d.rgb.height))
        .map_err(|e| {
            let message = e.to_string().replace(&format!(" {}", path.display()), "");
            ApiError::field(field, message)
        })
}

/// A number field as one of A1111's numbered choices (`resize_mode` 0..=3, ...).
pub(crate) fn choice(
    f: &Fields<'_>,
    key: &str,
    count: usize,
    names: &[&str],
) -> ApiResult<Option<usize>> {
    let Some(n) = f.int(key)? else {
        return Ok(None);
    };
    match usize::try_from(n).ok().filter(|n| *n < count) {
        Some(n) => Ok(Some(n)),
        None => Err(ApiError::field(
            key,
            format!(
                "{key} = {n} is not one of 0..={}: {}",
                count - 1,
                names.join(", ")
            ),
        )),
    }
}

/// A flag sent as a bool or A1111's 0/1.
pub(crate) fn flag(f: &Fields<'_>, key: &str) -> ApiResult<Option<bool>> {
    match f.0.get(key) {
        Some(Value::Number(_)) => Ok(f.int(key)?.map(|n| n != 0)),
        _ => f.flag(key),
    }
}

/// The request as a profile: the shared txt2img mapping, then pass 1's img2img fields.
pub(crate) fn to_profile(
    state: &crate::ServerState,
    request: &Map<String, Value>,
    uploads: &Uploads,
) -> ApiResult<(Profile, Vec<String>)> {
    let mut profile = txt2img::to_profile_as(state, request, Endpoint::Img2img)?;
    let f = Fields(request);
    let mut warnings = Vec::new();
    let first = &mut profile.passes[0];
    first.init_image = Some(uploads.init.to_string_lossy().into_owned());
    let denoise = f
        .float("denoising_strength")?
        .unwrap_or(defaults::IMG2IMG_DENOISE);
    first.denoise = Some(
        defaults::check("denoising_strength", denoise, defaults::denoise)
            .map_err(|e| ApiError::field("denoising_strength", e.message))?,
    );
    let modes = [
        "just resize",
        "crop and resize",
        "resize and fill",
        "latent upscale",
    ];
    if let Some(n) = choice(&f, "resize_mode", 4, &modes)? {
        first.resize_mode = Some(ResizeMode::ALL[n]);
    }
    if let Some(mask) = &uploads.mask {
        first.mask = Some(mask.to_string_lossy().into_owned());
        let blur = match f.int("mask_blur")? {
            Some(b) => Some(b),
            None => {
                let (x, y) = (f.int("mask_blur_x")?, f.int("mask_blur_y")?);
                if let (Some(x), Some(y)) = (x, y) {
                    if x != y {
                        warnings.push(format!("mask_blur_y = {y} was ignored: hiresfix blurs both axes by mask_blur_x = {x}"));
                    }
                }
                x.or(y)
            }
        };
        if let Some(b) = blur {
            let b = u32::try_from(b).unwrap_or(u32::MAX);
            first.mask_blur = Some(
                defaults::check("mask_blur", b, defaults::mask_blur)
                    .map_err(|e| ApiError::field("mask_blur", e.message))?,
            );
        }
        let fills: Vec<&str> = InpaintingFill::ALL.iter().map(|(_, s)| *s).collect();
        // A1111's API default is 0 ("fill").
        let fill = choice(&f, "inpainting_fill", 4, &fills)?.unwrap_or(0);
        first.inpainting_fill = Some(InpaintingFill::ALL[fill].0);
        first.mask_invert = flag(&f, "inpainting_mask_invert")?;
        // A1111's API default is true ("only masked") with padding 0.
        let full_res = flag(&f, "inpaint_full_res")?.unwrap_or(true);
        first.inpaint_full_res = Some(full_res && profile_has_one_pass(request));
        if full_res && !profile_has_one_pass(request) {
            warnings.push("inpaint_full_res was ignored: with enable_hr the whole image is inpainted (\"only masked\" makes an image a later pass cannot continue)".into());
        }
        let padding = f.int("inpaint_full_res_padding")?.unwrap_or(0);
        let padding = u32::try_from(padding).unwrap_or(u32::MAX);
        first.inpaint_full_res_padding = Some(
            defaults::check(
                "inpaint_full_res_padding",
                padding,
                defaults::inpaint_padding,
            )
            .map_err(|e| ApiError::field("inpaint_full_res_padding", e.message))?,
        );
    }
    for (key, why) in [
        (
            "image_cfg_scale",
            "only instruct-pix2pix checkpoints read it",
        ),
        ("initial_noise_multiplier", "the noise is not scaled"),
        ("latent_mask", "the mask is the latent mask"),
    ] {
        if let Some(v) = f.0.get(key).filter(|v| !v.is_null()) {
            let neutral = key == "initial_noise_multiplier" && v.as_f64() == Some(1.0);
            if !neutral {
                warnings.push(format!(
                    "{key} = {} was ignored: {why}",
                    cut(&v.to_string(), 40)
                ));
            }
        }
    }
    if let Some(extra) =
        f.0.get("init_images")
            .and_then(Value::as_array)
            .filter(|l| l.len() > 1)
    {
        warnings.push(format!(
            "init_images: {} images were sent; the first is used for every image",
            extra.len()
        ));
    }
    profile
        .validate()
        .map_err(|e| ApiError::field(&e.key, e.message))?;
    Ok((profile, warnings))
}

pub(crate) fn profile_has_one_pass(request: &Map<String, Value>) -> bool {
    !Fields(request)
        .flag("enable_hr")
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The `parameters` echo: txt2img's, A1111's img2img fields, the request's values; the
/// images themselves only with `include_init_images` (A1111 drops them otherwise).
pub(crate) fn echo(request: &Map<String, Value>, include: bool) -> Value {
    let mut out = txt2img::echo(request);
    let extra: Map<String, Value> = serde_json::from_str(IMG2IMG_DEFAULTS).expect("JSON");
    if let Some(map) = out.as_object_mut() {
        for (key, default) in extra {
            let value = request.get(&key).cloned().unwrap_or(default);
            map.insert(key, value);
        }
        if !include {
            map.insert("init_images".into(), Value::Null);
            map.insert("mask".into(), Value::Null);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_with_or_without_a_data_url_decodes_and_garbage_is_named() {
        let png = b"\x89PNG\r\n\x1a\nrest".to_vec();
        let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
        assert_eq!(decode_image("init_images[0]", &json!(b64)).unwrap(), png);
        let url = format!("data:image/png;base64,{b64}");
        assert_eq!(decode_image("init_images[0]", &json!(url)).unwrap(), png);
        let e = decode_image("init_images[0]", &json!("not base64 at all!")).unwrap_err();
        assert!(
            e.message.contains("init_images[0] is not base64"),
            "{}",
            e.message
        );
        let text = base64::engine::general_purpose::STANDARD.encode(b"hello there");
        let e = decode_image("mask", &json!(text)).unwrap_err();
        assert!(
            e.message.contains("not a PNG, JPEG or WebP"),
            "{}",
            e.message
        );
    }

    #[test]
    fn the_echo_drops_the_images_unless_asked() {
        let request: Map<String, Value> =
            serde_json::from_value(json!({"init_images": ["abc"], "denoising_strength": 0.3}))
                .unwrap();
        let e = echo(&request, false);
        assert_eq!(e["init_images"], Value::Null);
        assert_eq!(e["denoising_strength"], json!(0.3));
        assert_eq!(e["inpainting_fill"], json!(0));
        assert_eq!(echo(&request, true)["init_images"], json!(["abc"]));
    }
}
