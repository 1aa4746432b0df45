//! Names crossing the boundary: a plugin's names are `'static` (its constants, or lists leaked
//! once per load, as the plugin itself is never unloaded), so the tables holding them stay
//! `Copy` and need no drop across the boundary.
use abi_stable::std_types::{RSlice, RStr};

/// `list` as an FFI slice of FFI strings, leaked for the process.
pub(crate) fn static_strs(list: &'static [&'static str]) -> RSlice<'static, RStr<'static>> {
    let strs: Vec<RStr<'static>> = list.iter().map(|s| RStr::from_str(s)).collect();
    RSlice::from_slice(Box::leak(strs.into_boxed_slice()))
}

/// The host's owned copy of an FFI string list.
pub(crate) fn owned(list: RSlice<'static, RStr<'static>>) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
