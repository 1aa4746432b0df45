//! Errors as values: nothing unwinds across the plugin boundary.
use std::any::Any;
use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Once;

use abi_stable::std_types::{RResult, RString};

/// The error a plugin returns; the host adds which plugin and which name it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Error(pub String);

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        // libtorch messages carry a C++ backtrace after the first line; keep the first.
        let text = e.to_string();
        Self(text.lines().next().unwrap_or("libtorch error").to_owned())
    }
}

impl From<String> for Error {
    fn from(s: String) -> Self {
        Self(s)
    }
}

impl From<&str> for Error {
    fn from(s: &str) -> Self {
        Self(s.to_owned())
    }
}

/// Formats any error chain as one line.
pub fn error_from<E: fmt::Display>(e: E) -> Error {
    Error(e.to_string())
}

fn panic_text(payload: Box<dyn Any + Send>) -> String {
    let text = if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_owned()
    };
    let first = text.lines().next().unwrap_or("").trim().to_owned();
    format!("panicked: {first}")
}

thread_local! {
    static GUARDED: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `f`, turning both errors and panics into an `RResult` that can cross the boundary.
/// Inside `guard` the panic hook stays quiet, so a panic reaches the user once, as the host's
/// one-line error; outside it, the previous hook runs as usual.
pub fn guard<T>(f: impl FnOnce() -> Result<T>) -> RResult<T, RString> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if GUARDED.with(|g| g.get()) == 0 {
                previous(info)
            }
        }));
    });
    GUARDED.with(|g| g.set(g.get() + 1));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    GUARDED.with(|g| g.set(g.get() - 1));
    match outcome {
        Ok(Ok(v)) => RResult::ROk(v),
        Ok(Err(e)) => RResult::RErr(RString::from(e.0)),
        Err(payload) => RResult::RErr(RString::from(panic_text(payload))),
    }
}

/// The inverse of [`guard`], for the side that receives an `RResult`.
pub fn from_ffi<T>(r: RResult<T, RString>) -> Result<T> {
    r.into_result().map_err(|e| Error(e.into()))
}
