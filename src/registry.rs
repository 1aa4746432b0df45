//! Plugin discovery and loading: every dylib in the plugin folders is checked (permissions,
//! optional sha256 pin, abi_stable layout, handshake) and its names are registered; a refused
//! plugin is reported with its file and reason while the others load.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use abi_stable::library::lib_header_from_path;
use anyhow::{anyhow, Result};
use host_api::{BackendDecl, Handshake, PluginRef, SamplerDecl, ScheduleDecl, UpscalerDecl};

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
                self.name.as_str()
            }
            fn aliases(&self) -> Vec<&str> {
                self.aliases.iter().map(|a| a.as_str()).collect()
            }
        }
    };
}
named!(SamplerDecl);
named!(ScheduleDecl);
named!(UpscalerDecl);

impl Named for BackendDecl {
    fn name(&self) -> &str {
        self.family.as_str()
    }
    fn aliases(&self) -> Vec<&str> {
        vec![]
    }
}

/// The folders searched, in order: profile `plugin_dirs`, `$HIRESFIX_PLUGIN_PATH`, `plugins/`
/// beside the binary, and the binary's own folder when it is a cargo target folder.
pub fn search_dirs(profile_dirs: &[PathBuf]) -> Vec<(PathBuf, bool)> {
    let mut dirs: Vec<(PathBuf, bool)> = profile_dirs.iter().map(|d| (d.clone(), true)).collect();
    if let Some(paths) = std::env::var_os("HIRESFIX_PLUGIN_PATH") {
        dirs.extend(
            std::env::split_paths(&paths)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| (p, true)),
        );
    }
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

#[cfg(unix)]
fn writable_by_others(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o022 != 0)
        .unwrap_or(false)
}

#[cfg(not(unix))]
fn writable_by_others(_: &Path) -> bool {
    false
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
                if !seen.insert(name.clone()) {
                    log::debug!("{} shadowed by an earlier plugin folder", file.display());
                    continue;
                }
                if let Err(reason) = registry.load_file(&file, pins.get(&name)) {
                    if reason.is_empty() {
                        log::debug!("{} is not a hiresfix plugin", file.display());
                    } else {
                        registry.refused.push(Refusal { file, reason });
                    }
                }
            }
        }
        registry
    }

    /// Loads one dylib; `Err("")` means "not a plugin at all" (skipped quietly).
    fn load_file(&mut self, file: &Path, pin: Option<&String>) -> Result<(), String> {
        if writable_by_others(file) {
            return Err("group- or world-writable; run `chmod go-w` on it".into());
        }
        if let Some(expected) = pin {
            let actual = sha256_hex(file).map_err(|e| format!("cannot hash: {e}"))?;
            if !actual.eq_ignore_ascii_case(expected) {
                return Err(format!(
                    "sha256 {actual} does not match the profile's pin {expected}"
                ));
            }
        }
        if !has_root_module(file)? {
            return Err(String::new());
        }
        let header = lib_header_from_path(file).map_err(|e| library_error(&e))?;
        let module: PluginRef = header
            .init_root_module::<PluginRef>()
            .map_err(|e| library_error(&e))?;
        let handshake = (module.handshake())();
        handshake.check_against(&Handshake::current())?;
        let mut names = Vec::new();
        let file = file.to_path_buf();
        for decl in (module.samplers())() {
            names.push(("sampler".into(), decl.name.to_string()));
            self.samplers.push(Entry {
                decl,
                file: file.clone(),
            });
        }
        for decl in (module.schedules())() {
            names.push(("schedule".into(), decl.name.to_string()));
            self.schedules.push(Entry {
                decl,
                file: file.clone(),
            });
        }
        for decl in (module.upscalers())() {
            names.push(("upscaler".into(), decl.name.to_string()));
            self.upscalers.push(Entry {
                decl,
                file: file.clone(),
            });
        }
        for decl in (module.backends())() {
            names.push(("backend".into(), decl.family.to_string()));
            self.backends.push(Entry {
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

/// abi_stable's errors print whole type layouts; keep the verdicts and say what to do.
fn library_error(e: &abi_stable::library::LibraryError) -> String {
    use abi_stable::library::LibraryError;
    let text = e
        .to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    match e {
        LibraryError::AbiInstability(_) => {
            let verdicts: Vec<&str> = text.split("Error:").skip(1).map(|v| v.trim()).collect();
            format!(
                "its plugin interface layout differs from this host's ({}); rebuild it against this host's host-api",
                verdicts.join("; ")
            )
        }
        LibraryError::IncompatibleVersionNumber { .. } => {
            format!(
                "incompatible host-api version ({text}); rebuild it against this host's host-api"
            )
        }
        _ => text,
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
    Err(anyhow!(
        "unknown {kind} `{wanted}`; available: {}",
        available(entries)
    ))
}

pub fn available<D: Named>(entries: &[Entry<D>]) -> String {
    if entries.is_empty() {
        return "none (no plugin of this kind was found; see `hiresfix plugins`)".into();
    }
    entries
        .iter()
        .map(|e| match e.decl.aliases().first() {
            Some(display) => format!("{} ({display})", e.decl.name()),
            None => e.decl.name().to_owned(),
        })
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
