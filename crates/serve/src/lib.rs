//! `hiresfix serve`: an AUTOMATIC1111-compatible HTTP API (`/sdapi/v1/*`) so the clients
//! people already use work unchanged, plus a native endpoint taking a whole profile
//! (`/hiresfix/v1/generate`, progress as server-sent events). One generation thread owns the
//! device and the model cache; requests wait in a bounded queue.
pub mod auth;
pub mod body;
mod bounds;
pub mod catalog;
pub mod content_type;
pub mod embeddings;
pub mod error;
pub mod extras;
mod ignored;
pub mod img2img;
pub mod listener;
pub mod listings;
pub mod native;
pub mod options;
pub mod progress;
mod sampler_fields;
pub mod sdapi;
pub mod txt2img;
pub mod worker;
pub use bounds::{
    bool_field, bounded_prompt, bounded_text, MAX_NAME_CHARS, MAX_OPTIONS, MAX_OPTION_BYTES,
};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use anyhow::{anyhow, bail, Context, Result};
use axum::extract::DefaultBodyLimit;
use serde_json::{Map, Value};

use catalog::Checkpoint;
use error::{cut, ApiError, ApiResult};
use hiresfix_engine::profile::{DeviceChoice, DtypeChoice};
use hiresfix_engine::registry::Registry;

/// `hiresfix serve`'s command line.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Address to listen on; anything but loopback needs --token or --api-auth.
    #[arg(long, default_value = "127.0.0.1:7860")]
    pub listen: String,
    /// Folder whose `.safetensors` checkpoints and diffusers folders are the models, by stem.
    #[arg(long)]
    pub models: Option<PathBuf>,
    /// The default model: a name in --models, or a checkpoint file or folder.
    #[arg(long)]
    pub model: Option<String>,
    /// Folder of LoRA files for `<lora:name:w>` tags.
    #[arg(long)]
    pub loras: Option<PathBuf>,
    /// Folder of textual-inversion embeddings, named in prompts by file stem (A1111's
    /// `--embeddings-dir`); `$HIRESFIX_EMBEDDING_PATH` is searched after it.
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// Folder of model upscalers (ESRGAN family) for `hr_upscaler`.
    #[arg(long)]
    pub upscalers: Option<PathBuf>,
    /// Bearer token every request must carry (`Authorization: Bearer T`).
    #[arg(long)]
    pub token: Option<String>,
    /// A1111's `--api-auth user:pass` (HTTP Basic), instead of or besides --token.
    #[arg(long, value_name = "USER:PASS")]
    pub api_auth: Option<String>,
    /// Jobs that may wait behind the running one; more get 503 with Retry-After.
    #[arg(long, default_value_t = 8)]
    pub queue: usize,
    /// Largest side of any pass, in pixels.
    #[arg(long, default_value_t = 4096)]
    pub max_side: u32,
    /// Most sampler steps per pass.
    #[arg(long, default_value_t = 150)]
    pub max_steps: u32,
    /// Most images per request (batch_size × n_iter).
    #[arg(long, default_value_t = 16)]
    pub max_images: u32,
    /// Largest request body, in MiB.
    #[arg(long, default_value_t = 8)]
    pub max_body_mb: usize,
    /// Seconds a connection has to send a whole request head (line and headers); slower
    /// ones, and idle kept-alive ones, are closed.
    #[arg(long, value_name = "SECS", default_value_t = 10.0)]
    pub header_timeout: f64,
    /// Seconds a request has to send its whole body; slower ones get 408.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub body_timeout: f64,
    /// Connections open at once; more wait until one closes.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Checkpoints kept loaded between requests (the most recent).
    #[arg(long, default_value_t = 2)]
    pub keep_models: usize,
    /// `auto`, `cpu`, `cuda`, `cuda:N`.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// `auto`, `fp32`, `fp16`, `bf16`.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// A profile whose values fill what a request leaves unset (sizes, steps, sampler, CFG,
    /// pass 2's hires settings, patches, device); A1111's defaults otherwise.
    #[arg(long, value_name = "PROFILE")]
    pub defaults: Option<PathBuf>,
    /// More plugin folders (searched first).
    #[arg(long = "plugins", value_name = "DIR")]
    pub plugin_dirs: Vec<PathBuf>,
}

/// What every request handler shares.
pub struct ServerState {
    pub registry: &'static Registry,
    pub queue: worker::Queue,
    pub limits: txt2img::Limits,
    pub models_dir: Option<PathBuf>,
    pub loras_dir: Option<PathBuf>,
    pub embeddings_dir: Option<PathBuf>,
    pub upscalers_dir: Option<PathBuf>,
    /// `--model` when it is a file or folder outside --models (always offered).
    pub extra_model: Option<Checkpoint>,
    pub checkpoints: RwLock<Vec<Checkpoint>>,
    /// A1111's options as set by `POST /options` (sd_model_checkpoint holds a model name).
    pub options: Mutex<Map<String, Value>>,
    pub device: DeviceChoice,
    pub dtype: DtypeChoice,
    pub auth: auth::Auth,
    /// `--defaults`: what unset request fields take.
    pub defaults: hiresfix_engine::profile::Profile,
    /// Listening on loopback only: requests must name a loopback host (DNS rebinding).
    pub loopback: bool,
    /// How long a request may take to send its body (`--body-timeout`).
    pub body_timeout: std::time::Duration,
}

/// A name a request gives for a server-side file (LoRA tag, upscaler): a name from the
/// server's lists, never a path.
pub fn plain_name(field: &str, name: &str) -> ApiResult<()> {
    let n = name.trim();
    let lower = n.to_ascii_lowercase();
    let file = [".safetensors", ".pth", ".pt", ".ckpt"]
        .iter()
        .any(|e| lower.ends_with(e));
    if file || n.contains('/') || n.contains('\\') || n.starts_with('.') || n.contains("..") {
        let name = cut(name, 80);
        return Err(ApiError::field(
            field,
            format!("{field}: `{name}` is a path; name a file the server lists (GET /sdapi/v1/loras, /sdapi/v1/upscalers)"),
        ));
    }
    Ok(())
}

/// Every `<lora:name:w>` tag of `prompt` names a LoRA, not a path (the prompt's length is
/// checked first: the tag scan is not linear).
pub fn plain_lora_tags(field: &str, prompt: &str) -> ApiResult<()> {
    bounded_prompt(field, prompt)?;
    if let Ok((_, tags)) = host_api::prompt::extract_loras(prompt) {
        for tag in tags {
            plain_name(field, &tag.name)?;
        }
    }
    Ok(())
}

pub type Shared = Arc<ServerState>;

impl ServerState {
    fn lock_options(&self) -> std::sync::MutexGuard<'_, Map<String, Value>> {
        self.options.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the options as set.
    pub fn options_now(&self) -> Map<String, Value> {
        self.lock_options().clone()
    }

    /// Sets `updates` unless the options would then pass [`MAX_OPTIONS`] keys or
    /// [`MAX_OPTIONS_BYTES`] in all (413, nothing set).
    pub fn set_options(&self, updates: Map<String, Value>) -> ApiResult<()> {
        let mut options = self.lock_options();
        let mut merged = options.clone();
        merged.extend(updates);
        let bytes: usize = merged
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum();
        if merged.len() > MAX_OPTIONS || bytes > bounds::MAX_OPTIONS_BYTES {
            return Err(ApiError {
                field: Some("options".into()),
                ..ApiError::new(
                    axum::http::StatusCode::PAYLOAD_TOO_LARGE,
                    format!(
                        "options: this would keep {} options of {bytes} bytes (at most {MAX_OPTIONS} options, {} bytes in all) — send only the options you change",
                        merged.len(),
                        bounds::MAX_OPTIONS_BYTES
                    ),
                )
            });
        }
        self.queue.observer.set_previews(options::previews(&merged));
        *options = merged;
        Ok(())
    }

    pub fn checkpoint_list(&self) -> Vec<Checkpoint> {
        let mut all = self
            .checkpoints
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(extra) = &self.extra_model {
            if !all.iter().any(|c| c.path == extra.path) {
                all.push(extra.clone());
            }
        }
        all
    }

    /// The checkpoint a client names in `field`.
    pub fn checkpoint(&self, field: &str, name: &str) -> ApiResult<Checkpoint> {
        let all = self.checkpoint_list();
        catalog::find(&all, name).cloned().ok_or_else(|| {
            let name = cut(name, 80);
            ApiError::field(
                field,
                format!(
                    "{field}: no model `{name}` — available: {} (GET /sdapi/v1/sd-models)",
                    catalog::names(&all)
                ),
            )
        })
    }

    /// The current default model (`POST /options` sd_model_checkpoint, else --model).
    pub fn default_checkpoint(&self) -> ApiResult<Checkpoint> {
        let name = self
            .lock_options()
            .get("sd_model_checkpoint")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_default();
        self.checkpoint("sd_model_checkpoint", &name)
    }

    /// The VAE files offered: `.safetensors` in `<models>/VAE`.
    pub fn vaes(&self) -> Vec<(String, PathBuf)> {
        let Some(dir) = self.models_dir.as_ref().map(|d| d.join("VAE")) else {
            return Vec::new();
        };
        let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
            })
            .filter_map(|p| Some((p.file_name()?.to_string_lossy().into_owned(), p)))
            .collect();
        found.sort();
        found
    }

    /// `sd_vae`: "Automatic" / "None" (the checkpoint's own), or a file of [`Self::vaes`].
    pub fn vae(&self, field: &str, name: &str) -> ApiResult<Option<String>> {
        if name.eq_ignore_ascii_case("automatic") || name.eq_ignore_ascii_case("none") {
            return Ok(None);
        }
        let vaes = self.vaes();
        let found = vaes.iter().find(|(file, path)| {
            file.eq_ignore_ascii_case(name)
                || path
                    .file_stem()
                    .is_some_and(|s| s.to_string_lossy().eq_ignore_ascii_case(name))
        });
        match found {
            Some((_, path)) => Ok(Some(path.to_string_lossy().into_owned())),
            None => Err(ApiError::field(
                field,
                format!(
                    "{field}: no VAE `{}` — use Automatic, None or one of: {} (files in <models>/VAE)",
                    cut(name, 80),
                    match vaes.is_empty() {
                        true => "none".to_owned(),
                        false => vaes.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>().join(", "),
                    }
                ),
            )),
        }
    }

    pub fn default_vae(&self) -> Option<String> {
        let name = self
            .lock_options()
            .get("sd_vae")
            .and_then(Value::as_str)
            .map(str::to_owned)?;
        self.vae("sd_vae", &name).ok().flatten()
    }

    /// `eta_noise_seed_delta` as set (A1111's ENSD; 0 by default).
    pub fn options_noise_seed_delta(&self) -> i64 {
        self.lock_options()
            .get("eta_noise_seed_delta")
            .and_then(Value::as_i64)
            .unwrap_or(0)
    }

    /// `hires_fix_use_firstpass_conds` as set (false by default).
    pub fn options_firstpass_conds(&self) -> bool {
        self.lock_options()
            .get("hires_fix_use_firstpass_conds")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }

    /// A1111's `hires_fix_refiner_pass` ("second pass" by default).
    pub fn options_refiner_pass(&self) -> String {
        self.lock_options()
            .get("hires_fix_refiner_pass")
            .and_then(Value::as_str)
            .unwrap_or("second pass")
            .to_owned()
    }

    pub fn options_clip_skip(&self) -> u32 {
        self.lock_options()
            .get("CLIP_stop_at_last_layers")
            .and_then(Value::as_u64)
            .map_or(hiresfix_engine::defaults::CLIP_SKIP, |n| {
                n.clamp(1, 12) as u32
            })
    }

    pub fn lora_dirs(&self) -> Vec<PathBuf> {
        self.loras_dir.iter().cloned().collect()
    }

    pub fn embedding_dirs(&self) -> Vec<PathBuf> {
        self.embeddings_dir.iter().cloned().collect()
    }

    pub fn upscaler_dirs(&self) -> Vec<PathBuf> {
        self.upscalers_dir.iter().cloned().collect()
    }

    /// Where live previews find a TAESD decoder: `<models>/VAE-approx` (A1111's folder),
    /// unless the option `show_progress_type` asks for "Approx cheap" (the latent-to-RGB
    /// factors).
    pub fn vae_approx_dirs(&self) -> Vec<PathBuf> {
        let cheap = self
            .lock_options()
            .get("show_progress_type")
            .and_then(Value::as_str)
            == Some("Approx cheap");
        match (&self.models_dir, cheap) {
            (Some(dir), false) => vec![dir.join("VAE-approx")],
            _ => Vec::new(),
        }
    }

    pub fn loras(&self) -> Vec<catalog::Lora> {
        self.loras_dir
            .as_deref()
            .map(catalog::scan_loras)
            .unwrap_or_default()
    }

    /// Rescans --models (`POST /refresh-checkpoints`).
    pub fn refresh_checkpoints(&self) -> Vec<String> {
        let Some(dir) = &self.models_dir else {
            return Vec::new();
        };
        let (found, refused) = catalog::scan_models(dir, self.registry);
        *self.checkpoints.write().unwrap_or_else(|e| e.into_inner()) = found;
        refused
    }
}

/// A `--*-timeout` in seconds as a duration (positive, at most a day).
fn seconds(flag: &str, value: f64) -> Result<std::time::Duration> {
    if !(value > 0.0 && value <= 86_400.0) {
        bail!("--{flag}: give seconds above 0 and at most 86400, e.g. --{flag} 10");
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

fn parse_choice<T: serde::de::DeserializeOwned>(flag: &str, value: &str) -> Result<T> {
    serde_json::from_value(Value::String(value.to_owned())).map_err(|e| anyhow!("--{flag}: {e}"))
}

/// `listen` as a socket address, and whether it is loopback only.
fn listen_address(listen: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    listen
        .to_socket_addrs()
        .with_context(|| format!("--listen {listen}: not an address:port (e.g. 127.0.0.1:7860)"))?
        .next()
        .ok_or_else(|| anyhow!("--listen {listen}: the name resolves to no address"))
}

/// Builds the state (checkpoints scanned, the default model chosen) for `args`.
fn build_state(
    args: &Args,
    registry: &'static Registry,
    queue: worker::Queue,
) -> Result<ServerState> {
    let models_dir = args.models.clone();
    if let Some(dir) = &models_dir {
        if !dir.is_dir() {
            bail!(
                "--models {}: not a folder — give the folder holding your checkpoints",
                dir.display()
            );
        }
    }
    let (checkpoints, refused) = match &models_dir {
        Some(dir) => catalog::scan_models(dir, registry),
        None => (Vec::new(), Vec::new()),
    };
    for line in &refused {
        eprintln!("note: not a checkpoint, skipped: {line}");
    }
    // --model: a name in --models, else a checkpoint file or folder of its own.
    let mut extra_model = None;
    let default = match &args.model {
        Some(name) => match catalog::find(&checkpoints, name) {
            Some(found) => found.name.clone(),
            None => {
                let path = PathBuf::from(name);
                if !path.exists() {
                    bail!(
                        "--model {name}: neither a model in --models ({}) nor a checkpoint file or folder",
                        catalog::names(&checkpoints)
                    );
                }
                let backend = hiresfix_engine::models::detect_backend(registry, &path)?;
                let checkpoint = Checkpoint {
                    name: path
                        .file_stem()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    filename: path
                        .file_name()
                        .map(|s| s.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    family: backend.decl.family.to_string(),
                    path: std::fs::canonicalize(&path).unwrap_or(path),
                };
                let name = checkpoint.name.clone();
                extra_model = Some(checkpoint);
                name
            }
        },
        None => match checkpoints.first() {
            Some(first) => first.name.clone(),
            None => bail!(
                "no checkpoint to serve — give --models DIR (a folder of .safetensors checkpoints or diffusers folders) or --model FILE"
            ),
        },
    };
    for (flag, dir) in [
        ("loras", &args.loras),
        ("embeddings", &args.embeddings),
        ("upscalers", &args.upscalers),
    ] {
        if let Some(dir) = dir {
            if !dir.is_dir() {
                bail!("--{flag} {}: not a folder", dir.display());
            }
        }
    }
    let mut options = options::defaults();
    options.insert("sd_model_checkpoint".into(), Value::String(default));
    options.insert("sd_vae".into(), Value::String("Automatic".into()));
    options.insert(
        "CLIP_stop_at_last_layers".into(),
        Value::from(hiresfix_engine::defaults::CLIP_SKIP),
    );
    options.insert("samples_format".into(), Value::String("png".into()));
    Ok(ServerState {
        registry,
        queue,
        limits: txt2img::Limits {
            side: args.max_side,
            steps: i64::from(args.max_steps),
            images: i64::from(args.max_images),
        },
        models_dir,
        loras_dir: args.loras.clone(),
        embeddings_dir: args.embeddings.clone(),
        upscalers_dir: args.upscalers.clone(),
        extra_model,
        checkpoints: RwLock::new(checkpoints),
        options: Mutex::new(options),
        device: parse_choice("device", &args.device)?,
        dtype: parse_choice("dtype", &args.dtype)?,
        auth: auth::Auth::from_args(args.token.as_deref(), args.api_auth.as_deref())?,
        defaults: defaults_profile(args.defaults.as_deref())?,
        loopback: listen_address(&args.listen).is_ok_and(|a| a.ip().is_loopback()),
        body_timeout: seconds("body-timeout", args.body_timeout)?,
    })
}

/// `--defaults`: a profile without folders, plugins or models of its own (those are the
/// server's flags).
fn defaults_profile(path: Option<&std::path::Path>) -> Result<hiresfix_engine::profile::Profile> {
    let Some(path) = path else {
        return Ok(hiresfix_engine::profile::Profile::empty());
    };
    let profile = hiresfix_engine::profile::Profile::load(path)?;
    if !profile.plugin_dirs.is_empty()
        || !profile.lora_dirs.is_empty()
        || !profile.embedding_dirs.is_empty()
        || !profile.upscaler_dirs.is_empty()
        || !profile.vae_approx_dirs.is_empty()
    {
        bail!("--defaults {}: plugin_dirs, lora_dirs, embedding_dirs, upscaler_dirs and vae_approx_dirs are set by --plugins, --loras, --embeddings, --upscalers and <models>/VAE-approx; remove them", path.display());
    }
    if profile.model.checkpoint.is_some() || profile.model.merge.is_some() {
        bail!("--defaults {}: the model is chosen by --model / the request; remove [model] checkpoint", path.display());
    }
    if profile.target.is_some() || profile.stage_factor.is_some() {
        bail!("--defaults {}: target and stage_factor plan one request's passes (a native request may give them); remove them", path.display());
    }
    Ok(profile)
}

/// The router over `state`.
pub fn router(state: Shared, max_body: usize) -> axum::Router {
    use axum::routing::{get, post};
    let api = axum::Router::new()
        .route("/sdapi/v1/txt2img", post(sdapi::txt2img))
        .route("/sdapi/v1/img2img", post(img2img::img2img))
        .route("/sdapi/v1/samplers", get(sdapi::samplers))
        .route("/sdapi/v1/schedulers", get(sdapi::schedulers))
        .route("/sdapi/v1/upscalers", get(sdapi::upscalers))
        .route("/sdapi/v1/latent-upscale-modes", get(sdapi::latent_modes))
        .route("/sdapi/v1/sd-models", get(sdapi::sd_models))
        .route("/sdapi/v1/sd-vae", get(sdapi::sd_vae))
        .route("/sdapi/v1/loras", get(sdapi::loras))
        .route(
            "/sdapi/v1/refresh-checkpoints",
            post(sdapi::refresh_checkpoints),
        )
        .route("/sdapi/v1/refresh-loras", post(sdapi::refresh_loras))
        .route("/sdapi/v1/refresh-vae", post(listings::refreshed))
        .route("/sdapi/v1/refresh-embeddings", post(listings::refreshed))
        .route("/sdapi/v1/cmd-flags", get(listings::cmd_flags))
        .route("/sdapi/v1/memory", get(listings::memory))
        .route("/sdapi/v1/hypernetworks", get(listings::none))
        .route("/sdapi/v1/face-restorers", get(listings::none))
        .route("/sdapi/v1/prompt-styles", get(listings::none))
        .route("/sdapi/v1/script-info", get(listings::none))
        .route("/sdapi/v1/extensions", get(listings::none))
        .route(
            "/sdapi/v1/realesrgan-models",
            get(listings::realesrgan_models),
        )
        // A1111 lists its SD modules (the VAE files) in sd-vae's shape.
        .route("/sdapi/v1/sd-modules", get(sdapi::sd_vae))
        .route("/internal/ping", get(listings::ping))
        .route("/sdapi/v1/extra-single-image", post(extras::single))
        .route("/sdapi/v1/extra-batch-images", post(extras::batch))
        .route(
            "/sdapi/v1/unload-checkpoint",
            post(listings::unload_checkpoint),
        )
        .route(
            "/sdapi/v1/reload-checkpoint",
            post(listings::reload_checkpoint),
        )
        .route(
            "/sdapi/v1/options",
            get(sdapi::get_options).post(sdapi::set_options),
        )
        .route(
            "/sdapi/v1/options/",
            get(sdapi::get_options).post(sdapi::set_options),
        )
        .route("/sdapi/v1/progress", get(sdapi::progress))
        .route("/sdapi/v1/interrupt", post(sdapi::interrupt))
        .route("/sdapi/v1/skip", post(sdapi::skip))
        .route("/sdapi/v1/png-info", post(sdapi::png_info))
        .route("/sdapi/v1/scripts", get(sdapi::scripts))
        .route("/sdapi/v1/embeddings", get(embeddings::list))
        .route("/hiresfix/v1/generate", post(native::generate))
        .route("/hiresfix/v1/plugins", get(native::plugins))
        .fallback(sdapi::not_found);
    // Outermost first: the host and credentials, then the content type, then the body limit.
    api.layer(axum::middleware::from_fn(content_type::require))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

/// Runs the server until SIGTERM or Ctrl-C: the running job is cancelled, waiting ones get
/// 503, open requests are answered, then it exits.
pub fn run(args: &Args, quiet: bool) -> Result<()> {
    let address = listen_address(&args.listen)?;
    let loopback = address.ip().is_loopback();
    if !loopback && args.token.is_none() && args.api_auth.is_none() {
        bail!(
            "--listen {address} is reachable from other machines: give --token T (or --api-auth user:pass), or listen on 127.0.0.1"
        );
    }
    if args.queue == 0 || args.max_images == 0 || args.max_steps == 0 || args.max_connections == 0 {
        bail!("--queue, --max-images, --max-steps and --max-connections must be at least 1");
    }
    let connections = listener::Settings {
        header_timeout: seconds("header-timeout", args.header_timeout)?,
        max_connections: args.max_connections,
    };
    seconds("body-timeout", args.body_timeout)?; // checked before anything starts
    let registry: &'static Registry = Box::leak(Box::new(Registry::load(
        &args.plugin_dirs,
        &BTreeMap::new(),
    )));
    hiresfix_engine::registry::warn_refused(registry);
    let base_dir = std::env::current_dir().unwrap_or_default();
    let (queue, thread) = worker::start(
        registry,
        base_dir,
        args.queue,
        args.keep_models.max(1),
        quiet,
    )
    .context("cannot start the generation thread")?;
    let state: Shared = Arc::new(build_state(args, registry, queue)?);
    // Titles carry `[hash]`: the files are hashed in the background from the start (a listing
    // before that finishes hashes what is left itself).
    let all = state.checkpoint_list();
    let _ = std::thread::Builder::new()
        .name("hiresfix-hash".into())
        .spawn(move || catalog::hash_all(&all));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let max_body = args.max_body_mb.max(1) * 1024 * 1024;
    let app = router(state.clone(), max_body);
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("--listen {address}: cannot listen there — is another server on that port?"))?;
        let bound = listener.local_addr()?;
        let default = state.default_checkpoint().map(|c| c.name).unwrap_or_default();
        // Written, not println!: a closed stdout must not take the server down.
        use std::io::Write;
        let mut out = std::io::stdout();
        let _ = writeln!(out, "hiresfix serve: listening on http://{bound} (model {default}; A1111 API at /sdapi/v1, native at /hiresfix/v1)");
        let _ = out.flush();
        if !loopback {
            eprintln!("hiresfix serve: not loopback — every request needs the token (Authorization: Bearer … or Basic)");
        }
        let stopping = state.clone();
        crate::listener::serve(listener, app, connections, async move {
            shutdown_signal().await;
            eprintln!("hiresfix serve: shutting down (the running job is cancelled, waiting ones get 503)");
            stopping.queue.shut_down();
        })
        .await;
        anyhow::Ok(())
    })?;
    state.queue.shut_down();
    drop(runtime);
    let _ = thread.join();
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
