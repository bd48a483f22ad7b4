//! The error hierarchy every caller sees.
//!
//! The variant says who is at fault and whether the code ran:
//!
//! | variant | meaning | code ran? | retry? |
//! |---|---|---|---|
//! | [`Error::Invalid`] | the request is wrong | no | no, fix the request |
//! | [`Error::Transient`] | the VM failed before the code was sent | no | yes |
//! | [`Error::Permanent`] | configuration or a missing dependency | no | no, fix the host |
//! | [`Error::OutcomeUnknown`] | the transport was lost after the code was sent | maybe | only if the code is idempotent |
//! | [`Error::Cancelled`] | the caller cancelled | maybe | caller's choice |
//! | [`Error::SessionClosed`] | the session was closed before this call | no | open a new session |
//! | [`Error::File`] | a file operation failed (see [`FileError`]) | no | fix the path or data |
//! | [`Error::Network`] | the VM's network process failed (see [`NetworkError`]) | only for [`NetworkError::Lost`] | see the variant |

use crate::validate::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid request: {0}")]
    Invalid(#[from] ValidationError),
    #[error("the VM failed before the code was sent (safe to retry): {0}")]
    Transient(#[from] TransientError),
    #[error("{0}")]
    Permanent(#[from] PermanentError),
    #[error(
        "the connection to the VM was lost after the code was sent; it may have run: {reason}"
    )]
    OutcomeUnknown { reason: String },
    #[error("cancelled")]
    Cancelled,
    #[error("the session is closed: {reason}")]
    SessionClosed { reason: String },
    #[error(transparent)]
    File(#[from] FileError),
    #[error("network: {0}")]
    Network(#[from] NetworkError),
}

/// The VM's network process (which carries forwards and outbound traffic) failed.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A requested host port could not be bound (it is in use, or reserved). The code did
    /// not run; pick another port or leave `external` out.
    #[error("{0}")]
    Bind(String),
    /// The network process could not be started. The code did not run.
    #[error("the network process could not start: {0}")]
    Start(String),
    /// The network process died while the code ran: the code may have run (partly), and the
    /// VM was stopped, since its network was gone mid-call.
    #[error("the network process died during the call; the code may have run: {0}")]
    Lost(String),
}

/// Why a session file operation failed. Nothing in the guest was changed by a failed write.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The guest refused or failed the operation.
    #[error("{path}: {message}")]
    Guest {
        kind: protocol::FileErrorKind,
        /// The normalised path, relative to `/home/user`.
        path: String,
        message: String,
    },
    /// The caller's data source failed while uploading.
    #[error("reading the data to upload: {0}")]
    Source(#[source] std::io::Error),
    /// The caller's destination failed while downloading.
    #[error("writing the downloaded data: {0}")]
    Sink(#[source] std::io::Error),
}

impl Error {
    /// True when the code certainly did not run and the same request may simply be retried.
    pub fn is_retry_safe(&self) -> bool {
        matches!(self, Error::Transient(_))
    }

    /// True when the code may have run (fully or partly).
    pub fn code_may_have_run(&self) -> bool {
        matches!(
            self,
            Error::OutcomeUnknown { .. } | Error::Cancelled | Error::Network(NetworkError::Lost(_))
        )
    }

    /// A short stable name for the kind, used in JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid_request",
            Error::Transient(_) => "transient",
            Error::Permanent(_) => "permanent",
            Error::OutcomeUnknown { .. } => "outcome_unknown",
            Error::Cancelled => "cancelled",
            Error::SessionClosed { .. } => "session_closed",
            Error::File(_) => "file",
            Error::Network(NetworkError::Bind(_)) => "network_bind",
            Error::Network(NetworkError::Start(_)) => "network_start",
            Error::Network(NetworkError::Lost(_)) => "network_lost",
        }
    }
}

/// Infrastructure failures that happened before the code was sent.
#[derive(Debug, thiserror::Error)]
pub enum TransientError {
    #[error("boot failed after {retries} retries: {source}")]
    Boot {
        retries: u32,
        #[source]
        source: vmm::BootError,
    },
    #[error("could not send the code to the guest: {0}")]
    Dispatch(#[source] vmm::ChannelError),
}

/// Failures that retrying will not fix.
#[derive(Debug, thiserror::Error)]
pub enum PermanentError {
    #[error("QEMU: {0}")]
    Qemu(#[from] vmm::VmmError),
    #[error("guest images: {0}")]
    Images(#[from] images::ImageError),
    #[error("boot failed: {0}")]
    Boot(#[source] vmm::BootError),
    #[error("the guest could not start the code: {0}")]
    GuestCannotRun(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("I/O at {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("internal: {0}")]
    Internal(String),
}
