//! The one error type of init: what was being done, and the OS error.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("{0}")]
    Other(String),
}

impl InitError {
    /// For `map_err`: wraps an io or nix error with what was being attempted.
    pub fn io<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> InitError {
        let what = what.into();
        move |e| InitError::Io {
            what,
            source: e.into(),
        }
    }
}
