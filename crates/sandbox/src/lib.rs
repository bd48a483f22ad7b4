//! The exec-sandbox library: run untrusted code in throwaway QEMU microVMs.
//!
//! This crate owns the caller-facing API — [`Scheduler`], [`RunRequest`],
//! [`ExecutionResult`], [`Config`] and the [`Error`] hierarchy — plus request validation and
//! the policy that ties the parts together (which images, which accelerator, how many VMs at
//! once). It must not build QEMU command lines or talk to processes directly (that is
//! `vmm`), build images (`images`), define wire formats (`protocol`), or make network
//! policy decisions (`net`, whose per-VM process it only starts and asks for reports).
//!
//! ```no_run
//! # async fn demo() -> Result<(), sandbox::Error> {
//! use sandbox::{Config, Language, RunRequest, Scheduler};
//!
//! let scheduler = Scheduler::new(Config::from_env()?).await?;
//! let result = scheduler
//!     .run_streaming(RunRequest::new(Language::Raw, "echo hi"), |chunk| {
//!         print!("{}", String::from_utf8_lossy(&chunk.data));
//!     })
//!     .await?;
//! assert_eq!(result.exit_code, 0);
//! # Ok(()) }
//! ```

mod config;
mod error;
mod exec;
mod net_helper;
mod netproc;
mod network;
mod request;
mod result;
mod scheduler;
mod session;
mod validate;

pub use config::Config;
pub use error::{Error, FileError, NetworkError, PermanentError, TransientError};
pub use network::{
    normalize_domain, parse_range, validate_network, ConnEvent, DnsEvent, ExposedPort,
    InboundEvent, NetworkPolicy, NetworkReport, Outbound, PortMapping, PortProtocol,
    MAX_ALLOW_DOMAINS, MAX_ALLOW_RANGES, MAX_EXPOSED_PORTS,
};
pub use protocol::{FileEntry, FileErrorKind, FileKind, Language, Stream, MAX_LISTING};
pub use request::{
    RunRequest, DEFAULT_DISK_MB, DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT, STDERR_CAP, STDOUT_CAP,
};
pub use result::{ExecutionResult, OutputChunk, ReplInfo, Timing, Utf8Chunker};
pub use scheduler::{RunObserver, Scheduler};
pub use session::{Listing, Session, SessionOptions, DEFAULT_IDLE_TIMEOUT};
pub use validate::{
    normalize_guest_path, validate, ValidationError, MAX_CODE_BYTES, MAX_DISK_MB, MAX_IDLE_TIMEOUT,
    MAX_MEMORY_MB, MAX_PATH_BYTES, MAX_PATH_COMPONENT_BYTES, MAX_TIMEOUT, MIN_DISK_MB,
    MIN_IDLE_TIMEOUT, MIN_MEMORY_MB, MIN_TIMEOUT,
};
pub use vmm::{AccelChoice, AccelVerdict, Accelerator};

/// The parts this library is built on, for tools (such as `sbx doctor`) that report on them.
pub use images;
pub use vmm;

/// The README's Rust examples, compiled so they cannot drift from the API.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
