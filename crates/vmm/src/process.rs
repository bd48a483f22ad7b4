//! Spawning QEMU so that it can never outlive us, and killing its process group.
//!
//! Three layers make sure a QEMU dies with its owner:
//! - its own process group (`process_group(0)`), so one `killpg` takes QEMU and anything
//!   it might start, and a Ctrl+C on the terminal does not reach it before we decide;
//! - `PR_SET_PDEATHSIG(SIGKILL)`, so the kernel kills it when the owner dies, even by
//!   SIGKILL. The signal fires when the *thread* that forked exits, not the process: spawn
//!   VMs from a long-lived runtime (tokio worker threads live as long as the runtime; do
//!   not spawn from a short-lived `spawn_blocking` or scoped thread);
//! - `kill_on_drop`, for a `Child` dropped without teardown.
//!
//! The registry ([`crate::registry`]) covers what is left: a host that died between the
//! fork and `prctl` is caught by the `getppid()` check below.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::RawFd;
use std::path::Path;
use std::process::Stdio;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// Spawns `program args` in its own process group with the parent-death signal set. QEMU's
/// stdout and stderr go to `stderr_log` (it writes nothing to stdout with `-nographic` and a
/// file serial, but its error messages are the best hint when boot fails). `inherit` are
/// descriptors the program receives under the same numbers (all others close on exec).
pub fn spawn_owned(
    program: &Path,
    args: &[OsString],
    stderr_log: &Path,
    inherit: &[RawFd],
) -> io::Result<Child> {
    let inherit = inherit.to_vec();
    let log = File::create(stderr_log)?;
    let log2 = log.try_clone()?;
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log2))
        .stderr(Stdio::from(log))
        .process_group(0)
        .kill_on_drop(true);
    // SAFETY: the closure runs in the forked child before exec and only calls
    // async-signal-safe functions (prctl, getppid, setrlimit, fcntl) without allocating.
    unsafe {
        cmd.pre_exec(move || {
            die_with_parent(parent)?;
            // A crashing QEMU must not write the guest's memory (the user's data) to a
            // core file on the host.
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_CORE, &no_core) != 0 {
                return Err(io::Error::last_os_error());
            }
            for &fd in &inherit {
                crate::scratch::clear_cloexec(fd)?;
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns a helper into the existing process group `pgid` (a VM's QEMU group), with the
/// same parent-death signal, and pipes for its stdin and stdout.
pub fn spawn_helper(
    program: &Path,
    args: &[OsString],
    stderr_log: &Path,
    pgid: u32,
) -> io::Result<Child> {
    let log = File::create(stderr_log)?;
    let group = i32::try_from(pgid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let parent = std::process::id() as libc::pid_t;
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .process_group(group)
        .kill_on_drop(true);
    // SAFETY: as in `spawn_owned`: only async-signal-safe calls, no allocation.
    unsafe {
        cmd.pre_exec(move || die_with_parent(parent));
    }
    cmd.spawn()
}

/// In a forked child before exec: be SIGKILLed when `parent` (this process) dies. Only
/// async-signal-safe calls, no allocation.
fn die_with_parent(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: plain syscalls on integers.
    unsafe {
        if libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        // The parent may have died between fork and prctl; then no signal will come.
        if libc::getppid() != parent {
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    Ok(())
}

/// SIGKILLs process group `pgid`. A group that is already gone is not an error.
pub fn kill_group(pgid: u32) {
    let Ok(raw) = i32::try_from(pgid) else { return };
    if raw <= 1 {
        // killpg(0) would hit our own group and 1 is init: never, whatever the input says.
        return;
    }
    if let Err(e) = killpg(Pid::from_raw(raw), Signal::SIGKILL) {
        if e != nix::errno::Errno::ESRCH {
            tracing::warn!(pgid, error = %e, "killpg failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn spawned_child_has_own_group_and_dies_by_group_kill() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = spawn_owned(
            Path::new("sleep"),
            &["30".into()],
            &dir.path().join("err"),
            &[],
        )
        .unwrap();
        let pid = child.id().unwrap();
        let stat = crate::procstat::read_stat(pid).unwrap();
        assert_eq!(stat.pgid as u32, pid, "own process group");
        kill_group(pid);
        let status = tokio::time::timeout(Duration::from_secs(5), child.wait())
            .await
            .unwrap()
            .unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGKILL));
    }

    #[test]
    fn refuses_to_kill_group_zero_or_init() {
        kill_group(0);
        kill_group(1);
        kill_group(u32::MAX);
    }
}
