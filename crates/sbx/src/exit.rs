//! The exit statuses `sbx` uses besides the code's own.
//!
//! A run's status is the code's exit code (0–255, 128+N for signal N). The statuses below
//! report everything else; they can collide with a program's own codes, so `--json` is the
//! unambiguous interface for machines.

/// Bad command line or rejected request (nothing started).
pub const USAGE: i32 = 2;
/// A file transfer failed: an `--upload` (the code did not run), or a `--download` after
/// code that exited 0. The code's own non-zero status wins over this one.
pub const TRANSFER: i32 = 123;
/// The code hit its timeout.
pub const TIMEOUT: i32 = 124;
/// The sandbox failed and the code did not run (safe to retry if transient).
pub const INFRA: i32 = 125;
/// The connection to the VM was lost after the code was sent: it may have run.
pub const OUTCOME_UNKNOWN: i32 = 126;
/// Interrupted by Ctrl+C (or SIGTERM/SIGHUP).
pub const INTERRUPTED: i32 = 130;
/// The reader of our output went away; the run was stopped (128 + SIGPIPE, as a shell
/// reports a filter killed by a closed pipe).
pub const BROKEN_PIPE: i32 = 141;

/// The status for a library error.
pub fn for_error(err: &sandbox::Error) -> i32 {
    match err {
        sandbox::Error::Invalid(_) => USAGE,
        sandbox::Error::Transient(_) | sandbox::Error::Permanent(_) => INFRA,
        sandbox::Error::OutcomeUnknown { .. } => OUTCOME_UNKNOWN,
        sandbox::Error::Cancelled => INTERRUPTED,
        // The VM is gone; whether a call in flight ran is in the message.
        sandbox::Error::SessionClosed { .. } => INFRA,
        sandbox::Error::File(_) => TRANSFER,
        sandbox::Error::Network(sandbox::NetworkError::Lost(_)) => OUTCOME_UNKNOWN,
        sandbox::Error::Network(_) => INFRA,
    }
}

/// The status for a finished run.
pub fn for_result(result: &sandbox::ExecutionResult) -> i32 {
    if result.timed_out {
        TIMEOUT
    } else {
        result.exit_code.clamp(0, 255)
    }
}
