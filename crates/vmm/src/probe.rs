//! The accelerator probe: does KVM actually run our guest on this host?
//!
//! `/dev/kvm` existing (or even answering ioctls) does not mean a standard guest kernel
//! boots under it: some nested setups hang in early boot. The only reliable test is a real
//! boot of the real kernel + initramfs in probe mode with a deadline. That costs seconds,
//! so the verdict is cached as JSON, keyed by everything it depends on.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::command::Accelerator;
use crate::error::BootError;
use crate::qemu::QemuInfo;
use crate::registry::Registry;
use crate::vm::{boot_to_poweroff, VmSpec};

/// How long a KVM probe boot may take. A working KVM boots to init in well under a second.
pub const KVM_PROBE_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline for the TCG control boot that tells a broken KVM from a broken image.
const TCG_PROBE_DEADLINE: Duration = Duration::from_secs(60);
/// Memory for probe boots: enough for the kernel to unpack the initramfs.
const PROBE_MEMORY_MB: u32 = 256;
/// Bumped when the probe logic changes, to invalidate cached verdicts.
const PROBE_LOGIC_VERSION: u32 = 1;

/// The decision and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelVerdict {
    pub accelerator: Accelerator,
    /// One sentence a user can read in `doctor` output.
    pub reason: String,
    /// When KVM was considered and rejected: what went wrong with it.
    pub kvm_rejected_because: Option<String>,
    /// True when read from the cache instead of probed now.
    pub from_cache: bool,
}

/// What the caller wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccelChoice {
    /// Probe (or use the cached probe result).
    Auto,
    /// Use this one, no probing.
    Force(Accelerator),
}

/// Decides the accelerator. Never fails: anything unexpected falls back to TCG with the
/// reason said. Probes at most once per (QEMU binary, kernel, initramfs, host kernel) and
/// caches the verdict under `cache_dir/probe/`.
pub async fn probe_accelerator(
    qemu: &QemuInfo,
    kernel: &Path,
    initramfs: &Path,
    cache_dir: &Path,
    choice: AccelChoice,
) -> AccelVerdict {
    if let AccelChoice::Force(accelerator) = choice {
        return AccelVerdict {
            accelerator,
            reason: format!("{accelerator} forced by configuration"),
            kvm_rejected_because: None,
            from_cache: false,
        };
    }
    if let Err(why) = kvm_device_usable() {
        return tcg_verdict(why, false);
    }
    let probe_dir = cache_dir.join("probe");
    let cache_file =
        cache_key(qemu, kernel, initramfs).map(|key| probe_dir.join(format!("{key}.json")));
    if let Some(v) = cache_file.as_deref().and_then(read_cached) {
        return v;
    }
    let (verdict, cacheable) = run_probe(qemu, kernel, initramfs, &probe_dir).await;
    if cacheable {
        if let Some(path) = &cache_file {
            write_cached(path, &verdict);
        }
    }
    verdict
}

/// `/dev/kvm` must exist and open read-write for this user.
fn kvm_device_usable() -> Result<(), String> {
    match OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err("/dev/kvm does not exist".into()),
        Err(e) => Err(format!(
            "/dev/kvm cannot be opened read-write ({e}); add the user to the kvm group"
        )),
    }
}

fn tcg_verdict(kvm_problem: String, from_cache: bool) -> AccelVerdict {
    AccelVerdict {
        accelerator: Accelerator::Tcg,
        reason: format!("{kvm_problem}; using TCG (software emulation)"),
        kvm_rejected_because: Some(kvm_problem),
        from_cache,
    }
}

/// Boots under KVM; if that fails, boots under TCG to check the image itself is fine, so a
/// broken image is never cached as "KVM does not work". Returns the verdict and whether it
/// may be cached.
async fn run_probe(
    qemu: &QemuInfo,
    kernel: &Path,
    initramfs: &Path,
    probe_dir: &Path,
) -> (AccelVerdict, bool) {
    let registry = match Registry::open(&probe_dir.join("run")) {
        Ok(r) => r,
        Err(e) => {
            return (
                tcg_verdict(format!("cannot run the KVM probe ({e})"), false),
                false,
            )
        }
    };
    let spec = |accelerator, boot_timeout| VmSpec {
        qemu: qemu.clone(),
        accelerator,
        kernel: kernel.to_path_buf(),
        initramfs: initramfs.to_path_buf(),
        rootfs: None,
        memory_mb: PROBE_MEMORY_MB,
        vcpus: 1,
        boot_timeout,
        extra_cmdline: Vec::new(),
        home_disk: None,
        nic: false,
    };
    let started = Instant::now();
    let kvm = boot_to_poweroff(&spec(Accelerator::Kvm, KVM_PROBE_DEADLINE), &registry).await;
    let kvm_err = match kvm {
        Ok(t) => {
            let v = AccelVerdict {
                accelerator: Accelerator::Kvm,
                reason: format!(
                    "KVM probe boot reached the guest init and powered off in {} ms",
                    t.as_millis()
                ),
                kvm_rejected_because: None,
                from_cache: false,
            };
            return (v, true);
        }
        Err(e) => e,
    };
    let kvm_problem = describe_kvm_failure(&kvm_err);
    tracing::info!(elapsed = ?started.elapsed(), problem = %kvm_problem, "KVM probe failed");
    match boot_to_poweroff(&spec(Accelerator::Tcg, TCG_PROBE_DEADLINE), &registry).await {
        Ok(_) => (tcg_verdict(kvm_problem, false), true),
        Err(tcg_err) => {
            // The image itself does not boot: say so, use TCG for now, and probe again next
            // time rather than caching a verdict about KVM we could not establish.
            let v = tcg_verdict(
                format!("{kvm_problem}; but the guest did not complete a probe boot under TCG either ({}), so the image, not KVM, may be at fault", first_line(&tcg_err.to_string())),
                false,
            );
            (v, false)
        }
    }
}

fn describe_kvm_failure(e: &BootError) -> String {
    let hint = |tail: &str| {
        let last: Vec<&str> = tail.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = last[last.len().saturating_sub(3)..].join(" | ");
        if last.is_empty() {
            String::new()
        } else {
            format!(" [last output: {last}]")
        }
    };
    match e {
        BootError::Timeout { timeout, console_tail } => format!(
            "KVM boot did not reach the guest init within {} s (this host's /dev/kvm cannot run a standard guest kernel){}",
            timeout.as_secs(),
            hint(console_tail)
        ),
        BootError::QemuExited { status, stderr_tail, console_tail, .. } => format!(
            "QEMU with -accel kvm exited with {status} before the guest init ran{}",
            hint(if stderr_tail.trim().is_empty() { console_tail } else { stderr_tail })
        ),
        BootError::NoProbeMarker { console_tail } => {
            format!("KVM guest powered off without reaching the init's probe marker{}", hint(console_tail))
        }
        other => format!("KVM probe failed: {}", first_line(&other.to_string())),
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or_default().to_string()
}

/// A hash of everything the verdict depends on: the QEMU binary (path, version, mtime,
/// size), the kernel and initramfs (path, size, mtime: the image cache is content
/// addressed, so the path already names the content; size and mtime catch in-place
/// rebuilds), the host kernel release (KVM lives there) and the probe logic version.
/// `None` when a file cannot be inspected: then nothing is cached.
fn cache_key(qemu: &QemuInfo, kernel: &Path, initramfs: &Path) -> Option<String> {
    let mut h = Sha256::new();
    h.update(format!("probe-v{PROBE_LOGIC_VERSION}\0"));
    h.update(format!(
        "{}\0{}\0",
        qemu.version_string,
        file_identity(&qemu.path)?
    ));
    h.update(format!("{}\0", file_identity(kernel)?));
    h.update(format!("{}\0", file_identity(initramfs)?));
    let host_kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    h.update(host_kernel.trim());
    Some(hex::encode(&h.finalize()[..16]))
}

fn file_identity(path: &Path) -> Option<String> {
    let canonical: PathBuf = fs::canonicalize(path).ok()?;
    let meta = fs::metadata(&canonical).ok()?;
    let mtime = meta
        .modified()
        .ok()?
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_nanos();
    Some(format!("{}:{}:{}", canonical.display(), meta.len(), mtime))
}

fn read_cached(path: &Path) -> Option<AccelVerdict> {
    let bytes = fs::read(path).ok()?;
    let mut v: AccelVerdict = serde_json::from_slice(&bytes).ok()?;
    v.from_cache = true;
    Some(v)
}

/// Best effort: a verdict that cannot be cached is still a verdict.
fn write_cached(path: &Path, verdict: &AccelVerdict) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("json.tmp");
        fs::write(
            &tmp,
            serde_json::to_vec_pretty(verdict).map_err(std::io::Error::other)?,
        )?;
        fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!(path = %path.display(), error = %e, "could not cache the accelerator verdict");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_qemu() -> QemuInfo {
        QemuInfo {
            path: "/bin/sh".into(),
            version: (7, 2, 0),
            version_string: "QEMU emulator version 7.2.0".into(),
            supports_sandbox: false,
            microvm_bios: None,
        }
    }

    #[tokio::test]
    async fn forced_choice_wins_without_probing() {
        let v = probe_accelerator(
            &fake_qemu(),
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
            Path::new("/nonexistent"),
            AccelChoice::Force(Accelerator::Kvm),
        )
        .await;
        assert_eq!(v.accelerator, Accelerator::Kvm);
        assert!(v.reason.contains("forced"));
        assert!(!v.from_cache);
    }

    #[test]
    fn cache_round_trip_and_key_changes_with_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("vmlinuz");
        let i = dir.path().join("initramfs.cpio");
        fs::write(&k, "k").unwrap();
        fs::write(&i, "i").unwrap();
        let key1 = cache_key(&fake_qemu(), &k, &i).unwrap();
        assert_eq!(key1, cache_key(&fake_qemu(), &k, &i).unwrap());
        fs::write(&i, "ii").unwrap();
        assert_ne!(key1, cache_key(&fake_qemu(), &k, &i).unwrap());
        assert_eq!(
            cache_key(&fake_qemu(), &k, &dir.path().join("missing")),
            None
        );

        let path = dir.path().join("probe").join("x.json");
        let v = tcg_verdict("no".into(), false);
        write_cached(&path, &v);
        let back = read_cached(&path).unwrap();
        assert!(back.from_cache);
        assert_eq!(back.accelerator, Accelerator::Tcg);
        assert_eq!(back.kvm_rejected_because.as_deref(), Some("no"));
    }

    #[test]
    fn timeout_reason_names_the_cause() {
        let e = BootError::Timeout {
            timeout: KVM_PROBE_DEADLINE,
            console_tail: "a\nb\n\nc\n".into(),
        };
        let s = describe_kvm_failure(&e);
        assert!(s.contains("within 10 s"), "{s}");
        assert!(s.contains("[last output: a | b | c]"), "{s}");
    }
}
