//! `check`'s memory table: what each pass needs (the backend's estimate from the checkpoint's
//! headers: weights, a UNet call, the decode full and tiled) against the device's free
//! memory, and the largest size of the pass's aspect that would fit. A pass with a refiner
//! holds both models' weights.
use anyhow::{anyhow, Result};
use host_api::{BackendDecl, MemoryEstimate, MemoryRequest};

use crate::models::{LoadSettings, Models};
use crate::plan::{PassPlan, PassSize};
use crate::registry::Entry;

/// One pass's estimate, and the largest sizes (same aspect, multiples of 64 px) that fit.
pub struct PassMemory {
    pub pass: usize,
    pub size: (u32, u32),
    pub estimate: MemoryEstimate,
    pub largest_full: Option<(u32, u32)>,
    pub largest_tiled: Option<(u32, u32)>,
    /// For a pass that does not fit even tiled: the settings that would make it fit.
    pub advice: Option<String>,
}

/// Side of a size search: the largest multiple of 64 px tried (a profile's largest size).
const MAX_SIDE: u32 = crate::defaults::MAX_SIZE;

/// What a pass's estimates at every size share, read once: its backend, its refiner's weights
/// (see [`refiner_weights`]) and, for a tiled pass, the checkpoint's latent channels.
#[derive(Clone, Copy)]
struct Held<'r> {
    backend: &'r Entry<BackendDecl>,
    refiner_weights: u64,
    channels: u64,
}

impl<'r> Held<'r> {
    fn of(
        plan: &PassPlan<'_>,
        models: &Models<'r>,
        settings: &LoadSettings,
        size: (u32, u32),
    ) -> Result<Self> {
        let backend = models.backend(&plan.checkpoint)?;
        Ok(Held {
            backend,
            refiner_weights: refiner_weights(plan, models, settings, size)?,
            channels: match plan.tiled {
                Some(_) => latent_channels(&plan.checkpoint, backend),
                None => 4,
            },
        })
    }
}

/// The backend's estimate for `plan` at `width × height` with `images` images per UNet call,
/// the weights of its refiner added.
fn estimate(
    plan: &PassPlan<'_>,
    held: Held<'_>,
    settings: &LoadSettings,
    size: (u32, u32),
    (images, factor): (u32, u32),
) -> Result<MemoryEstimate> {
    let mut e = estimate_of(&plan.checkpoint, plan, held.backend, settings, size, images)?;
    if let Some(tiled) = &plan.tiled {
        e.unet = tiled_unet(plan, (tiled, held), settings, size, (images, factor))?;
    }
    e.weights += held.refiner_weights;
    Ok(e)
}

/// A tiled pass's UNet call: at most `per_call` tiles of the tile's size a call (the
/// backend's estimate there), plus the whole-latent merge buffers (the latent, one sum per
/// conditioning and the weights, float32, of the checkpoint's latent channels).
fn tiled_unet(
    plan: &PassPlan<'_>,
    (tiled, held): (&crate::tiled::Tiled, Held<'_>),
    settings: &LoadSettings,
    (width, height): (u32, u32),
    (images, f): (u32, u32),
) -> Result<u64> {
    let (lw, lh) = (i64::from(width / f).max(1), i64::from(height / f).max(1));
    let grid = crate::tiled::Grid::new(tiled, lh, lw);
    let tile = (grid.tile_w as u32 * f, grid.tile_h as u32 * f);
    let call = estimate_of(
        &plan.checkpoint,
        plan,
        held.backend,
        settings,
        tile,
        images * grid.per_call() as u32,
    )?;
    let per_image = if plan.cfg == 1.0 { 1 } else { 2 };
    Ok(call.unet + merge_buffers((lw, lh), held.channels, per_image, u64::from(images)))
}

/// The checkpoint's latent channels from its headers (SD 4, SD3 and Flux 16); 4 for a backend
/// that cannot tell without loading.
fn latent_channels(checkpoint: &std::path::Path, backend: &Entry<BackendDecl>) -> u64 {
    match backend.decl.has_tools() {
        true => backend
            .decl
            .run_inspect(checkpoint, false)
            .map_or(4, |info| u64::from(info.latent_channels.max(1))),
        false => 4,
    }
}

/// A tiled pass's whole-latent buffers (`lw × lh` cells of `channels`, float32): the latent,
/// the weights, and one sum per conditioning (`per_image`) of each image.
pub fn merge_buffers((lw, lh): (i64, i64), channels: u64, per_image: u64, images: u64) -> u64 {
    (lw * lh).max(0) as u64 * channels * 4 * (2 + per_image) * images
}

/// The weights of `plan`'s refiner (0 without one).
fn refiner_weights(
    plan: &PassPlan<'_>,
    models: &Models<'_>,
    settings: &LoadSettings,
    size: (u32, u32),
) -> Result<u64> {
    let Some(refiner) = &plan.refiner else {
        return Ok(0);
    };
    let backend = models.backend(&refiner.checkpoint)?;
    Ok(estimate_of(&refiner.checkpoint, plan, backend, settings, size, 1)?.weights)
}

fn estimate_of(
    checkpoint: &std::path::Path,
    plan: &PassPlan<'_>,
    backend: &Entry<BackendDecl>,
    settings: &LoadSettings,
    (width, height): (u32, u32),
    images: u32,
) -> Result<MemoryEstimate> {
    let per_image = if plan.cfg == 1.0 { 1 } else { 2 };
    let request = MemoryRequest {
        checkpoint: checkpoint.to_string_lossy().into_owned().into(),
        width,
        height,
        unet_batch: per_image * images,
        dtype: settings.dtype.as_str().into(),
        device: settings.device.as_str().into(),
        vae_tile_size: settings.vae_tile_size,
        vae_tile_overlap: settings.vae_tile_overlap,
        options: settings.backend_options().into(),
    };
    backend
        .decl
        .run_estimate_memory(&request)
        .map_err(|e| anyhow!("pass {}: memory estimate: {e}", plan.number))
}

pub fn table(
    plans: &[PassPlan<'_>],
    sizes: &[PassSize],
    models: &Models<'_>,
    settings: &LoadSettings,
) -> Result<Vec<PassMemory>> {
    let mut rows = Vec::new();
    let mut free = None; // read once, so that every pass is held against the same number
    for (plan, size) in plans.iter().zip(sizes) {
        let at_size = (size.width, size.height);
        let held = Held::of(plan, models, settings, at_size)?;
        let factor = latent_factor(size);
        let ask =
            |width: u32, height: u32| estimate(plan, held, settings, (width, height), (1, factor));
        let mut estimate = ask(size.width, size.height)?;
        estimate.free = *free.get_or_insert(estimate.free);
        let largest = |tiled: bool| -> Result<Option<(u32, u32)>> {
            if estimate.free == 0 {
                return Ok(None);
            }
            let at = |k: u32| scaled(size, k);
            // The largest k (64 px steps along the longer side) whose peak fits.
            let (mut lo, mut hi) = (0u32, MAX_SIDE / 64);
            while lo < hi {
                let mid = (lo + hi).div_ceil(2);
                let (w, h) = at(mid);
                match ask(w, h)?.peak(tiled) <= estimate.free {
                    true => lo = mid,
                    false => hi = mid - 1,
                }
            }
            Ok((lo > 0).then(|| at(lo)))
        };
        let largest_full = largest(false)?;
        let largest_tiled = largest(true)?;
        let advice = match estimate.free > 0 && estimate.peak(true) > estimate.free {
            true => {
                let peak_with = |changed: &LoadSettings| {
                    self::estimate(plan, held, changed, at_size, (1, factor))
                        .ok()
                        .map(|e| e.peak(true))
                };
                advise(
                    estimate.free,
                    estimate.peak(true),
                    cheaper(settings, peak_with),
                )
            }
            false => None,
        };
        rows.push(PassMemory {
            pass: plan.number,
            size: (size.width, size.height),
            estimate,
            largest_full,
            largest_tiled,
            advice,
        });
    }
    Ok(rows)
}

/// The profile changes that lower a pass's memory, with the tiled peak each gives (`peak_with`
/// the settings changed; `None` where the backend cannot estimate them): a 16-bit `dtype`
/// where the run is fp32, T5 kept on the CPU (`[model] t5 = "cpu"`, SD 3.5 and Flux) where
/// the device is not the CPU, a Flux transformer's weights in fp8 (`[model] weight_dtype =
/// "fp8_e4m3fn"`), and their combinations, fewest changes first. A change that lowers nothing
/// (a backend that ignores the key) is left out by [`advise`].
fn cheaper(
    settings: &LoadSettings,
    peak_with: impl Fn(&LoadSettings) -> Option<u64>,
) -> Vec<(String, u64)> {
    type Change = (&'static str, fn(&mut LoadSettings));
    let mut changes: Vec<Change> = Vec::new();
    if settings.dtype == "fp32" {
        changes.push(("dtype = \"bf16\"", |s| s.dtype = "bf16".into()));
    }
    if settings.device != "cpu" && settings.t5 != "cpu" {
        changes.push(("[model] t5 = \"cpu\"", |s| s.t5 = "cpu".into()));
    }
    if settings.weight_dtype != "fp8_e4m3fn" {
        changes.push(("[model] weight_dtype = \"fp8_e4m3fn\"", |s| {
            s.weight_dtype = "fp8_e4m3fn".into()
        }));
    }
    // Every non-empty subset, by size, then in the order above.
    let n = changes.len();
    let mut subsets: Vec<u32> = (1..1u32 << n).collect();
    subsets.sort_by_key(|m| (m.count_ones(), *m));
    let mut out = Vec::new();
    for mask in subsets {
        let mut changed = settings.clone();
        let mut labels = Vec::new();
        for (i, (label, apply)) in changes.iter().enumerate() {
            if mask & (1 << i) != 0 {
                apply(&mut changed);
                labels.push(*label);
            }
        }
        if let Some(peak) = peak_with(&changed) {
            out.push((labels.join(" and "), peak));
        }
    }
    out
}

/// What `check` says of a pass whose tiled peak `current` exceeds `free`: the first of
/// `candidates` (a change and its tiled peak, fewest changes first) that fits, else the one
/// that comes closest; nothing when no change lowers the peak.
fn advise(free: u64, current: u64, candidates: Vec<(String, u64)>) -> Option<String> {
    let lower: Vec<_> = candidates
        .into_iter()
        .filter(|(_, p)| *p < current)
        .collect();
    if let Some((label, peak)) = lower.iter().find(|(_, p)| *p <= free) {
        return Some(format!(
            "fits with {label} ({} peak with the tiled decode)",
            gib(*peak)
        ));
    }
    let (label, peak) = lower.iter().min_by_key(|(_, p)| *p)?;
    Some(format!(
        "does not fit even with {label} ({} peak, {} free): use a smaller size or a device with more memory",
        gib(*peak),
        gib(free)
    ))
}

/// Most images one UNet call takes, whatever the memory: past this a GPU gains nothing.
pub const MAX_IMAGES_PER_CALL: usize = 8;

/// Share of the free memory a batched run (or an untiled `tiled = "auto"` pass) may plan to
/// use (the rest is slack for the estimate's error and other processes).
pub const BATCH_SHARE: f64 = 0.8;

/// The estimated peak of `plan`'s pass at `size` with one image, its UNet call over the
/// whole latent (weights, the refiner's, the runtime and the call; the decode is left to VAE
/// tiling), and the device's free memory. `None` when the backend gives no estimate or the
/// free memory is unknown.
pub fn whole_call(
    plan: &PassPlan<'_>,
    size: &PassSize,
    models: &Models<'_>,
    settings: &LoadSettings,
) -> Option<(u64, u64)> {
    let backend = models.backend(&plan.checkpoint).ok()?;
    let at_size = (size.width, size.height);
    let refiner = refiner_weights(plan, models, settings, at_size).ok()?;
    let e = estimate_of(&plan.checkpoint, plan, backend, settings, at_size, 1).ok()?;
    let need = e.runtime + e.weights + refiner + e.unet;
    (e.free > 0 && e.unet > 0).then_some((need, e.free))
}

/// How many of `images` images run as one UNet batch: the most (up to
/// [`MAX_IMAGES_PER_CALL`]) whose estimated peak fits every pass in the device's free memory
/// (decoding stays one image at a time). 1 when the backend gives no estimate or the free
/// memory is unknown. Also returns a warning for each pass whose single image does not fit.
pub fn batch_plan(
    plans: &[PassPlan<'_>],
    sizes: &[PassSize],
    models: &Models<'_>,
    settings: &LoadSettings,
    images: usize,
) -> (usize, Vec<String>) {
    let mut most = images.clamp(1, MAX_IMAGES_PER_CALL);
    let mut warnings = Vec::new();
    let mut free = None;
    for (plan, size) in plans.iter().zip(sizes) {
        let at_size = (size.width, size.height);
        let Ok(held) = Held::of(plan, models, settings, at_size) else {
            return (1, warnings);
        };
        let at = (1, latent_factor(size));
        let Ok(e) = estimate(plan, held, settings, at_size, at) else {
            return (1, warnings);
        };
        let free = *free.get_or_insert(e.free);
        if free == 0 {
            return (1, warnings);
        }
        let decode = match settings.vae_tiling.as_str() {
            "off" => e.decode_full,
            _ => e.decode_tiled, // `auto` tiles what does not fit whole
        };
        let fixed = e.runtime + e.weights;
        if fixed + e.unet.max(decode) > free {
            warnings.push(format!(
                "warning: pass {}: about {} needed at {}x{} but {} is free on {} — see `hiresfix check` for the largest size that fits",
                plan.number,
                gib(fixed + e.unet.max(decode)),
                size.width,
                size.height,
                gib(free),
                settings.device
            ));
            most = 1;
            continue;
        }
        // The UNet's working memory grows with the images it takes at once.
        let budget = (free as f64 * BATCH_SHARE) as u64;
        let fits = |n: usize| fixed + (e.unet * n as u64).max(decode) <= budget;
        while most > 1 && !fits(most) {
            most -= 1;
        }
    }
    (most, warnings)
}

/// Pixels per latent cell of a pass (the VAE's factor).
fn latent_factor(size: &PassSize) -> u32 {
    (i64::from(size.width) / size.latent_w.max(1)).max(1) as u32
}

/// `size`'s aspect with the longer side `64·k` px, both sides multiples of 64.
fn scaled(size: &PassSize, k: u32) -> (u32, u32) {
    let (w, h) = (size.width.max(1) as f64, size.height.max(1) as f64);
    let long = f64::from(64 * k);
    let side = |s: f64| (((s / w.max(h)) * long / 64.0).round().max(1.0) * 64.0) as u32;
    (side(w), side(h))
}

/// GiB with one decimal, or MiB below 1 GiB.
pub fn gib(bytes: u64) -> String {
    match bytes >= 1 << 30 {
        true => format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64),
        false => format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64),
    }
}

/// The table as text lines (`check` prints them).
pub fn render(rows: &[PassMemory], settings: &LoadSettings) -> Vec<String> {
    let free = rows.first().map_or(0, |r| r.estimate.free);
    let free = match free {
        0 => "free memory unknown".to_owned(),
        f => format!("{} free", gib(f)),
    };
    // `weight_dtype` changes what the weights column counts: say so beside the dtype.
    let dtype = match settings.weight_dtype.as_str() {
        "" => settings.dtype.clone(),
        held => format!("{}, Flux weights {held}", settings.dtype),
    };
    let mut lines = vec![
        format!(
            "memory ({}, {dtype}, {free}; estimate: runtime + weights + max(UNet call, decode)):",
            settings.device
        ),
        format!(
            "{:<5} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
            "pass", "size", "weights", "UNet", "decode", "tiled", "peak", "peak tiled"
        ),
    ];
    for row in rows {
        let e = &row.estimate;
        lines.push(format!(
            "{:<5} {:>11} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10}",
            row.pass,
            format!("{}x{}", row.size.0, row.size.1),
            gib(e.weights),
            gib(e.unet),
            gib(e.decode_full),
            gib(e.decode_tiled),
            gib(e.peak(false)),
            gib(e.peak(true)),
        ));
    }
    for row in rows {
        let show = |s: Option<(u32, u32)>| s.map_or("none".to_owned(), |(w, h)| format!("{w}x{h}"));
        if row.estimate.free > 0 {
            let fits = |tiled| match row.estimate.peak(tiled) <= row.estimate.free {
                true => "fits",
                false => "does not fit",
            };
            lines.push(format!(
                "pass {}: {} full, {} tiled; largest that fits: {} full, {} tiled",
                row.pass,
                fits(false),
                fits(true),
                show(row.largest_full),
                show(row.largest_tiled)
            ));
            if let Some(advice) = &row.advice {
                lines.push(format!("pass {}: {advice}", row.pass));
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn advice_names_the_fewest_changes_that_fit_else_the_closest() {
        let candidates = || {
            vec![
                ("dtype = \"bf16\"".to_string(), 30 * GIB),
                ("[model] t5 = \"cpu\"".to_string(), 26 * GIB),
                ("both".to_string(), 20 * GIB),
            ]
        };
        let at = |free| advise(free, 40 * GIB, candidates());
        assert_eq!(
            at(32 * GIB).as_deref(),
            Some("fits with dtype = \"bf16\" (30.0 GiB peak with the tiled decode)")
        );
        assert_eq!(
            at(24 * GIB).as_deref(),
            Some("fits with both (20.0 GiB peak with the tiled decode)")
        );
        assert_eq!(
            at(16 * GIB).as_deref(),
            Some("does not fit even with both (20.0 GiB peak, 16.0 GiB free): use a smaller size or a device with more memory")
        );
        // A change that lowers nothing (an SD checkpoint ignores `t5`) is no advice.
        let same = vec![("[model] t5 = \"cpu\"".to_string(), 40 * GIB)];
        assert_eq!(advise(16 * GIB, 40 * GIB, same), None);
    }

    #[test]
    fn cheaper_settings_are_a_16_bit_dtype_t5_off_the_device_and_fp8_weights() {
        let settings = |device: &str, dtype: &str, t5: &str, weights: &str| LoadSettings {
            device: device.into(),
            dtype: dtype.into(),
            vae_tiling: "auto".into(),
            vae_tile_size: 512,
            vae_tile_overlap: 64,
            prediction: String::new(),
            seamless: false,
            model_files: Vec::new(),
            t5: t5.into(),
            weight_dtype: weights.into(),
        };
        // The peak a change gives: 8 GiB less for bf16, 10 GiB for T5 on the CPU, 12 GiB for
        // fp8 weights.
        let peak = |s: &LoadSettings| {
            Some(
                50 * GIB
                    - if s.dtype == "bf16" { 8 * GIB } else { 0 }
                    - if s.t5 == "cpu" { 10 * GIB } else { 0 }
                    - if s.weight_dtype == "fp8_e4m3fn" {
                        12 * GIB
                    } else {
                        0
                    },
            )
        };
        let listed = |s: &LoadSettings| -> Vec<(String, u64)> {
            cheaper(s, peak)
                .into_iter()
                .map(|(l, p)| (l, p / GIB))
                .collect()
        };
        let (bf16, t5, fp8) = (
            "dtype = \"bf16\"",
            "[model] t5 = \"cpu\"",
            "[model] weight_dtype = \"fp8_e4m3fn\"",
        );
        let and = |a: &str, b: &str| format!("{a} and {b}");
        assert_eq!(
            listed(&settings("cuda", "fp32", "", "")),
            [
                (bf16.to_string(), 42),
                (t5.to_string(), 40),
                (fp8.to_string(), 38),
                (and(bf16, t5), 32),
                (and(bf16, fp8), 30),
                (and(t5, fp8), 28),
                (format!("{bf16} and {t5} and {fp8}"), 20),
            ]
        );
        assert_eq!(
            listed(&settings("cuda", "bf16", "", "")),
            [
                (t5.to_string(), 32),
                (fp8.to_string(), 30),
                (and(t5, fp8), 20)
            ]
        );
        assert_eq!(
            listed(&settings("cpu", "fp32", "", "")),
            [
                (bf16.to_string(), 42),
                (fp8.to_string(), 38),
                (and(bf16, fp8), 30)
            ]
        );
        assert!(listed(&settings("cuda", "fp16", "cpu", "fp8_e4m3fn")).is_empty());
    }

    #[test]
    fn scaled_sizes_keep_the_aspect_in_64_px_steps() {
        let size = PassSize {
            width: 832,
            height: 1216,
            latent_w: 104,
            latent_h: 152,
            cover_h: 152,
            cover_w: 104,
        };
        assert_eq!(scaled(&size, 19), (832, 1216));
        assert_eq!(scaled(&size, 32), (1408, 2048));
        assert_eq!(scaled(&size, 1), (64, 64));
    }
}
