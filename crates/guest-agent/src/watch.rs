//! Watching running code: the poll loop that one-shot runs and REPL calls share, and the
//! notes the agent appends to stderr.
//!
//! Everything is driven from one thread with `poll(2)` over the output pipes, a pidfd for
//! the main process and (for a REPL) its control pipe, so output goes out the moment it is
//! read and the deadline, the main process's exit and the end of a REPL call are noticed
//! without sleeping.

use crate::kill;
use crate::pump::Pump;
use crate::spawn;
use protocol::{GuestMessage, Stream, MAX_CHUNK};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// How long output may keep flowing after everything was SIGKILLed. Only a process stuck in
/// the kernel could hold a pipe that long; we then stop waiting rather than hang.
pub(crate) const DRAIN_BOUND: Duration = Duration::from_secs(2);

/// Where messages for the host go. An `Err` means the channel is gone.
pub type Sink<'s> = dyn FnMut(GuestMessage) -> io::Result<()> + 's;

/// A side channel on which a long-lived process says that the current call is over.
pub(crate) trait Control {
    /// The descriptor to poll, or `None` once it is closed (so a hung-up pipe is not
    /// polled in a loop).
    fn fd(&self) -> Option<RawFd>;
    /// Reads what is available. `Some(status)` once the current call has finished.
    fn check(&mut self) -> io::Result<Option<i32>>;
}

/// What to watch and the rules to apply.
pub(crate) struct Watch<'a> {
    /// Every process of this uid is signalled on timeout and killed after the main process
    /// exits.
    pub uid: u32,
    /// Time between SIGTERM and SIGKILL on timeout.
    pub grace: Duration,
    pub deadline: Instant,
    pub child: &'a mut Child,
    /// `None` on kernels without pidfds: the exit is then checked every few ms.
    pub pidfd: Option<&'a OwnedFd>,
    /// Our ends of the stdout and stderr pipes (`None`: already at EOF).
    pub outputs: [Option<&'a File>; 2],
    /// Bytes of stdout and stderr forwarded before each stream is cut.
    pub caps: [u64; 2],
    pub control: Option<&'a mut dyn Control>,
}

/// How the watch ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The control channel reported the call done with this status; the process lives on.
    Reported(i32),
    /// The main process exited with this status and everything else of the uid was killed.
    Exited(ExitStatus),
    /// The deadline passed and everything was killed; the main process's status if it was
    /// reaped meanwhile.
    TimedOut(Option<ExitStatus>),
}

#[derive(Debug)]
pub(crate) struct Watched {
    pub end: End,
    /// stdout, stderr: output was cut at the cap.
    pub truncated: [bool; 2],
    /// stdout, stderr: the pipe reached EOF (or was given up on) and must not be read again.
    pub closed: [bool; 2],
}

/// Where the watch is in its life.
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

/// Forwards output under the caps until the call is reported done, the main process exits
/// or the deadline passes (see [`End`]). An `Err` is a sink or system-call failure; the
/// caller must then kill what is left.
pub(crate) fn watch(mut w: Watch, sink: &mut Sink) -> io::Result<Watched> {
    let mut pumps = [
        Pump::new(Stream::Stdout, w.caps[0]),
        Pump::new(Stream::Stderr, w.caps[1]),
    ];
    let mut open = w.outputs;
    let mut status: Option<ExitStatus> = None;
    let mut timed_out = false;
    let mut phase = Phase::Running {
        deadline: w.deadline,
    };
    let mut buf = vec![0u8; MAX_CHUNK];

    let end = loop {
        if let Some(status) = status.filter(|_| open.iter().all(Option::is_none)) {
            break if timed_out {
                End::TimedOut(Some(status))
            } else {
                End::Exited(status)
            };
        }
        let now = Instant::now();
        if now >= phase.wake_at() {
            phase = match phase {
                Phase::Running { .. } => {
                    timed_out = true;
                    kill::signal_all(w.uid, libc::SIGTERM)?;
                    Phase::Terminating {
                        kill_at: now + w.grace,
                    }
                }
                Phase::Terminating { .. } => kill_everything(w.uid, now)?,
                Phase::Draining { .. } => {
                    // Something unkillable holds a pipe: stop waiting for EOF.
                    open = [None, None];
                    if status.is_none() {
                        break End::TimedOut(None);
                    }
                    continue;
                }
            };
            continue;
        }

        let watch_exit = status.is_none();
        let running = matches!(phase, Phase::Running { .. });
        let control_fd = w.control.as_ref().filter(|_| running).and_then(|c| c.fd());
        let mut fds = [
            poll_entry(open[0].map(AsRawFd::as_raw_fd)),
            poll_entry(open[1].map(AsRawFd::as_raw_fd)),
            poll_entry(w.pidfd.filter(|_| watch_exit).map(AsRawFd::as_raw_fd)),
            poll_entry(control_fd),
        ];
        let mut wait = phase.wake_at().saturating_duration_since(now);
        if watch_exit && w.pidfd.is_none() {
            wait = wait.min(Duration::from_millis(5));
        }
        poll(&mut fds, Some(wait))?;

        for (i, pump) in pumps.iter_mut().enumerate() {
            if fds[i].revents == 0 {
                continue;
            }
            let Some(mut reader) = open[i] else {
                continue;
            };
            match reader.read(&mut buf) {
                Ok(0) => open[i] = None,
                Ok(n) => pump.forward(&buf[..n], sink)?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => open[i] = None,
            }
        }

        if fds[3].revents != 0 {
            if let Some(control) = w.control.as_mut() {
                if let Some(code) = control.check()? {
                    // The code's own writes all returned before it reported, so they are
                    // in the pipes now: take them, but only what was there (a chatty
                    // background process must not keep the call open).
                    for (file, pump) in open.iter_mut().zip(pumps.iter_mut()) {
                        drain_available(file, pump, &mut buf, sink)?;
                    }
                    break End::Reported(code);
                }
            }
        }

        if watch_exit && (w.pidfd.is_none() || fds[2].revents != 0) {
            if let Some(exit) = w.child.try_wait()? {
                status = Some(exit);
                // The run is over when the main process is: background processes that kept
                // the pipes open must not keep the caller waiting.
                if !matches!(phase, Phase::Draining { .. }) {
                    phase = kill_everything(w.uid, Instant::now())?;
                }
            }
        }
    };
    let [out, err] = pumps;
    Ok(Watched {
        end,
        truncated: [out.truncated, err.truncated],
        closed: [open[0].is_none(), open[1].is_none()],
    })
}

/// Reads what `file` holds right now, at most about one pipe's worth, without waiting.
fn drain_available(
    file: &mut Option<&File>,
    pump: &mut Pump,
    buf: &mut [u8],
    sink: &mut Sink,
) -> io::Result<()> {
    let Some(mut reader) = *file else {
        return Ok(());
    };
    let bound = spawn::pipe_capacity(reader) + buf.len();
    let mut taken = 0;
    while taken < bound && readable_now(reader.as_raw_fd())? {
        match reader.read(buf) {
            Ok(0) => {
                *file = None;
                break;
            }
            Ok(n) => {
                taken += n;
                pump.forward(&buf[..n], sink)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                *file = None;
                break;
            }
        }
    }
    Ok(())
}

/// Whether a read of `fd` would return at once (data, EOF or an error).
pub(crate) fn readable_now(fd: RawFd) -> io::Result<bool> {
    let mut fds = [poll_entry(Some(fd))];
    poll(&mut fds, Some(Duration::ZERO))?;
    Ok(fds[0].revents != 0)
}

fn kill_everything(uid: u32, now: Instant) -> io::Result<Phase> {
    kill::signal_all(uid, libc::SIGKILL)?;
    Ok(Phase::Draining {
        give_up_at: now + DRAIN_BOUND,
    })
}

/// A `pollfd` asking for input on `fd`; `None` becomes -1, which poll ignores.
pub(crate) fn poll_entry(fd: Option<RawFd>) -> libc::pollfd {
    libc::pollfd {
        fd: fd.unwrap_or(-1),
        events: libc::POLLIN,
        revents: 0,
    }
}

/// `poll(2)` for at most `wait` (`None`: no limit). An interrupted poll counts as a wakeup
/// with nothing ready.
pub(crate) fn poll(fds: &mut [libc::pollfd], wait: Option<Duration>) -> io::Result<()> {
    // Round up so we never spin on a sub-millisecond remainder.
    let timeout_ms = wait.map_or(-1, |w| {
        i32::try_from(w.as_micros().div_ceil(1000)).unwrap_or(i32::MAX)
    });
    // SAFETY: `fds` is a valid array of pollfd for its length; negative fds are ignored.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let err = io::Error::last_os_error();
        if err.kind() == io::ErrorKind::Interrupted {
            fds.iter_mut().for_each(|f| f.revents = 0);
            return Ok(());
        }
        return Err(err);
    }
    Ok(())
}

pub(crate) fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
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

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// "2 s", "1.5 s", "0.25 s": exact, without trailing zeros.
pub(crate) fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    let (whole, frac) = (ms / 1000, ms % 1000);
    if frac == 0 {
        format!("{whole} s")
    } else {
        let frac = format!("{frac:03}");
        format!("{whole}.{} s", frac.trim_end_matches('0'))
    }
}

/// The kernel's count of OOM kills so far (`oom_kill` in /proc/vmstat); 0 if unreadable.
pub(crate) fn oom_kills() -> u64 {
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

/// The notes for the end of a run, each starting with `\n[sandbox] ` (see CONTRACTS.md).
#[derive(Default)]
pub(crate) struct Notes(String);

impl Notes {
    /// Says so when the OOM killer struck since `kills_before` (from [`oom_kills`]).
    /// Otherwise a memory-hungry program just dies with 137 and no word as to why.
    pub(crate) fn oom_since(&mut self, kills_before: u64) {
        if oom_kills() > kills_before {
            self.add(&format!(
                "out of memory: the kernel killed a process of this run (the VM has {} MiB; ask for more memory)",
                memory_mib()
            ));
        }
    }

    /// "execution timed out after N s", then `more` (which starts with its punctuation).
    pub(crate) fn timed_out(&mut self, timeout: Duration, more: &str) {
        self.add(&format!(
            "execution timed out after {}{more}",
            seconds(timeout)
        ));
    }

    pub(crate) fn add(&mut self, text: &str) {
        self.0.push_str("\n[sandbox] ");
        self.0.push_str(text);
        self.0.push('\n');
    }

    /// Sends the notes, if any, on stderr. Past the cap on purpose: a note must arrive
    /// even when the code filled it.
    pub(crate) fn send(self, sink: &mut Sink) -> io::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        sink(GuestMessage::Output {
            stream: Stream::Stderr,
            data: self.0.into_bytes(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_seconds() {
        assert_eq!(seconds(Duration::from_secs(2)), "2 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds(Duration::from_millis(250)), "0.25 s");
    }

    #[test]
    fn notes_have_the_contract_prefix() {
        let mut notes = Notes::default();
        notes.timed_out(Duration::from_secs(2), "");
        notes.add("second");
        assert_eq!(
            notes.0,
            "\n[sandbox] execution timed out after 2 s\n\n[sandbox] second\n"
        );
    }
}
