//! Scheduler configuration, with defaults and environment overrides.

use std::path::PathBuf;
use std::time::Duration;

use vmm::{AccelChoice, Accelerator, RetryPolicy};

use crate::error::PermanentError;

/// How the scheduler finds its tools and places its files.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where built images and probe verdicts live (`$SBX_CACHE_DIR`, else the user cache dir).
    pub cache_dir: PathBuf,
    /// Where per-VM work dirs and the process registry live (`$SBX_RUNTIME_DIR`, else
    /// `$XDG_RUNTIME_DIR/exec-sandbox`, else `/tmp/exec-sandbox-<uid>`).
    pub runtime_dir: PathBuf,
    /// Where the VMs' home disk images go (`$SBX_SCRATCH_DIR`, else `scratch` in the cache
    /// dir). Must be on a disk-backed filesystem: on tmpfs the guests' files would take host
    /// memory. The images are unnamed files, so the directory always looks empty.
    pub scratch_dir: PathBuf,
    /// QEMU binary (`$SBX_QEMU`); `None` searches `$PATH` for `qemu-system-x86_64`.
    pub qemu: Option<PathBuf>,
    /// `$SBX_ACCEL=kvm|tcg|auto`.
    pub accelerator: AccelChoice,
    /// Never build images (`$SBX_OFFLINE=1`): fail with a clear error if they are missing.
    pub offline: bool,
    /// VMs running at once; further runs wait for a slot.
    pub max_concurrent_vms: usize,
    /// Deadline for one boot attempt to reach the agent.
    pub boot_timeout: Duration,
    pub boot_retry: RetryPolicy,
    pub vcpus: u32,
    /// The resolver the VMs' network processes ask (`$SBX_DNS_UPSTREAM`, `IP:PORT` or `IP`);
    /// `None` uses the host's first `nameserver` in `/etc/resolv.conf`.
    pub upstream_dns: Option<std::net::SocketAddr>,
    /// The network process executable (`$SBX_NET_HELPER`); `None` uses the copy built into
    /// this library, installed under `<cache_dir>/bin` on first use.
    pub net_helper: Option<PathBuf>,
}

impl Config {
    /// Defaults, overridden by the `SBX_*` environment variables listed on each field.
    pub fn from_env() -> Result<Config, PermanentError> {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let cache_dir = match env("SBX_CACHE_DIR") {
            Some(p) => PathBuf::from(p),
            None => images::ImageStore::open_default()?.root().to_path_buf(),
        };
        let scratch_dir = match env("SBX_SCRATCH_DIR") {
            Some(p) => PathBuf::from(p),
            None => cache_dir.join("scratch"),
        };
        let runtime_dir = match env("SBX_RUNTIME_DIR") {
            Some(p) => PathBuf::from(p),
            None => match env("XDG_RUNTIME_DIR") {
                Some(p) => PathBuf::from(p).join("exec-sandbox"),
                None => {
                    std::env::temp_dir().join(format!("exec-sandbox-{}", nix::unistd::getuid()))
                }
            },
        };
        let accelerator = match std::env::var("SBX_ACCEL").unwrap_or_default().as_str() {
            "" | "auto" => AccelChoice::Auto,
            "kvm" => AccelChoice::Force(Accelerator::Kvm),
            "tcg" => AccelChoice::Force(Accelerator::Tcg),
            other => {
                return Err(PermanentError::Config(format!(
                    "SBX_ACCEL={other:?}: expected kvm, tcg or auto"
                )))
            }
        };
        let offline = matches!(
            std::env::var("SBX_OFFLINE").as_deref(),
            Ok("1" | "true" | "yes")
        );
        Ok(Config {
            cache_dir,
            scratch_dir,
            runtime_dir,
            qemu: env("SBX_QEMU").map(PathBuf::from),
            accelerator,
            offline,
            max_concurrent_vms: 8,
            boot_timeout: Duration::from_secs(60),
            boot_retry: RetryPolicy {
                max_retries: 2,
                base_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(2),
            },
            vcpus: 1,
            upstream_dns: match std::env::var("SBX_DNS_UPSTREAM") {
                Ok(v) if !v.is_empty() => Some(parse_resolver(&v)?),
                _ => None,
            },
            net_helper: env("SBX_NET_HELPER").map(PathBuf::from),
        })
    }
}

/// `IP:PORT` or a bare IPv4/IPv6 address (port 53).
fn parse_resolver(value: &str) -> Result<std::net::SocketAddr, PermanentError> {
    if let Ok(addr) = value.parse::<std::net::SocketAddr>() {
        return Ok(addr);
    }
    match value.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(std::net::SocketAddr::new(ip, 53)),
        Err(_) => Err(PermanentError::Config(format!(
            "SBX_DNS_UPSTREAM={value:?}: expected an address such as 127.0.0.1 or 127.0.0.1:5353"
        ))),
    }
}
