//! Error types. Each variant carries enough context (paths, exit status, the tail of the
//! serial console) that a caller can print it as is and a user can act on it.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Failures finding or inspecting QEMU and the host, and registry I/O.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    #[error("QEMU binary `{name}` not found on $PATH ({source}); install qemu-system-x86 or pass its path explicitly")]
    QemuNotFound {
        name: String,
        #[source]
        source: which::Error,
    },
    #[error("QEMU binary {path} is not usable: {reason}")]
    QemuUnusable { path: PathBuf, reason: String },
    #[error("cannot parse the QEMU version from `{output}` ({path})")]
    VersionUnparsable { path: PathBuf, output: String },
    #[error("{action}: {} failed: {reason}", tool.display())]
    Tool {
        tool: PathBuf,
        action: &'static str,
        reason: String,
    },
    #[error("`{tool}` not found on $PATH, /usr/sbin or /sbin; install the {package} package")]
    ToolMissing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl VmmError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        VmmError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// Why a VM did not come up. See [`BootError::is_transient`] for which ones are worth a retry.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("could not prepare the VM: {0}")]
    Setup(#[from] VmmError),
    #[error("agent socket path {path} is {len} bytes; unix sockets allow at most 107 (use a shorter registry directory)")]
    SocketPathTooLong { path: PathBuf, len: usize },
    #[error("failed to spawn {qemu}: {source}")]
    Spawn {
        qemu: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "QEMU exited during boot after {elapsed:?} with {status}{}",
        tail_suffix(console_tail, stderr_tail)
    )]
    QemuExited {
        status: ExitStatus,
        elapsed: Duration,
        console_tail: String,
        stderr_tail: String,
    },
    #[error(
        "the guest did not become ready within {timeout:?}{}",
        tail_suffix(console_tail, "")
    )]
    Timeout {
        timeout: Duration,
        console_tail: String,
    },
    #[error(
        "guest agent speaks protocol version {guest}, this host speaks {host}; rebuild the images"
    )]
    VersionMismatch { guest: u32, host: u32 },
    #[error("guest agent sent {what} before Ready")]
    UnexpectedMessage { what: String },
    #[error(
        "the probe guest powered off without printing the probe marker{}",
        tail_suffix(console_tail, "")
    )]
    NoProbeMarker { console_tail: String },
    #[error("agent channel failed during boot: {0}")]
    Channel(#[source] ChannelError),
}

impl BootError {
    /// True when the same spec might well boot on a second try: the VM died, hung or lost
    /// its socket. Configuration problems (missing QEMU, bad paths, protocol mismatch) are
    /// not transient: retrying would only fail the same way, slower.
    pub fn is_transient(&self) -> bool {
        match self {
            BootError::QemuExited { .. } | BootError::Timeout { .. } => true,
            BootError::Channel(e) => !matches!(e, ChannelError::Malformed(_)),
            // EAGAIN/ENOMEM from fork are load-dependent; ENOENT/EACCES are not.
            BootError::Spawn { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::EAGAIN) | Some(libc::ENOMEM) | Some(libc::EINTR)
            ),
            BootError::Setup(_)
            | BootError::SocketPathTooLong { .. }
            | BootError::VersionMismatch { .. }
            | BootError::UnexpectedMessage { .. }
            | BootError::NoProbeMarker { .. } => false,
        }
    }
}

/// Failures on a running VM's agent channel.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("QEMU exited with {status}{}", tail_suffix(console_tail, ""))]
    QemuExited {
        status: ExitStatus,
        console_tail: String,
    },
    #[error("QEMU (pid {pid}) is {state_name} (state {state}); the VM is frozen")]
    Frozen {
        pid: u32,
        state: char,
        state_name: &'static str,
    },
    #[error(
        "the agent closed the channel (QEMU still running){}",
        tail_suffix(console_tail, "")
    )]
    Closed { console_tail: String },
    #[error("agent channel I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("malformed frame from the agent: {0}")]
    Malformed(#[from] protocol::FrameError),
}

/// Formats the console/stderr tails as a suffix for error messages, or nothing.
fn tail_suffix(console: &str, stderr: &str) -> String {
    let mut s = String::new();
    let console = console.trim_end();
    let stderr = stderr.trim_end();
    if !stderr.is_empty() {
        s.push_str("\n--- QEMU stderr ---\n");
        s.push_str(stderr);
    }
    if !console.is_empty() {
        s.push_str("\n--- last console lines ---\n");
        s.push_str(console);
    }
    s
}
