//! One spawned, registered QEMU process and its teardown. Whatever happens to the owner of
//! an [`Instance`] (shutdown, error, a dropped future, a panic), the QEMU group is killed,
//! reaped, and its work dir and registry entry removed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::process::Child;

use crate::error::{BootError, ChannelError};
use crate::process::{kill_group, spawn_owned};
use crate::procstat;
use crate::registry::{Registry, Slot};

/// How much of the console log error messages quote.
const CONSOLE_TAIL_BYTES: u64 = 2048;
/// How long a synchronous `Drop` waits to reap a SIGKILLed QEMU before leaving it to
/// tokio's orphan reaper (it is dead either way; this only avoids a transient zombie).
const DROP_REAP_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub(crate) struct Instance {
    child: Child,
    pid: u32,
    exit: Option<ExitStatus>,
    slot: Slot,
    registry: Registry,
    spawned_at: Instant,
    torn_down: bool,
}

impl Instance {
    /// Allocates a registry slot, asks `args` for the command line (given the work dir) and
    /// spawns QEMU, which inherits the descriptors `inherit`. On failure nothing is left
    /// behind.
    pub async fn spawn(
        registry: &Registry,
        qemu: &Path,
        inherit: &[RawFd],
        args: impl FnOnce(&Path) -> Result<Vec<OsString>, BootError>,
    ) -> Result<Instance, BootError> {
        let slot = registry.allocate()?;
        let argv = match args(&slot.work_dir) {
            Ok(a) => a,
            Err(e) => {
                registry.release(&slot);
                return Err(e);
            }
        };
        tracing::debug!(qemu = %qemu.display(), args = ?argv, "spawning QEMU");
        let spawned_at = Instant::now();
        let child = match spawn_owned(qemu, &argv, &slot.work_dir.join("qemu.stderr"), inherit) {
            Ok(c) => c,
            Err(source) => {
                registry.release(&slot);
                return Err(BootError::Spawn {
                    qemu: qemu.to_path_buf(),
                    source,
                });
            }
        };
        // Freshly spawned and not yet waited for, so the pid is known (even if it already
        // exited it is an unreaped zombie). `0` is only a defensive fallback.
        let pid = child.id().unwrap_or(0);
        let mut inst = Instance {
            child,
            pid,
            exit: None,
            slot,
            registry: registry.clone(),
            spawned_at,
            torn_down: false,
        };
        // A zombie still has its stat file, so this only fails if /proc is unreadable; then
        // the entry is recorded with an impossible start time and reaping never kills it.
        let start = procstat::start_time(pid).unwrap_or(u64::MAX);
        if let Err(e) = inst.registry.record_qemu(&inst.slot, pid, start) {
            inst.shutdown().await;
            return Err(e.into());
        }
        Ok(inst)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn work_dir(&self) -> &Path {
        &self.slot.work_dir
    }

    pub fn path_in_work_dir(&self, name: &str) -> PathBuf {
        self.slot.work_dir.join(name)
    }

    pub fn spawned_at(&self) -> Instant {
        self.spawned_at
    }

    /// The exit status if QEMU has exited (reaping it).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// Waits up to `timeout` for QEMU to exit on its own.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit.is_none() {
            if let Ok(Ok(status)) = tokio::time::timeout(timeout, self.child.wait()).await {
                self.exit = Some(status);
            }
        }
        self.exit
    }

    /// `Ok` while QEMU runs normally; the typed failure when it exited or is frozen.
    pub fn check_alive(&mut self) -> Result<(), ChannelError> {
        if let Some(status) = self.try_exit() {
            return Err(ChannelError::QemuExited {
                status,
                console_tail: self.console_tail(),
            });
        }
        if let Some(stat) = procstat::read_stat(self.pid) {
            if let Some(state_name) = stat.frozen_state_name() {
                return Err(ChannelError::Frozen {
                    pid: self.pid,
                    state: stat.state,
                    state_name,
                });
            }
        }
        Ok(())
    }

    /// The last ~2 KB of the serial console, starting at a line boundary.
    pub fn console_tail(&self) -> String {
        tail_of(&self.slot.work_dir.join("console.log"), CONSOLE_TAIL_BYTES)
    }

    /// Whether the console log has `line` on a line of its own (the log of a probe boot is a
    /// few KB; reading is capped at 1 MiB anyway).
    pub fn console_has_line(&self, line: &str) -> bool {
        let text = tail_of(&self.slot.work_dir.join("console.log"), 1 << 20);
        text.lines().any(|l| l.trim() == line)
    }

    /// The last ~2 KB of QEMU's own stderr.
    pub fn stderr_tail(&self) -> String {
        tail_of(&self.slot.work_dir.join("qemu.stderr"), CONSOLE_TAIL_BYTES)
    }

    /// Kill the group, reap, remove the work dir and entry. Idempotent.
    pub async fn shutdown(&mut self) {
        if self.torn_down {
            return;
        }
        self.kill();
        if self.exit.is_none() {
            // SIGKILL cannot be ignored; the bound only guards against an unkillable (D
            // state) process, which is then left to tokio's reaper.
            if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await
            {
                self.exit = Some(s);
            }
        }
        self.registry.release(&self.slot);
        self.torn_down = true;
    }

    /// SIGKILL the group unless QEMU was already reaped (then its pgid may be recycled),
    /// and forget it in the registry before any reaping can free the pid.
    fn kill(&mut self) {
        if self.exit.is_none() && self.pid > 1 {
            kill_group(self.pid);
        }
        self.registry.forget(&self.slot);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.torn_down {
            return;
        }
        self.kill();
        let deadline = Instant::now() + DROP_REAP_WAIT;
        while self.try_exit().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        self.registry.release(&self.slot);
        self.torn_down = true;
    }
}

/// Reads up to the last `max` bytes of a file as lossy UTF-8, dropping a partial first line.
fn tail_of(path: &Path, max: u64) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(max);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    if f.read_to_end(&mut buf).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&buf);
    let text = if start > 0 {
        text.split_once('\n').map(|(_, rest)| rest).unwrap_or(&text)
    } else {
        &text
    };
    text.replace('\r', "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_starts_at_a_line_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let body: String = (0..1000).map(|i| format!("line {i}\r\n")).collect();
        std::fs::write(&p, body).unwrap();
        let t = tail_of(&p, 64);
        assert!(t.starts_with("line "), "{t:?}");
        assert!(t.ends_with("line 999\n"));
        assert!(!t.contains('\r'));
        assert_eq!(tail_of(&dir.path().join("missing"), 64), "");
    }

    #[tokio::test]
    async fn dropped_instance_kills_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let inst = Instance::spawn(&reg, Path::new("sleep"), &[], |_| Ok(vec!["60".into()]))
            .await
            .unwrap();
        let pid = inst.pid();
        let work = inst.work_dir().to_path_buf();
        assert!(work.is_dir());
        drop(inst);
        assert!(!work.exists());
        assert!(
            procstat::read_stat(pid).is_none(),
            "reaped, not even a zombie"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn check_alive_detects_stop_and_exit() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path()).unwrap();
        let mut inst = Instance::spawn(&reg, Path::new("sleep"), &[], |_| Ok(vec!["60".into()]))
            .await
            .unwrap();
        inst.check_alive().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(inst.pid() as i32),
            nix::sys::signal::Signal::SIGSTOP,
        )
        .unwrap();
        let mut frozen = false;
        for _ in 0..100 {
            if let Err(ChannelError::Frozen { state: 'T', .. }) = inst.check_alive() {
                frozen = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(frozen);
        inst.shutdown().await;
        assert!(matches!(
            inst.check_alive(),
            Err(ChannelError::QemuExited { .. })
        ));
        inst.shutdown().await; // idempotent
    }
}
