//! A registered family crossing the boundary: [`BackendFfi`] (what generation needs) and the
//! optional [`BackendToolsFfi`] (the command-line tools), both abi_stable prefix types.
use std::path::Path;

use abi_stable::prefix_type::PrefixTypeTrait;
use abi_stable::std_types::{ROption, RResult, RStr, RString};
use abi_stable::StableAbi;

use crate::backend::{
    Backend, BackendTools, CheckpointInfo, LoadRequest, MemoryEstimate, MemoryRequest, MergeRequest,
};
use crate::error::{from_ffi, guard, Error, Result};
use crate::model_box::ModelBox;

type Out<T> = RResult<T, RString>;

/// A registered family. Host API 1.0's fields end at `tools`; later ones are appended and read
/// as `Option`s.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendFfiRef)))]
#[sabi(missing_field(option))]
pub struct BackendFfi {
    pub family: RStr<'static>,
    pub detect: extern "C" fn(RStr<'_>) -> Out<ROption<RString>>,
    pub load: extern "C" fn(&LoadRequest) -> Out<ModelBox>,
    #[sabi(last_prefix_field)]
    pub tools: ROption<BackendToolsFfiRef>,
}

/// A family's command-line tools. Host API 1.0's fields end at `estimate_memory`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BackendToolsFfiRef)))]
#[sabi(missing_field(option))]
pub struct BackendToolsFfi {
    pub inspect: extern "C" fn(RStr<'_>, bool) -> Out<CheckpointInfo>,
    pub merge: extern "C" fn(&MergeRequest) -> Out<RString>,
    pub write_demo_checkpoint: extern "C" fn(RStr<'_>) -> Out<()>,
    #[sabi(last_prefix_field)]
    pub estimate_memory: extern "C" fn(&MemoryRequest) -> Out<MemoryEstimate>,
}

extern "C" fn detect_trampoline<B: Backend>(path: RStr<'_>) -> Out<ROption<RString>> {
    guard(|| {
        Ok(B::detect(Path::new(path.as_str()))?
            .map(RString::from)
            .into())
    })
}

extern "C" fn load_trampoline<B: Backend>(request: &LoadRequest) -> Out<ModelBox> {
    guard(|| B::load(request).map(ModelBox::new))
}

extern "C" fn inspect_trampoline<B: BackendTools>(
    path: RStr<'_>,
    probe: bool,
) -> Out<CheckpointInfo> {
    guard(|| B::inspect(Path::new(path.as_str()), probe))
}

extern "C" fn merge_trampoline<B: BackendTools>(request: &MergeRequest) -> Out<RString> {
    guard(|| B::merge(request).map(RString::from))
}

extern "C" fn demo_trampoline<B: BackendTools>(path: RStr<'_>) -> Out<()> {
    guard(|| B::write_demo_checkpoint(Path::new(path.as_str())))
}

extern "C" fn estimate_trampoline<B: BackendTools>(request: &MemoryRequest) -> Out<MemoryEstimate> {
    guard(|| B::estimate_memory(request))
}

impl BackendFfi {
    /// The table for `B`, without the tools (made once per plugin load, kept for the process
    /// like the plugin).
    pub fn of<B: Backend>() -> BackendFfiRef {
        Self::table::<B>(None)
    }

    /// The table for `B` with its [`BackendTools`].
    pub fn with_tools<B: BackendTools>() -> BackendFfiRef {
        let tools = BackendToolsFfi {
            inspect: inspect_trampoline::<B>,
            merge: merge_trampoline::<B>,
            write_demo_checkpoint: demo_trampoline::<B>,
            estimate_memory: estimate_trampoline::<B>,
        };
        Self::table::<B>(Some(tools.leak_into_prefix()))
    }

    fn table<B: Backend>(tools: Option<BackendToolsFfiRef>) -> BackendFfiRef {
        BackendFfi {
            family: RStr::from_str(B::FAMILY),
            detect: detect_trampoline::<B>,
            load: load_trampoline::<B>,
            tools: tools.into(),
        }
        .leak_into_prefix()
    }
}

/// The host's view of a registered family.
pub struct BackendDecl {
    pub family: String,
    ffi: BackendFfiRef,
}

impl BackendDecl {
    pub fn of<B: Backend>() -> Self {
        Self::from_ffi(BackendFfi::of::<B>())
    }

    pub fn with_tools<B: BackendTools>() -> Self {
        Self::from_ffi(BackendFfi::with_tools::<B>())
    }

    pub fn from_ffi(ffi: BackendFfiRef) -> Self {
        Self {
            family: ffi.family().to_string(),
            ffi,
        }
    }

    /// Whether the family's plugin has the command-line tools.
    pub fn has_tools(&self) -> bool {
        self.ffi.tools().is_some()
    }

    fn tools(&self, what: &str) -> Result<BackendToolsFfiRef> {
        self.ffi.tools().into_option().ok_or_else(|| {
            Error(format!(
                "the plugin of family {} has no {what} (a backend without the optional tools table)",
                self.family
            ))
        })
    }

    /// Host side: see [`Backend::detect`].
    pub fn run_detect(&self, checkpoint: &Path) -> Result<Option<String>> {
        let path = checkpoint.to_string_lossy();
        from_ffi((self.ffi.detect())(RStr::from_str(&path)))
            .map(|o| o.into_option().map(String::from))
    }

    pub fn run_load(&self, request: &LoadRequest) -> Result<ModelBox> {
        from_ffi((self.ffi.load())(request))
    }

    /// Host side: see [`BackendTools::inspect`].
    pub fn run_inspect(&self, checkpoint: &Path, probe: bool) -> Result<CheckpointInfo> {
        let path = checkpoint.to_string_lossy();
        from_ffi((self.tools("`hiresfix info` support")?.inspect())(
            RStr::from_str(&path),
            probe,
        ))
    }

    /// Host side: see [`BackendTools::merge`].
    pub fn run_merge(&self, request: &MergeRequest) -> Result<String> {
        from_ffi((self.tools("merge support")?.merge())(request)).map(String::from)
    }

    /// Host side: see [`BackendTools::write_demo_checkpoint`].
    pub fn run_write_demo_checkpoint(&self, path: &Path) -> Result<()> {
        let path = path.to_string_lossy();
        from_ffi((self.tools("demo model")?.write_demo_checkpoint())(
            RStr::from_str(&path),
        ))
    }

    /// Host side: see [`BackendTools::estimate_memory`].
    pub fn run_estimate_memory(&self, request: &MemoryRequest) -> Result<MemoryEstimate> {
        from_ffi((self.tools("memory estimate")?.estimate_memory())(request))
    }
}
