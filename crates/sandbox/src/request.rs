//! What a caller asks for: [`RunRequest`] and its defaults.

use std::time::Duration;

use protocol::Language;

use crate::network::{NetworkPolicy, PortMapping};

/// Default wall-clock limit for the code.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default guest memory, in MiB.
pub const DEFAULT_MEMORY_MB: u32 = 256;
/// Default size of the guest's home disk, in MiB. The image is sparse: it takes host disk
/// space only for what the code writes.
pub const DEFAULT_DISK_MB: u32 = 2048;
/// Output caps (DESIGN §5): the stream stops there and the result flags truncation.
pub const STDOUT_CAP: u64 = 1024 * 1024;
pub const STDERR_CAP: u64 = 100 * 1024;

/// One execution.
///
/// ```
/// use sandbox::{Language, RunRequest};
/// use std::time::Duration;
///
/// let req = RunRequest::new(Language::Python, "print(6*7)")
///     .timeout(Duration::from_secs(10))
///     .env(vec![("GREETING".into(), "hi".into())]);
/// assert!(sandbox::validate(&req).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRequest {
    pub language: Language,
    pub code: String,
    pub timeout: Duration,
    pub memory_mb: u32,
    /// Size of the disk holding `/home/user`, in MiB.
    pub disk_mb: u32,
    /// Extra environment variables for the code, in order.
    pub env: Vec<(String, String)>,
    /// Extension of the code file in the guest, one of [`Language::extensions`] (for
    /// JavaScript it picks TypeScript, JSX or a module flavour); `None` for the default
    /// (`.py`, `.ts`, `.sh`).
    pub extension: Option<String>,
    /// Where the guest may connect to; the default is no network at all.
    pub network: NetworkPolicy,
    /// Guest ports reachable from the host on 127.0.0.1 (at most 10). Exposing a port gives
    /// the VM a network interface even when `network` allows no outbound traffic.
    pub expose_ports: Vec<PortMapping>,
}

impl RunRequest {
    pub fn new(language: Language, code: impl Into<String>) -> Self {
        Self {
            language,
            code: code.into(),
            timeout: DEFAULT_TIMEOUT,
            memory_mb: DEFAULT_MEMORY_MB,
            disk_mb: DEFAULT_DISK_MB,
            env: Vec::new(),
            extension: None,
            network: NetworkPolicy::default(),
            expose_ports: Vec::new(),
        }
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn memory_mb(mut self, mb: u32) -> Self {
        self.memory_mb = mb;
        self
    }

    pub fn disk_mb(mut self, mb: u32) -> Self {
        self.disk_mb = mb;
        self
    }

    pub fn env(mut self, env: Vec<(String, String)>) -> Self {
        self.env = env;
        self
    }

    pub fn extension(mut self, extension: impl Into<String>) -> Self {
        self.extension = Some(extension.into());
        self
    }

    pub fn network(mut self, policy: NetworkPolicy) -> Self {
        self.network = policy;
        self
    }

    pub fn expose(mut self, port: PortMapping) -> Self {
        self.expose_ports.push(port);
        self
    }
}
