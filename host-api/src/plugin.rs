//! The root module every plugin dylib exports, and the load-time handshake.
use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RString, RVec};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

use crate::backend::BackendDecl;
use crate::patch::PatchDecl;
use crate::sampler::SamplerDecl;
use crate::schedule::ScheduleDecl;
use crate::upscaler::UpscalerDecl;

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

    /// `Err(reason)` when a plugin with handshake `self` cannot run in a host with `host`.
    pub fn check_against(&self, host: &Handshake) -> Result<(), String> {
        let minor = |v: &str| v.split('.').take(2).collect::<Vec<_>>().join(".");
        if minor(&self.host_api_version) != minor(&host.host_api_version) {
            return Err(format!(
                "built against host-api {}, this host speaks {}; rebuild the plugin against host-api {}",
                self.host_api_version, host.host_api_version, host.host_api_version
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

pub extern "C" fn current_handshake() -> Handshake {
    Handshake::current()
}

/// The root module of a plugin dylib: every name of every kind it registers.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginRef)))]
#[sabi(missing_field(panic))]
pub struct PluginModule {
    pub handshake: extern "C" fn() -> Handshake,
    pub samplers: extern "C" fn() -> RVec<SamplerDecl>,
    pub schedules: extern "C" fn() -> RVec<ScheduleDecl>,
    pub upscalers: extern "C" fn() -> RVec<UpscalerDecl>,
    pub backends: extern "C" fn() -> RVec<BackendDecl>,
    #[sabi(last_prefix_field)]
    pub patches: extern "C" fn() -> RVec<PatchDecl>,
}

impl RootModule for PluginRef {
    declare_root_module_statics! {PluginRef}
    const BASE_NAME: &'static str = "hiresfix_plugin";
    const NAME: &'static str = "hiresfix_plugin";
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
/// `schedules`, `upscalers`, `backends`, `patches`.
#[macro_export]
macro_rules! export_plugin {
    (
        $(handshake: $handshake:path,)?
        $(samplers: [$($sampler:ty),* $(,)?] $(,)?)?
        $(schedules: [$($schedule:ty),* $(,)?] $(,)?)?
        $(upscalers: [$($upscaler:ty),* $(,)?] $(,)?)?
        $(backends: [$($backend:ty),* $(,)?] $(,)?)?
        $(patches: [$($patch:ty),* $(,)?] $(,)?)?
    ) => {
        #[doc(hidden)]
        pub mod __hiresfix_plugin_root {
            #[allow(unused_imports)]
            use super::*;
            use $crate::abi_stable::std_types::RVec;
            use $crate::abi_stable::library::{LibHeader, RootModuleResult, CheckTypeLayout, __call_root_module_loader};
            use $crate::abi_stable::prefix_type::PrefixTypeTrait;

            extern "C" fn samplers() -> RVec<$crate::SamplerDecl> {
                RVec::from(vec![$($($crate::SamplerDecl::of::<$sampler>()),*)?])
            }
            extern "C" fn schedules() -> RVec<$crate::ScheduleDecl> {
                RVec::from(vec![$($($crate::ScheduleDecl::of::<$schedule>()),*)?])
            }
            extern "C" fn upscalers() -> RVec<$crate::UpscalerDecl> {
                RVec::from(vec![$($($crate::UpscalerDecl::of::<$upscaler>()),*)?])
            }
            extern "C" fn backends() -> RVec<$crate::BackendDecl> {
                RVec::from(vec![$($($crate::BackendDecl::of::<$backend>()),*)?])
            }

            extern "C" fn patches() -> RVec<$crate::PatchDecl> {
                RVec::from(vec![$($($crate::PatchDecl::of::<$patch>()),*)?])
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
