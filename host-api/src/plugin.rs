//! The root module every plugin dylib exports, and the load-time handshake.
use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::backend_decl::BackendFfiRef;
use crate::patch::PatchFfiRef;
use crate::sampler::SamplerFfiRef;
use crate::schedule::ScheduleFfiRef;
use crate::upscaler::UpscalerFfiRef;

/// The host-api version plugins are built against.
pub const HOST_API_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The libtorch version this crate was compiled against (from the build script).
pub const TORCH_VERSION: &str = env!("HIRESFIX_TORCH_VERSION");
/// Whether that libtorch uses the C++11 string ABI.
pub const TORCH_CXX11_ABI: bool = matches!(env!("HIRESFIX_TORCH_CXX11_ABI").as_bytes(), b"1");

/// What a plugin was built with; the host refuses a plugin whose handshake differs from its own.
#[repr(C)]
#[derive(StableAbi, Clone, Debug, PartialEq)]
pub struct Handshake {
    pub host_api_version: RString,
    pub torch_version: RString,
    pub torch_cxx11_abi: bool,
}

impl Handshake {
    pub fn current() -> Self {
        Self {
            host_api_version: HOST_API_VERSION.into(),
            torch_version: TORCH_VERSION.into(),
            torch_cxx11_abi: TORCH_CXX11_ABI,
        }
    }

    /// `Err(reason)` when a plugin with handshake `self` cannot run in a host with `host`:
    /// another major host-api, a newer minor than the host's (it may call methods this host
    /// lacks), or another libtorch. A plugin of an older or equal 1.x minor loads.
    pub fn check_against(&self, host: &Handshake) -> Result<(), String> {
        let (plugin_api, host_api) = (
            self.host_api_version.as_str(),
            host.host_api_version.as_str(),
        );
        let (Some(plugin), Some(ours)) = (major_minor(plugin_api), major_minor(host_api)) else {
            return Err(format!(
                "reports host-api `{}`, not a version number; rebuild it against host-api {host_api}",
                crate::error::first_line(plugin_api)
            ));
        };
        if plugin.0 != ours.0 {
            return Err(format!(
                "built against host-api {plugin_api}, this host speaks host-api {host_api} (another major version); rebuild the plugin against host-api {}.x",
                ours.0
            ));
        }
        if plugin.1 > ours.1 {
            return Err(format!(
                "built against host-api {plugin_api}, newer than this host's host-api {host_api}; update hiresfix, or build the plugin against host-api {}.{} or older",
                ours.0, ours.1
            ));
        }
        if self.torch_version != host.torch_version || self.torch_cxx11_abi != host.torch_cxx11_abi
        {
            return Err(format!(
                "built against libtorch {} (C++11 ABI {}), this host runs libtorch {} (C++11 ABI {}); rebuild the plugin with torch=={}",
                self.torch_version, self.torch_cxx11_abi, host.torch_version, host.torch_cxx11_abi, host.torch_version
            ));
        }
        Ok(())
    }
}

/// `(major, minor)` of a `major.minor.patch` version.
fn major_minor(version: &str) -> Option<(u64, u64)> {
    let mut parts = version.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub extern "C" fn current_handshake() -> Handshake {
    Handshake::current()
}

/// The root module of a plugin dylib: every name of every kind it registers. Host API 1.0's
/// fields end at `patches`; a plugin kind added in 1.x is appended and read as an `Option`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRef)))]
#[sabi(missing_field(option))]
pub struct PluginModule {
    pub handshake: extern "C" fn() -> Handshake,
    pub samplers: extern "C" fn() -> RVec<SamplerFfiRef>,
    pub schedules: extern "C" fn() -> RVec<ScheduleFfiRef>,
    pub upscalers: extern "C" fn() -> RVec<UpscalerFfiRef>,
    pub backends: extern "C" fn() -> RVec<BackendFfiRef>,
    #[sabi(last_prefix_field)]
    pub patches: extern "C" fn() -> RVec<PatchFfiRef>,
}

impl RootModule for PluginRef {
    declare_root_module_statics! {PluginRef}
    const BASE_NAME: &'static str = "hiresfix_plugin";
    const NAME: &'static str = "hiresfix_plugin";
    // abi_stable refuses another major itself; the minor rule is the handshake's.
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The symbol abi_stable looks up in a dylib (its `ROOT_MODULE_LOADER_NAME`); spelled out because
/// `export_plugin!` must name it in an attribute. A test keeps the two equal.
#[doc(hidden)]
#[macro_export]
macro_rules! __root_symbol {
    () => {
        "_1as_0lib_1header_0root_bmodule_bloader"
    };
}

/// Exports a plugin's root module. A plugin crate depends on `host-api` alone:
/// ```ignore
/// host_api::export_plugin! { samplers: [Euler, EulerAncestral] }
/// ```
/// Optional sections, in this order: `handshake: path_to_fn,` (tests only), `samplers`,
/// `schedules`, `upscalers`, `backends` (each implementing `Backend`),
/// `backends_with_tools` (each also implementing `BackendTools`), `patches`.
#[macro_export]
macro_rules! export_plugin {
    (
        $(handshake: $handshake:path,)?
        $(samplers: [$($sampler:ty),* $(,)?] $(,)?)?
        $(schedules: [$($schedule:ty),* $(,)?] $(,)?)?
        $(upscalers: [$($upscaler:ty),* $(,)?] $(,)?)?
        $(backends: [$($backend:ty),* $(,)?] $(,)?)?
        $(backends_with_tools: [$($tooled:ty),* $(,)?] $(,)?)?
        $(patches: [$($patch:ty),* $(,)?] $(,)?)?
    ) => {
        #[doc(hidden)]
        pub mod __hiresfix_plugin_root {
            #[allow(unused_imports)]
            use super::*;
            use $crate::abi_stable::std_types::RVec;
            use $crate::abi_stable::library::{LibHeader, RootModuleResult, CheckTypeLayout, __call_root_module_loader};
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;

            extern "C" fn samplers() -> RVec<$crate::sampler::SamplerFfiRef> {
                RVec::from(vec![$($($crate::sampler::SamplerFfi::of::<$sampler>()),*)?])
            }
            extern "C" fn schedules() -> RVec<$crate::schedule::ScheduleFfiRef> {
                RVec::from(vec![$($($crate::schedule::ScheduleFfi::of::<$schedule>()),*)?])
            }
            extern "C" fn upscalers() -> RVec<$crate::upscaler::UpscalerFfiRef> {
                RVec::from(vec![$($($crate::upscaler::UpscalerFfi::of::<$upscaler>()),*)?])
            }
            extern "C" fn backends() -> RVec<$crate::backend_decl::BackendFfiRef> {
                #[allow(unused_mut)]
                let mut all: Vec<$crate::backend_decl::BackendFfiRef> = Vec::new();
                $($(all.push($crate::backend_decl::BackendFfi::of::<$backend>());)*)?
                $($(all.push($crate::backend_decl::BackendFfi::with_tools::<$tooled>());)*)?
                RVec::from(all)
            }
            extern "C" fn patches() -> RVec<$crate::patch::PatchFfiRef> {
                RVec::from(vec![$($($crate::patch::PatchFfi::of::<$patch>()),*)?])
            }

            pub fn root() -> $crate::PluginRef {
                $crate::PluginModule {
                    handshake: $crate::export_plugin!(@handshake $($handshake)?),
                    samplers,
                    schedules,
                    upscalers,
                    backends,
                    patches,
                }
                .leak_into_prefix()
            }

            extern "C" fn erased() -> RootModuleResult {
                __call_root_module_loader(root)
            }

            #[export_name = $crate::__root_symbol!()]
            pub static HEADER: LibHeader =
                unsafe { LibHeader::from_constructor::<$crate::PluginRef>(erased, CheckTypeLayout::Yes) };
        }
    };
    (@handshake) => { $crate::plugin::current_handshake };
    (@handshake $handshake:path) => { $handshake };
}

#[cfg(test)]
mod tests {
    use super::Handshake;

    fn speaking(version: &str) -> Handshake {
        Handshake {
            host_api_version: version.into(),
            ..Handshake::current()
        }
    }

    #[test]
    fn an_older_or_equal_minor_of_the_same_major_loads() {
        for (plugin, host) in [("1.0.0", "1.0.0"), ("1.0.0", "1.3.2"), ("1.2.5", "1.3.0")] {
            assert_eq!(
                speaking(plugin).check_against(&speaking(host)),
                Ok(()),
                "{plugin} in {host}"
            );
        }
    }

    #[test]
    fn a_newer_minor_or_another_major_is_refused_naming_both_versions() {
        let newer = speaking("1.4.0")
            .check_against(&speaking("1.3.0"))
            .unwrap_err();
        assert!(
            newer.contains("1.4.0") && newer.contains("1.3.0") && newer.contains("newer"),
            "{newer}"
        );
        for (plugin, host) in [("2.0.0", "1.3.0"), ("0.6.0", "1.0.0")] {
            let e = speaking(plugin).check_against(&speaking(host)).unwrap_err();
            assert!(
                e.contains(plugin) && e.contains(host) && e.contains("another major"),
                "{e}"
            );
        }
        let garbage = speaking("one.two")
            .check_against(&speaking("1.0.0"))
            .unwrap_err();
        assert!(garbage.contains("not a version number"), "{garbage}");
    }
}
