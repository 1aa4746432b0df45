//! Plugin discovery and loading: every dylib in the plugin folders is checked (permissions,
//! optional sha256 pin, abi_stable layout, handshake) and its names are registered; a refused
//! plugin is reported with its file and reason while the others load.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use abi_stable::library::lib_header_from_path;
use anyhow::{anyhow, bail, Result};
use host_api::{
    BackendDecl, Handshake, PatchDecl, PluginRef, SamplerDecl, ScheduleDecl, UpscalerDecl,
};

/// A registered name and the file it came from.
pub struct Entry<D> {
    pub decl: D,
    pub file: PathBuf,
}

pub struct Refusal {
    pub file: PathBuf,
    pub reason: String,
}

pub struct LoadedPlugin {
    pub file: PathBuf,
    pub handshake: Handshake,
    pub names: Vec<(String, String)>,
}

#[derive(Default)]
pub struct Registry {
    pub plugins: Vec<LoadedPlugin>,
    pub refused: Vec<Refusal>,
    pub samplers: Vec<Entry<SamplerDecl>>,
    pub schedules: Vec<Entry<ScheduleDecl>>,
    pub upscalers: Vec<Entry<UpscalerDecl>>,
    pub backends: Vec<Entry<BackendDecl>>,
    pub patches: Vec<Entry<PatchDecl>>,
}

/// Names and aliases of one kind, for lookup and "available: ..." lists.
pub trait Named {
    fn name(&self) -> &str;
    fn aliases(&self) -> Vec<&str>;
}

macro_rules! named {
    ($t:ty) => {
        impl Named for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn aliases(&self) -> Vec<&str> {
                self.aliases.iter().map(String::as_str).collect()
            }
        }
    };
}
named!(SamplerDecl);
named!(ScheduleDecl);
named!(UpscalerDecl);
named!(PatchDecl);

impl Named for BackendDecl {
    fn name(&self) -> &str {
        &self.family
    }
    fn aliases(&self) -> Vec<&str> {
        vec![]
    }
}

/// The folders of a `$HIRESFIX_*_PATH` variable (`:`-separated; empty entries skipped).
pub fn env_dirs(var: &str) -> Vec<PathBuf> {
    std::env::var_os(var)
        .map(|paths| {
            std::env::split_paths(&paths)
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// A profile's folder list (relative entries against `base_dir`), then `$var`'s folders.
pub fn profile_dirs(list: &[PathBuf], base_dir: &Path, var: &str) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = list
        .iter()
        .map(|d| match d.is_absolute() {
            true => d.clone(),
            false => base_dir.join(d),
        })
        .collect();
    dirs.extend(env_dirs(var));
    dirs
}

/// The folders searched, in order: profile `plugin_dirs`, `$HIRESFIX_PLUGIN_PATH`, `plugins/`
/// beside the binary, and the binary's own folder when it is a cargo target folder.
pub fn search_dirs(profile_dirs: &[PathBuf]) -> Vec<(PathBuf, bool)> {
    let mut dirs: Vec<(PathBuf, bool)> = profile_dirs.iter().map(|d| (d.clone(), true)).collect();
    dirs.extend(
        env_dirs("HIRESFIX_PLUGIN_PATH")
            .into_iter()
            .map(|p| (p, true)),
    );
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push((exe_dir.join("plugins"), true));
        // `cargo build` leaves the workspace's plugins beside the binary: use them in place.
        let exe_dir = if exe_dir.ends_with("deps") {
            exe_dir.parent().map(Path::to_path_buf).unwrap_or(exe_dir)
        } else {
            exe_dir
        };
        if exe_dir.join(".fingerprint").is_dir() {
            dirs.push((exe_dir, false));
        }
    }
    dirs
}

fn is_dylib(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

/// Hex sha256 of a file (plugin pins, A1111 model hash).
pub fn sha256_hex(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    let mut file = std::fs::File::open(path)?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Why a plugin file may not be trusted: it or its folder can be written by someone other than
/// its owner, or it belongs to another user (root excepted).
#[cfg(unix)]
fn untrusted(file: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let writable = |m: &std::fs::Metadata| m.mode() & 0o022 != 0;
    let meta = std::fs::metadata(file).ok()?;
    if writable(&meta) {
        return Some("group- or world-writable; run `chmod go-w` on it".into());
    }
    let folder = file.parent().and_then(|d| std::fs::metadata(d).ok());
    if folder.as_ref().is_some_and(writable) {
        return Some("its folder is group- or world-writable, so anyone could replace it; run `chmod go-w` on the folder".into());
    }
    // SAFETY: getuid has no preconditions and cannot fail.
    let me = unsafe { libc::getuid() };
    if meta.uid() != me && meta.uid() != 0 {
        return Some(format!(
            "owned by another user (uid {}); plugins must belong to you or root",
            meta.uid()
        ));
    }
    None
}

#[cfg(not(unix))]
fn untrusted(_: &Path) -> Option<String> {
    None
}

/// Whether the file exports a hiresfix/abi_stable root module at all (cheap probe).
fn has_root_module(path: &Path) -> Result<bool, String> {
    // SAFETY: loading runs the library's initialisers; plugin folders are trusted by the user,
    // and group/world-writable files were refused before this point.
    let lib =
        unsafe { libloading::Library::new(path) }.map_err(|e| format!("cannot be loaded: {e}"))?;
    let symbol = abi_stable::library::ROOT_MODULE_LOADER_NAME_WITH_NUL;
    // SAFETY: only the symbol's presence is checked; it is not used through this handle.
    let found = unsafe { lib.get::<*const u8>(symbol.as_bytes()) }.is_ok();
    std::mem::forget(lib); // never unload: abi_stable keeps libraries loaded for the process
    Ok(found)
}

impl Registry {
    /// `e` plus, when plugins were refused, which ones and why (the name the user asked for
    /// may be in one of them).
    pub fn with_refusals(&self, e: anyhow::Error) -> anyhow::Error {
        let Some(first) = self.refused.first() else {
            return e;
        };
        let name = first
            .file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let more = match self.refused.len() {
            1 => String::new(),
            n => format!(" and {} more, see `hiresfix plugins`", n - 1),
        };
        anyhow!("{e} (refused plugin {name}: {}{more})", first.reason)
    }

    pub fn load(profile_dirs: &[PathBuf], pins: &BTreeMap<String, String>) -> Self {
        let mut registry = Registry::default();
        let mut seen = std::collections::HashSet::new();
        for (dir, explicit) in search_dirs(profile_dirs) {
            let Ok(read) = std::fs::read_dir(&dir) else {
                continue;
            };
            let mut files: Vec<PathBuf> = read
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_dylib(p))
                .collect();
            files.sort();
            for file in files {
                let Some(name) = file.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                    continue;
                };
                // In a cargo target folder only the workspace's own plugins are taken.
                if !explicit && !name.starts_with("libhiresfix_") && !name.starts_with("hiresfix_")
                {
                    continue;
                }
                if seen.contains(&name) {
                    log::debug!("{} shadowed by an earlier plugin folder", file.display());
                    continue;
                }
                // Named before it is opened: a library that crashes the process while loading
                // is then the last line of `RUST_LOG=debug`.
                log::debug!("opening plugin {}", file.display());
                match registry.load_file(&file, pins.get(&name)) {
                    // Only a plugin that loaded claims its name: a refused file in an earlier
                    // folder does not hide a good one of the same name in a later folder.
                    Ok(()) => {
                        seen.insert(name);
                    }
                    Err(reason) if reason.is_empty() => {
                        log::debug!("{} is not a hiresfix plugin", file.display());
                    }
                    Err(reason) => registry.refused.push(Refusal { file, reason }),
                }
            }
        }
        registry
    }

    /// Loads one dylib; `Err("")` means "not a plugin at all" (skipped quietly).
    fn load_file(&mut self, file: &Path, pin: Option<&String>) -> Result<(), String> {
        if let Some(reason) = untrusted(file) {
            return Err(reason);
        }
        if let Some(expected) = pin {
            let actual = sha256_hex(file).map_err(|e| format!("cannot hash: {e}"))?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(format!(
                    "sha256 {}… does not match the profile's pin {expected}",
                    &actual[..12]
                ));
            }
        }
        if !has_root_module(file)? {
            return Err(String::new());
        }
        let header = lib_header_from_path(file).map_err(|e| library_error(&e))?;
        let module = root_module(header)?;
        let handshake = (module.handshake())();
        handshake.check_against(&Handshake::current())?;
        let mut names = Vec::new();
        let file = file.to_path_buf();
        for decl in (module.samplers())().into_iter().map(SamplerDecl::from_ffi) {
            names.push(("sampler".into(), decl.name.to_string()));
            self.samplers.push(Entry {
                decl,
                file: file.clone(),
            });
        }
        for decl in (module.schedules())()
            .into_iter()
            .map(ScheduleDecl::from_ffi)
        {
            names.push(("schedule".into(), decl.name.to_string()));
            self.schedules.push(Entry {
                decl,
                file: file.clone(),
            });
        }
        for decl in (module.upscalers())()
            .into_iter()
            .map(UpscalerDecl::from_ffi)
        {
            names.push(("upscaler".into(), decl.name.to_string()));
            self.upscalers.push(Entry {
                decl,
                file: file.clone(),
            });
        }
        for decl in (module.backends())().into_iter().map(BackendDecl::from_ffi) {
            names.push(("backend".into(), decl.family.to_string()));
            self.backends.push(Entry {
                decl,
                file: file.clone(),
            });
        }
        for decl in (module.patches())().into_iter().map(PatchDecl::from_ffi) {
            names.push(("patch".into(), decl.name.to_string()));
            self.patches.push(Entry {
                decl,
                file: file.clone(),
            });
        }
        self.plugins.push(LoadedPlugin {
            file,
            handshake,
            names,
        });
        Ok(())
    }
}

/// The plugin's root module once its layout is checked as host-api's rule has it: a plugin of
/// an older 1.x lacks the prefix fields appended since (read as `None`), so the plugin's
/// layout is the expected one and the host's may extend it. abi_stable's own check runs the
/// other way (a library may extend the loader's layout), which would refuse every older plugin
/// once a method is appended; a newer minor is refused by the handshake instead.
fn root_module(header: &abi_stable::library::LibHeader) -> Result<PluginRef, String> {
    use abi_stable::StableAbi;
    let plugin = header
        .layout()
        .ok_or("it was exported without a type layout (abi_stable's unsafe_no_layout_constant); rebuild it with host_api::export_plugin!")?;
    // A fresh checker state per plugin: abi_stable's process-wide map of prefix types would
    // hold an older plugin's shorter table against the next plugin's full one.
    let globals = abi_stable::abi_stability::abi_checking::CheckingGlobals::new();
    abi_stable::abi_stability::abi_checking::check_layout_compatibility_with_globals(
        plugin,
        PluginRef::LAYOUT,
        &globals,
    )
    .map_err(|e| {
        let text = e
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        layout_error(&text)
    })?;
    // SAFETY: the layout was checked just above (the plugin's against the host's).
    unsafe { header.init_root_module_with_unchecked_layout::<PluginRef>() }
        .map_err(|e| library_error(&e))
}

fn layout_error(text: &str) -> String {
    let verdicts: Vec<&str> = text.split("Error:").skip(1).map(|v| v.trim()).collect();
    format!(
        "its plugin interface layout differs from this host's ({}); rebuild it against this host's host-api",
        verdicts.join("; ")
    )
}

/// abi_stable's errors print whole type layouts; keep the verdicts and say what to do.
fn library_error(e: &abi_stable::library::LibraryError) -> String {
    use abi_stable::library::LibraryError;
    let text = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match e {
        LibraryError::AbiInstability(_) => layout_error(&text),
        LibraryError::IncompatibleVersionNumber {
            expected_version,
            actual_version,
            ..
        } => format!(
            "built against host-api {actual_version}, this host speaks host-api {expected_version} (another major version); rebuild the plugin against host-api {}.x",
            expected_version.major
        ),
        _ => text,
    }
}

/// The registry a profile runs with: its `plugin_dirs` (relative ones beside the profile, in
/// `base`), then the default folders.
pub fn registry_for(profile: &crate::profile::Profile, base: &Path) -> Registry {
    let dirs: Vec<PathBuf> = profile
        .plugin_dirs
        .iter()
        .map(|d| match d.is_absolute() {
            true => d.clone(),
            false => base.join(d),
        })
        .collect();
    Registry::load(&dirs, &profile.plugin_sha256)
}

/// After a command succeeded: the plugins that were refused (a failure names the one it
/// needed in its own single line instead).
pub fn warn_refused(registry: &Registry) {
    for refusal in &registry.refused {
        eprintln!(
            "warning: plugin {} refused: {}",
            refusal.file.display(),
            refusal.reason
        );
    }
}

/// Finds `wanted` among names and aliases (case-insensitive); the error lists what exists.
pub fn find<'a, D: Named>(
    entries: &'a [Entry<D>],
    wanted: &str,
    kind: &str,
) -> Result<&'a Entry<D>> {
    let w = wanted.trim().to_lowercase();
    if let Some(e) = entries.iter().find(|e| e.decl.name().to_lowercase() == w) {
        return Ok(e);
    }
    if let Some(e) = entries
        .iter()
        .find(|e| e.decl.aliases().iter().any(|a| a.to_lowercase() == w))
    {
        return Ok(e);
    }
    let names = entries
        .iter()
        .flat_map(|e| std::iter::once(e.decl.name()).chain(e.decl.aliases()));
    let close = |near: &&str| {
        let distance = crate::profile::edit_distance(&w, &near.to_lowercase());
        distance <= (w.chars().count() / 3).max(2)
    };
    let hint = match crate::profile::nearest(wanted, names).filter(close) {
        Some(near) => format!(" — did you mean `{near}`?"),
        None => ";".to_owned(),
    };
    Err(anyhow!(
        "unknown {kind} `{wanted}`{hint} available: {}",
        available(entries)
    ))
}

/// The ids of `entries` (their A1111 names are accepted too but not listed: one line).
pub fn available<D: Named>(entries: &[Entry<D>]) -> String {
    if entries.is_empty() {
        return "none (no plugin of this kind was found; see `hiresfix plugins`)".into();
    }
    entries
        .iter()
        .map(|e| e.decl.name())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The A1111 display name of a decl (its first alias), else its id.
pub fn display_name<D: Named>(decl: &D) -> String {
    decl.aliases()
        .first()
        .map(|s| s.to_string())
        .unwrap_or_else(|| decl.name().to_owned())
}

/// The backend whose family reads `checkpoint`.
pub fn detect_backend<'r>(
    registry: &'r Registry,
    checkpoint: &Path,
) -> Result<&'r Entry<host_api::BackendDecl>> {
    if !checkpoint.exists() {
        bail!(
            "checkpoint {} not found; check [model] checkpoint in the profile",
            checkpoint.display()
        );
    }
    if registry.backends.is_empty() {
        let e = anyhow!("no model backend plugin was found; see `hiresfix plugins`");
        return Err(registry.with_refusals(e));
    }
    let mut refusal = None;
    for entry in &registry.backends {
        match entry.decl.run_detect(checkpoint) {
            Ok(Some(_)) => return Ok(entry),
            Ok(None) => continue,
            Err(e) => refusal = refusal.or(Some(e)),
        }
    }
    if let Some(e) = refusal {
        bail!("{e}");
    }
    let families: Vec<&str> = registry
        .backends
        .iter()
        .map(|b| b.decl.family.as_str())
        .collect();
    bail!(
        "no backend reads {} (families available: {})",
        checkpoint.display(),
        families.join(", ")
    )
}
