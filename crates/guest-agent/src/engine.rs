//! Runs one job to completion: spawn, stream output under caps, enforce the timeout, and
//! leave no process of the job's uid behind. The poll loop itself is [`crate::watch`],
//! shared with the REPLs.

use crate::kill;
use crate::spawn::{self, Launch};
use crate::watch::{self, End, Notes, Sink, Watch, DRAIN_BOUND};
use protocol::{Completion, GuestMessage};
use std::ffi::OsString;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::watch::exit_code;

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

/// Runs `job`, sending `Output*` then exactly one `Completed` or `Failed` to `sink`.
///
/// An `Err` means the sink failed (the channel is gone); the job's processes have been
/// killed anyway.
pub fn run(job: &Job, sink: &mut Sink) -> io::Result<()> {
    let launch = Launch {
        program: &job.program,
        args: &job.args,
        env: &job.env,
        cwd: &job.cwd,
        uid: job.uid,
        gid: job.gid,
        fds: &[],
    };
    let mut child = match spawn::spawn(&launch) {
        Ok(child) => child,
        Err(e) => {
            let message = format!("cannot start {}: {e}", job.program.display());
            return sink(GuestMessage::Failed { message });
        }
    };
    let started = Instant::now();
    let spawn_ms = watch::millis(started.duration_since(job.received));
    let oom_kills_before = watch::oom_kills();
    let [stdout, stderr] = spawn::output_pipes(&mut child);
    // Without a pidfd (kernels before 5.3) the watch falls back to checking every few ms.
    let pidfd = watch::pidfd_open(child.id()).ok();
    let result = watch::watch(
        Watch {
            uid: job.uid,
            grace: job.grace,
            deadline: started + job.timeout,
            child: &mut child,
            pidfd: pidfd.as_ref(),
            outputs: [stdout.as_ref(), stderr.as_ref()],
            caps: [job.stdout_cap, job.stderr_cap],
            control: None,
        },
        sink,
    );
    // Whatever happened, nothing of this run may outlive it. If the main process is still
    // unreaped (sink failure), SIGKILL got it and this wait returns at once.
    let cleanup = kill::kill_all(job.uid, DRAIN_BOUND);
    let watched = result?;
    let (status, timed_out) = match watched.end {
        End::Exited(status) => (Some(status), false),
        End::TimedOut(status) => (status, true),
        // Only a control channel reports, and a one-shot run has none.
        End::Reported(_) => (None, false),
    };
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
    let mut notes = Notes::default();
    notes.oom_since(oom_kills_before);
    if timed_out {
        notes.timed_out(job.timeout, "");
    }
    notes.send(sink)?;
    let [stdout_truncated, stderr_truncated] = watched.truncated;
    sink(GuestMessage::Completed(Completion {
        exit_code: if timed_out { -1 } else { exit_code(status) },
        timed_out,
        stdout_truncated,
        stderr_truncated,
        spawn_ms,
        run_ms: watch::millis(started.elapsed()),
        repl_fresh: false,
        repl_lost: false,
    }))
}
