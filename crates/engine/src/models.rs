//! Loaded models, shared by every pass, image and grid cell of a run: each checkpoint (with
//! its VAE, merge and load settings) is loaded once, by the backend plugin whose family reads it.
use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{anyhow, bail, Result};
use host_api::backend::device_name;
use host_api::tch::{self, Device, Tensor};
use host_api::{BackendDecl, EncodeRequest, LoadRequest, ModelBox, ModelInfo};

use crate::observer::{timed, Observer, SILENT};
use crate::profile::{resolve_path, DeviceChoice, DtypeChoice, Profile, VaeTiling};
pub use crate::registry::detect_backend;
use crate::registry::{Entry, Registry};

pub fn device_of(choice: &DeviceChoice) -> Device {
    match choice {
        DeviceChoice::Auto => Device::cuda_if_available(),
        DeviceChoice::Cpu => Device::Cpu,
        DeviceChoice::Cuda(n) => Device::Cuda(*n),
    }
}

fn dtype_name(choice: DtypeChoice, device: Device) -> &'static str {
    match (choice, device) {
        (DtypeChoice::Fp32, _) | (DtypeChoice::Auto, Device::Cpu) => "fp32",
        (DtypeChoice::Fp16, _) | (DtypeChoice::Auto, _) => "fp16",
        (DtypeChoice::Bf16, _) => "bf16",
    }
}

/// How a profile wants its models loaded (part of what identifies a loaded model).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoadSettings {
    pub device: String,
    pub dtype: String,
    pub vae_tiling: String,
    pub vae_tile_size: u32,
    pub vae_tile_overlap: u32,
    /// `[model] prediction`, empty to detect.
    pub prediction: String,
    /// Seamless output: circular padding in every convolution.
    pub seamless: bool,
    /// `[model]` files for the backend, as `LoadRequest.options` text entries (key, path):
    /// one `text_encoder` per `text_encoders` entry, `t5_tokenizer`.
    pub model_files: Vec<(String, String)>,
    /// `[model] t5` (`cpu` or `device`), passed as the `t5` option; empty without one.
    pub t5: String,
    /// `[model] weight_dtype` (`fp8_e4m3fn` or `default`), passed as the `weight_dtype`
    /// option; empty without one.
    pub weight_dtype: String,
}

impl LoadSettings {
    pub fn from_profile(profile: &Profile) -> Result<Self> {
        let device = device_of(&profile.device);
        if matches!(device, Device::Cuda(_)) && !tch::Cuda::is_available() {
            bail!(
                "device {} requested but CUDA is not available here; set device = \"cpu\" or \"auto\"",
                device_name(device)
            );
        }
        let tiling = match profile.vae_tiling {
            VaeTiling::Auto => "auto",
            VaeTiling::On => "on",
            VaeTiling::Off => "off",
        };
        Ok(Self {
            device: device_name(device),
            dtype: dtype_name(profile.dtype, device).into(),
            vae_tiling: tiling.into(),
            vae_tile_size: profile.vae_tile_size,
            vae_tile_overlap: profile.vae_tile_overlap,
            prediction: profile
                .model
                .prediction
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default(),
            seamless: profile.tiling,
            model_files: profile
                .model
                .text_encoders
                .iter()
                .map(|p| ("text_encoder", p))
                .chain(
                    profile
                        .model
                        .t5_tokenizer
                        .iter()
                        .map(|p| ("t5_tokenizer", p)),
                )
                .map(|(k, p)| (k.to_string(), p.clone()))
                .collect(),
            t5: profile.model.t5.clone().unwrap_or_default(),
            // `"default"` is no key: one loaded model for both.
            weight_dtype: profile
                .model
                .weight_dtype
                .clone()
                .filter(|w| w != "default")
                .unwrap_or_default(),
        })
    }

    /// What a backend is told beside the checkpoint (`LoadRequest.options`, and
    /// `MemoryRequest.options` for the same model): [`Self::model_files`], `t5` and
    /// `weight_dtype`.
    pub fn backend_options(&self) -> Vec<host_api::OptionEntry> {
        let t5 = (!self.t5.is_empty()).then_some(("t5", &self.t5));
        let weight_dtype =
            (!self.weight_dtype.is_empty()).then_some(("weight_dtype", &self.weight_dtype));
        self.model_files
            .iter()
            .map(|(key, value)| (key.as_str(), value))
            .chain(t5)
            .chain(weight_dtype)
            .map(|(key, value)| host_api::OptionEntry {
                key: key.into(),
                value: host_api::OptionValue::Text(value.as_str().into()),
            })
            .collect()
    }

    /// [`Self::model_files`] looked up beside the profile first ([`resolve_path`]).
    pub fn resolve_files(mut self, base_dir: &Path) -> Self {
        for (_, path) in &mut self.model_files {
            *path = resolve_path(base_dir, path).to_string_lossy().into_owned();
        }
        self
    }
}

/// What identifies a loaded model's weights apart from its VAE: settings, checkpoint, merge
/// recipe.
type ModelKey = (LoadSettings, PathBuf, String);

/// A loaded model and the VAE it decodes with now.
struct Loaded {
    key: ModelKey,
    model: Rc<ModelBox>,
    info: ModelInfo,
    vae: Option<PathBuf>,
    /// Whether its backend can swap the VAE in place (else another VAE is another load).
    swaps: bool,
    /// The embedding files set on it and what it made of them.
    embeddings: Option<(Vec<host_api::EmbeddingSpec>, Vec<host_api::EmbeddingState>)>,
}

/// Loaded models, shared between passes, images and grid cells.
pub struct Models<'r> {
    registry: &'r Registry,
    /// Warnings already shown (a LoRA's stray layers), so each shows once per run.
    warned: HashSet<String>,
    loaded: Vec<Loaded>,
    /// Conditionings already encoded, by model, LoRA set and request: a prompt is encoded
    /// once per run, not once per image, pass or grid cell.
    encoded: HashMap<String, Rc<Vec<Vec<Tensor>>>>,
    /// A one-shot run's final image is being made: its last pass frees its model's text
    /// encoders once the prompts are encoded (nothing is encoded after that).
    pub final_image: bool,
    /// Each checkpoint's backend, detected once per job ([`detect_backend`] reads the file).
    backends: RefCell<HashMap<PathBuf, &'r Entry<BackendDecl>>>,
    /// Who hears about the run's progress and timings, and may stop it (the caller's).
    pub observer: &'r dyn Observer,
    /// Where live previews look for a TAESD decoder (the job's `vae_approx_dirs`).
    pub preview_dirs: Vec<PathBuf>,
}

impl<'r> Models<'r> {
    /// Models for a run nobody observes (see [`Self::observed`]).
    pub fn new(registry: &'r Registry) -> Self {
        Self::observed(registry, &SILENT)
    }

    /// Models for a run whose progress, timings and stopping go through `observer`.
    pub fn observed(registry: &'r Registry, observer: &'r dyn Observer) -> Self {
        Self {
            registry,
            warned: HashSet::new(),
            loaded: Vec::new(),
            encoded: HashMap::new(),
            final_image: false,
            backends: RefCell::new(HashMap::new()),
            observer,
            preview_dirs: Vec::new(),
        }
    }

    /// The backend whose family reads `checkpoint`: detected the first time a job asks, then
    /// remembered (until [`Self::trim`], between a server's requests).
    pub fn backend(&self, checkpoint: &Path) -> Result<&'r Entry<BackendDecl>> {
        if let Some(found) = self.backends.borrow().get(checkpoint) {
            return Ok(found);
        }
        let found = detect_backend(self.registry, checkpoint)?;
        log::debug!(
            "backend `{}` reads {}",
            found.decl.family,
            checkpoint.display()
        );
        self.backends
            .borrow_mut()
            .insert(checkpoint.to_path_buf(), found);
        Ok(found)
    }

    /// Prints each warning the first time it comes up.
    pub fn warn_once(&mut self, warnings: Vec<String>) {
        for warning in warnings {
            if self.warned.insert(warning.clone()) {
                eprintln!("warning: {warning}");
            }
        }
    }

    /// Makes `specs` the textual-inversion files `model` reads prompts with (set again only
    /// when they change); what the model made of each.
    pub fn set_embeddings(
        &mut self,
        model: &Rc<ModelBox>,
        specs: &[host_api::EmbeddingSpec],
    ) -> host_api::Result<Vec<host_api::EmbeddingState>> {
        let loaded = self.loaded.iter_mut().find(|l| Rc::ptr_eq(&l.model, model));
        let Some(loaded) = loaded else {
            return model.set_embeddings(specs);
        };
        if let Some((set, states)) = &loaded.embeddings {
            if set == specs {
                return Ok(states.clone());
            }
        }
        let states = model.set_embeddings(specs)?;
        loaded.embeddings = Some((specs.to_vec(), states.clone()));
        Ok(states)
    }

    /// `request` encoded by `model` with `loras` applied (the LoRAs set on it now), once per
    /// run: later calls with the same model, LoRA set, embedding set and request get the same
    /// tensors.
    pub fn encode(
        &mut self,
        model: &Rc<ModelBox>,
        loras: &[host_api::LoraSpec],
        request: &EncodeRequest,
    ) -> host_api::Result<Rc<Vec<Vec<Tensor>>>> {
        let embeddings = self
            .loaded
            .iter()
            .find(|l| Rc::ptr_eq(&l.model, model))
            .and_then(|l| l.embeddings.as_ref().map(|e| &e.0));
        let key = format!(
            "{:p}\u{0}{loras:?}\u{0}{embeddings:?}\u{0}{:?}\u{0}{}\u{0}{}x{}\u{0}{:?}",
            Rc::as_ptr(model),
            request.prompts,
            request.clip_skip,
            request.width,
            request.height,
            request.options
        );
        if let Some(found) = self.encoded.get(&key) {
            return Ok(found.clone());
        }
        log::debug!(
            "encoding {} prompt(s) at {}x{}",
            request.prompts.len(),
            request.width,
            request.height
        );
        let conds = Rc::new(timed(self.observer, "text encode", || {
            model.encode_prompts(request)
        })?);
        self.encoded.insert(key, conds.clone());
        Ok(conds)
    }

    /// The model a pass runs (its checkpoint, VAE and merge), loaded once.
    pub fn for_pass(
        &mut self,
        settings: &LoadSettings,
        plan: &crate::plan::PassPlan<'_>,
    ) -> Result<(Rc<ModelBox>, ModelInfo)> {
        self.get(settings, &plan.checkpoint, plan.vae.as_deref(), &plan.merge)
    }

    /// The model of `checkpoint` (or of the merge whose first input it is), loaded once.
    pub fn get(
        &mut self,
        settings: &LoadSettings,
        checkpoint: &Path,
        vae: Option<&Path>,
        merge: &[(PathBuf, f64)],
    ) -> Result<(Rc<ModelBox>, ModelInfo)> {
        let recipe: Vec<String> = merge
            .iter()
            .map(|(p, w)| format!("{}:{w}", p.display()))
            .collect();
        let key = (settings.clone(), checkpoint.to_path_buf(), recipe.join("+"));
        let vae = vae.map(Path::to_path_buf);
        if let Some(i) = self
            .loaded
            .iter()
            .position(|l| l.key == key && l.vae == vae)
        {
            // The most recently used goes last ([`Models::trim`] keeps the last ones).
            let found = self.loaded.remove(i);
            let hit = (found.model.clone(), found.info.clone());
            self.loaded.push(found);
            return Ok(hit);
        }
        // A per-pass VAE: swapped into the loaded model, not a second load of the checkpoint.
        if let Some(found) = self.loaded.iter_mut().find(|l| l.key == key && l.swaps) {
            match found
                .model
                .set_vae(vae.as_deref().map(|v| v.to_string_lossy()).as_deref())
            {
                Ok(()) => {
                    log::debug!(
                        "VAE swapped to {vae:?} in the loaded {}",
                        checkpoint.display()
                    );
                    found.vae = vae;
                    return Ok((found.model.clone(), found.info.clone()));
                }
                Err(e)
                    if e.0.contains("cannot change the VAE") || e.0.contains("keeps the VAE") =>
                {
                    found.swaps = false
                }
                Err(e) => bail!("{e}"),
            }
        }
        let backend = self.backend(checkpoint)?;
        log::info!("loading checkpoint {} (VAE {vae:?})", checkpoint.display());
        let request = LoadRequest {
            checkpoint: checkpoint.to_string_lossy().as_ref().into(),
            vae: vae
                .as_ref()
                .map(|v| v.to_string_lossy().as_ref().into())
                .into(),
            device: settings.device.as_str().into(),
            dtype: settings.dtype.as_str().into(),
            vae_tiling: settings.vae_tiling.as_str().into(),
            vae_tile_size: settings.vae_tile_size,
            vae_tile_overlap: settings.vae_tile_overlap,
            prediction: settings.prediction.as_str().into(),
            seamless: settings.seamless,
            merge: merge
                .iter()
                .map(|(path, weight)| host_api::MergeInput {
                    path: path.to_string_lossy().as_ref().into(),
                    weight: *weight,
                })
                .collect(),
            options: settings.backend_options().into(),
        };
        // A backend's own errors name the checkpoint; a panic needs the plugin named.
        let plugin = |e: host_api::Error| match e.0.starts_with("panicked") {
            true => anyhow!(
                "{e} (backend `{}`, plugin {})",
                backend.decl.family,
                backend.file.display()
            ),
            false => anyhow!("{e}"),
        };
        let model =
            timed(self.observer, "load", || backend.decl.run_load(&request)).map_err(plugin)?;
        let info = model.info().map_err(plugin)?;
        let model = Rc::new(model);
        self.loaded.push(Loaded {
            key,
            model: model.clone(),
            info: info.clone(),
            vae,
            swaps: true,
            embeddings: None,
        });
        Ok((model, info))
    }

    /// Nothing but decoding follows: every loaded model frees what its VAE decoder does not
    /// need, the encoded prompts go, and the freed pages go back to the system. A backend that
    /// cannot release keeps its model whole (decoding works either way).
    pub fn release_for_decode(&mut self) {
        self.encoded.clear();
        for loaded in &self.loaded {
            if let Err(e) = loaded
                .model
                .release(host_api::backend::release::ALL_BUT_DECODER)
            {
                log::debug!("{}: kept whole: {e}", loaded.key.1.display());
            }
        }
        return_free_pages();
    }

    /// Between a server's requests: encoded prompts, detected backends and the embedding sets
    /// are forgotten (each request has its own; a file may change between them) and only the
    /// `keep` most recently used checkpoints stay loaded.
    pub fn trim(&mut self, keep: usize) {
        self.encoded.clear();
        self.backends.get_mut().clear();
        let excess = self.loaded.len().saturating_sub(keep);
        self.loaded.drain(..excess);
        // Embedding files are read again by the next request (one may have been replaced).
        for loaded in &mut self.loaded {
            loaded.embeddings = None;
        }
    }

    /// The checkpoints loaded now.
    pub fn loaded_checkpoints(&self) -> Vec<PathBuf> {
        self.loaded.iter().map(|l| l.key.1.clone()).collect()
    }

    /// The info of a model already loaded for `checkpoint`, if any.
    pub fn loaded_info(&self, checkpoint: &Path) -> Option<&ModelInfo> {
        self.loaded
            .iter()
            .find(|l| l.key.1 == checkpoint)
            .map(|l| &l.info)
    }
}

/// Hands the allocator's free pages back to the system (glibc's `malloc_trim`): after models
/// were freed, libtorch's many mid-sized parameter blocks sit free inside the heap, where
/// the allocator would otherwise keep them resident.
pub fn return_free_pages() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// What a checkpoint is: read from its headers by the family's tools table, or, for a backend
/// without one (host API's optional `BackendTools`), what its model says once loaded.
pub fn checkpoint_info(
    models: &mut Models<'_>,
    settings: &LoadSettings,
    checkpoint: &Path,
    vae: Option<&Path>,
) -> Result<host_api::CheckpointInfo> {
    let backend = models.backend(checkpoint)?;
    if backend.decl.has_tools() {
        return backend
            .decl
            .run_inspect(checkpoint, false)
            .map_err(|e| anyhow!("{e}"));
    }
    // With the pass's VAE: the model a run loads next (a split-file model has no VAE of its own).
    let (_, info) = models.get(settings, checkpoint, vae, &[])?;
    Ok(host_api::CheckpointInfo {
        family: info.family.clone(),
        family_name: info.family.clone(),
        prediction: info.prediction.clone(),
        prediction_source: "the loaded model".into(),
        latent_channels: info.latent_channels,
        vae_scale_factor: info.vae_scale_factor,
        text_encoders: info.text_encoders.clone(),
        default_size: info.default_size,
        ..Default::default()
    })
}
