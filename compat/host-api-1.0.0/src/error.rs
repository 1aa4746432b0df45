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
        Self(first_line(&e.to_string()))
    }
}

/// The longest a libtorch message may run in a one-line error.
const MESSAGE_CHARS: usize = 200;

/// The first meaningful line of a libtorch message (which carries a C++ backtrace after it),
/// cut to 200 characters: a failed allocation can otherwise print thousands.
pub fn first_line(text: &str) -> String {
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("libtorch error");
    match line.char_indices().nth(MESSAGE_CHARS) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line.to_owned(),
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
    format!("panicked: {}", first_line(&text))
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

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn long_libtorch_messages_become_one_short_line() {
        let long = format!(
            "\n  CUDA out of memory. {}\nException raised from ...",
            "x".repeat(8000)
        );
        let line = first_line(&long);
        assert!(
            line.starts_with("CUDA out of memory.") && line.chars().count() == 201,
            "{line}"
        );
        assert_eq!(first_line("short\nbacktrace"), "short");
    }
}
