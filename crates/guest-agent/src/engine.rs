//! Runs one job to completion: spawn, stream output under caps, enforce the timeout, and
//! leave no process of the job's uid behind.
//!
//! Everything is driven from one thread with `poll(2)` over the two output pipes and a
//! pidfd for the main process, so output goes out the moment it is read and the timeout
//! and the main process's exit are noticed without sleeping.

use crate::kill;
use crate::pump::Pump;
use crate::spawn;
use protocol::{Completion, GuestMessage, Stream, MAX_CHUNK};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long output may keep flowing after everything was SIGKILLed. Only a process stuck in
/// the kernel could hold a pipe that long; we then stop waiting rather than hang.
const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// Everything needed to run one piece of code. The caller decides the environment; the
/// engine decides nothing about paths or users.
#[derive(Debug, Clone)]
pub struct Job {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The complete environment (nothing is inherited), later entries winning.
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// The code runs as this uid/gid, and every process of this uid is killed when the run
    /// ends. Must not be 0, and nothing unrelated may run as it.
    pub uid: u32,
    pub gid: u32,
    pub timeout: Duration,
    /// Time between SIGTERM and SIGKILL on timeout.
    pub grace: Duration,
    pub stdout_cap: u64,
    pub stderr_cap: u64,
    /// When the request arrived, for `spawn_ms`.
    pub received: Instant,
}

/// Where the run is in its life.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The code runs until the deadline.
    Running { deadline: Instant },
    /// Timed out and SIGTERMed; SIGKILL follows at `kill_at` unless the main process exits.
    Terminating { kill_at: Instant },
    /// Everything was SIGKILLed; drain what is left in the pipes until `give_up_at`.
    Draining { give_up_at: Instant },
}

impl Phase {
    fn wake_at(self) -> Instant {
        match self {
            Phase::Running { deadline } => deadline,
            Phase::Terminating { kill_at } => kill_at,
            Phase::Draining { give_up_at } => give_up_at,
        }
    }
}

/// Runs `job`, sending `Output*` then exactly one `Completed` or `Failed` to `sink`.
///
/// An `Err` means the sink failed (the channel is gone); the job's processes have been
/// killed anyway.
pub fn run(job: &Job, sink: &mut dyn FnMut(GuestMessage) -> io::Result<()>) -> io::Result<()> {
    let mut child = match spawn::spawn(job) {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot start {}: {e}", job.program.display());
            return sink(GuestMessage::Failed { message });
        }
    };
    let started = Instant::now();
    let spawn_ms = millis(started.duration_since(job.received));
    let oom_kills_before = oom_kills();
    let result = supervise(job, &mut child, started, sink);
    // Whatever happened, nothing of this run may outlive it. If the main process is still
    // unreaped (sink failure), SIGKILL got it and this wait returns at once.
    let cleanup = kill::kill_all(job.uid, DRAIN_BOUND);
    let (status, timed_out, stdout_truncated, stderr_truncated) = result?;
    let status = match status {
        Some(status) => status,
        None => child.wait()?,
    };
    if !cleanup? {
        eprintln!(
            "sbx-agent: some processes of uid {} survived SIGKILL",
            job.uid
        );
    }
    let mut notes = String::new();
    if oom_kills() > oom_kills_before {
        // Otherwise a memory-hungry program just dies with 137 and no word as to why.
        notes.push_str(&format!(
            "\n[sandbox] out of memory: the kernel killed a process of this run (the VM has {} MiB; ask for more memory)\n",
            memory_mib()
        ));
    }
    if timed_out {
        notes.push_str(&format!(
            "\n[sandbox] execution timed out after {}\n",
            seconds(job.timeout)
        ));
    }
    if !notes.is_empty() {
        // Sent past the cap on purpose: the note must arrive even when the code filled it.
        sink(GuestMessage::Output {
            stream: Stream::Stderr,
            data: notes.into_bytes(),
        })?;
    }
    sink(GuestMessage::Completed(Completion {
        exit_code: if timed_out { -1 } else { exit_code(status) },
        timed_out,
        stdout_truncated,
        stderr_truncated,
        spawn_ms,
        run_ms: millis(started.elapsed()),
        repl_fresh: false,
        repl_lost: false,
    }))
}

type Supervised = (Option<ExitStatus>, bool, bool, bool);

/// The kernel's count of OOM kills so far (`oom_kill` in /proc/vmstat); 0 if unreadable.
fn oom_kills() -> u64 {
    std::fs::read_to_string("/proc/vmstat")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Memory the guest kernel manages, in MiB (a little under what the VM was given).
fn memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let kb: u64 = l
                    .strip_prefix("MemTotal:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse()
                    .ok()?;
                Some(kb / 1024)
            })
        })
        .unwrap_or(0)
}

/// Pipe capacity for the code's output: as large as the stdout cap.
const PIPE_CAPACITY: libc::c_int = 1 << 20;

/// Runtimes that make stdout non-blocking (Bun, Node) drop whatever the pipe cannot take
/// at the moment they exit (`process.exit()` right after a big write). A pipe as large as
/// the output cap lets such a write complete at once. Best effort: a smaller pipe still
/// works for everything else.
fn enlarge_pipe(file: &File) {
    // SAFETY: F_SETPIPE_SZ on a pipe fd we own; no memory is passed.
    unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_CAPACITY) };
}

/// The poll loop: forwards output, watches the deadline and the main process.
fn supervise(
    job: &Job,
    child: &mut Child,
    started: Instant,
    sink: &mut dyn FnMut(GuestMessage) -> io::Result<()>,
) -> io::Result<Supervised> {
    // Both pipe ends as plain files so one loop can poll and read them alike.
    let mut pipes: [(Option<File>, Pump); 2] = [
        (
            child.stdout.take().map(|p| File::from(OwnedFd::from(p))),
            Pump::new(Stream::Stdout, job.stdout_cap),
        ),
        (
            child.stderr.take().map(|p| File::from(OwnedFd::from(p))),
            Pump::new(Stream::Stderr, job.stderr_cap),
        ),
    ];
    for file in pipes.iter().filter_map(|(p, _)| p.as_ref()) {
        enlarge_pipe(file);
    }
    // Without a pidfd (kernels before 5.3) we fall back to checking every few ms.
    let pidfd = pidfd_open(child.id()).ok();
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    let mut phase = Phase::Running {
        deadline: started + job.timeout,
    };
    let mut buf = vec![0u8; MAX_CHUNK];

    loop {
        if status.is_some() && pipes.iter().all(|(p, _)| p.is_none()) {
            break;
        }
        let now = Instant::now();
        if now >= phase.wake_at() {
            phase = match phase {
                Phase::Running { .. } => {
                    timed_out = true;
                    kill::signal_all(job.uid, libc::SIGTERM)?;
                    Phase::Terminating {
                        kill_at: now + job.grace,
                    }
                }
                Phase::Terminating { .. } => kill_everything(job.uid, now)?,
                Phase::Draining { .. } => {
                    // Something unkillable holds a pipe: stop waiting for EOF.
                    pipes.iter_mut().for_each(|(p, _)| *p = None);
                    continue;
                }
            };
            continue;
        }

        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        for (pipe, _) in &pipes {
            let fd = pipe.as_ref().map_or(-1, |p| p.as_raw_fd());
            fds.push(libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let watch_exit = status.is_none();
        let pid_fd = pidfd
            .as_ref()
            .filter(|_| watch_exit)
            .map_or(-1, |fd| fd.as_raw_fd());
        fds.push(libc::pollfd {
            fd: pid_fd,
            events: libc::POLLIN,
            revents: 0,
        });
        let mut wait = phase.wake_at().saturating_duration_since(now);
        if watch_exit && pidfd.is_none() {
            wait = wait.min(Duration::from_millis(5));
        }
        // Round up so we never spin on a sub-millisecond remainder.
        let timeout_ms = i32::try_from(wait.as_micros().div_ceil(1000)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a valid array of pollfd for its length; negative fds are ignored.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }

        for (i, (pipe, pump)) in pipes.iter_mut().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            let Some(reader) = pipe.as_mut() else {
                continue;
            };
            match reader.read(&mut buf) {
                Ok(0) => *pipe = None,
                Ok(n) => pump.forward(&buf[..n], sink)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => *pipe = None,
            }
        }

        if watch_exit && (pidfd.is_none() || fds[2].revents != 0) {
            if let Some(exit) = child.try_wait()? {
                status = Some(exit);
                // The run is over when the main process is: background processes that kept
                // the pipes open must not keep the caller waiting.
                if !matches!(phase, Phase::Draining { .. }) {
                    phase = kill_everything(job.uid, Instant::now())?;
                }
            }
        }
    }
    let [(_, out), (_, err)] = pipes;
    Ok((status, timed_out, out.truncated, err.truncated))
}

fn kill_everything(uid: u32, now: Instant) -> io::Result<Phase> {
    kill::signal_all(uid, libc::SIGKILL)?;
    Ok(Phase::Draining {
        give_up_at: now + DRAIN_BOUND,
    })
}

fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd and nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Unix convention: the exit status, or 128+N when killed by signal N.
pub fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(code), _) => code,
        (None, Some(sig)) => 128 + sig,
        (None, None) => -1,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// "2 s", "1.5 s", "0.25 s": exact, without trailing zeros.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        format!("{whole} s")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{} s", frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::seconds;
    use std::time::Duration;

    #[test]
    fn formats_seconds() {
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25 s");
    }
}
