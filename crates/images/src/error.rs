//! The typed errors of image building and cache access.

use std::path::PathBuf;

/// Everything that can go wrong while looking up, building, listing or pruning images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host program the build needs is not installed.
    #[error("required host tool `{tool}` was not found in PATH: install it with `apt-get install {apt_package}`")]
    MissingTool { tool: String, apt_package: String },

    /// Building images needs root (mmdebstrap in root mode, chroot, device nodes, file owners).
    #[error("building guest images needs root (mmdebstrap, chroot and file ownership): {what} must run as root; the cache can be read without it")]
    NotRoot { what: String },

    /// `offline` was requested but some images are not in the cache.
    #[error("offline mode: these guest images are not in the cache and cannot be built without network: {}", missing.join(", "))]
    Offline { missing: Vec<String> },

    /// Fetching a package from a registry (Debian, PyPI, npm) failed.
    #[error("could not download {package} {version} ({how}): {detail}")]
    Download {
        package: String,
        version: String,
        how: String,
        detail: String,
    },

    /// A build step (a subprocess or an in-process transformation) failed.
    #[error(
        "building {image}: step `{step}` failed: {detail}{}",
        fmt_tail(stderr_tail)
    )]
    BuildStep {
        image: String,
        step: String,
        detail: String,
        stderr_tail: String,
    },

    /// A binary that goes into an image is not what the guest can run.
    #[error("invalid binary {what}: {reason}")]
    InvalidBinary { what: String, reason: String },

    /// No home directory or cache directory could be determined.
    #[error(
        "cannot determine the image cache directory: set SBX_CACHE_DIR, XDG_CACHE_HOME or HOME"
    )]
    NoCacheDir,

    /// A manifest in the cache could not be read or written.
    #[error("manifest {path}: {detail}")]
    Manifest { path: PathBuf, detail: String },

    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn fmt_tail(tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- stderr (last lines) ---\n{}", tail.trim_end())
    }
}

impl ImageError {
    /// Wraps an I/O error with the operation and path it concerned.
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> ImageError {
        let path = path.into();
        move |source| ImageError::Io { op, path, source }
    }

    pub(crate) fn step(image: &str, step: &str, detail: impl Into<String>) -> ImageError {
        ImageError::BuildStep {
            image: image.to_string(),
            step: step.to_string(),
            detail: detail.into(),
            stderr_tail: String::new(),
        }
    }
}
