//! Persistent REPLs: one long-lived interpreter per language that runs a session's calls
//! one after another, so definitions, the working directory and background processes carry
//! over from one call to the next.
//!
//! Each REPL is a small driver program (`drivers/`) run by the language's interpreter as
//! the sandbox user. Control never travels on stdout or stderr, which belong to the code:
//!
//! - The agent writes the cell's code and its environment (NUL-separated `K=V`) to
//!   root-owned, read-only files `<cells>/<seq>.<ext>` and `<cells>/<seq>.env`, then one
//!   line `<seq> <nonce>` on the driver's fd 3.
//! - The driver runs the cell and answers `<nonce> <status>` on its fd 4. Only a line with
//!   the current call's nonce ends the call; anything else on fd 4 is ignored.
//! - The code's own writes have all returned by the time the driver answers, so after the
//!   answer the agent takes what is in the stdout/stderr pipes (without waiting) and the
//!   call is complete.
//!
//! Output written between calls (a background thread, a server) belongs to no call: while
//! idle the agent reads and discards it (so a chatty writer never blocks on a full pipe),
//! and right before a cell is sent whatever is still buffered is discarded too.
//!
//! A successful call leaves every process alone. When the REPL ends during a call (it
//! exits, is killed, or the call times out) every process of the sandbox uid is killed, so
//! the next call starts from a clean slate in a fresh REPL.

use crate::channel::Idle;
use crate::code;
use crate::kill;
use crate::spawn::{self, Launch};
use crate::watch::{self, Control, End, Notes, Sink, Watch, DRAIN_BOUND};
use protocol::{Completion, ExecRequest, GuestMessage, Language};
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

/// Where the REPLs come from and whom they run as. Every environment-specific value is
/// here so the REPLs can be tested on an ordinary Linux host as root.
#[derive(Debug, Clone)]
pub struct Setup {
    pub python: PathBuf,
    pub bun: PathBuf,
    pub bash: PathBuf,
    /// Root-owned directory the driver programs are written to (world-readable files).
    pub driver_dir: PathBuf,
    /// Root-owned directory for the per-call code and environment files.
    pub cells_dir: PathBuf,
    /// The REPLs run as this uid/gid. When a REPL is lost every process of this uid is
    /// killed; must not be 0, and nothing unrelated may run as it.
    pub uid: u32,
    pub gid: u32,
    /// The REPL's working directory when it starts.
    pub home: PathBuf,
    /// The REPL process's environment; a call's own variables are applied by the driver
    /// for that call only.
    pub env: Vec<(String, String)>,
    /// Time between SIGTERM and SIGKILL on timeout.
    pub grace: Duration,
}

const PYTHON_DRIVER: &str = include_str!("../drivers/python_repl.py");
const BUN_DRIVER: &str = include_str!("../drivers/bun_repl.js");
const BASH_DRIVER: &str = include_str!("../drivers/bash_repl.sh");

/// The descriptor numbers of the control pipes in the driver.
const REQUEST_FD: RawFd = 3;
const REPLY_FD: RawFd = 4;
/// A reply line is a nonce and a number; anything much longer is not one.
const MAX_LINE: usize = 256;
/// How much of a failed driver's output is quoted in the failure message.
const STARTUP_OUTPUT: usize = 4096;

/// How each language's REPL is run.
struct Driver {
    /// The name used in notes ("the python REPL exited …").
    name: &'static str,
    file: &'static str,
    source: &'static str,
    /// Extension of the cell files the driver reads.
    cell_ext: &'static str,
}

fn driver(language: Language) -> Driver {
    match language {
        Language::Python => Driver {
            name: "python",
            file: "python_repl.py",
            source: PYTHON_DRIVER,
            cell_ext: "py",
        },
        Language::Javascript => Driver {
            name: "javascript",
            file: "bun_repl.js",
            source: BUN_DRIVER,
            cell_ext: "ts",
        },
        Language::Raw => Driver {
            name: "bash",
            file: "bash_repl.sh",
            source: BASH_DRIVER,
            cell_ext: "sh",
        },
    }
}

impl Setup {
    /// Interpreter and arguments that run `driver` over the cells directory.
    fn command(&self, language: Language, driver: &Path) -> (&Path, Vec<OsString>) {
        let cells = self.cells_dir.as_os_str().to_owned();
        match language {
            // Unbuffered: output must be in the pipe by the time the driver reports.
            Language::Python => (
                &self.python,
                vec!["-u".into(), driver.as_os_str().to_owned(), cells],
            ),
            // Without auto-install, bare imports resolve from node_modules even when it
            // appears after the start (a package added during the session); with it, Bun
            // decides at start-up to fetch them from the registry instead.
            Language::Javascript => (
                &self.bun,
                vec!["--no-install".into(), driver.as_os_str().to_owned(), cells],
            ),
            Language::Raw => (
                &self.bash,
                vec![
                    "--norc".into(),
                    "--noprofile".into(),
                    driver.as_os_str().to_owned(),
                    cells,
                ],
            ),
        }
    }
}

/// The driver's answers on its fd 4, split into lines.
struct Replies {
    /// `None` after EOF (the driver and everything that inherited fd 4 are gone).
    file: Option<File>,
    partial: Vec<u8>,
    /// Inside an overlong line: ignore everything up to the next newline.
    skipping: bool,
}

impl Replies {
    fn fd(&self) -> Option<RawFd> {
        self.file.as_ref().map(AsRawFd::as_raw_fd)
    }

    /// Reads once (the caller polled) and returns the first whole line `accept` maps to a
    /// value. Lines before it are consumed; partial input is kept for the next read.
    fn read<T>(&mut self, mut accept: impl FnMut(&str) -> Option<T>) -> io::Result<Option<T>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(None);
        };
        let mut buf = [0u8; 4096];
        let n = match file.read(&mut buf) {
            Ok(0) => {
                self.file = None;
                return Ok(None);
            }
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
                ) =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        let mut found = None;
        for &byte in &buf[..n] {
            if byte == b'\n' {
                let line = std::mem::take(&mut self.partial);
                if !std::mem::take(&mut self.skipping) && found.is_none() {
                    found = std::str::from_utf8(&line).ok().and_then(&mut accept);
                }
            } else if !self.skipping {
                self.partial.push(byte);
                if self.partial.len() > MAX_LINE {
                    self.partial.clear();
                    self.skipping = true;
                }
            }
        }
        Ok(found)
    }

    /// Forgets everything received so far, including what is still in the pipe.
    fn discard(&mut self) {
        while self
            .fd()
            .is_some_and(|fd| watch::readable_now(fd).unwrap_or(false))
        {
            if self.read(|_| Some(())).is_err() {
                self.file = None;
            }
        }
        self.partial.clear();
        self.skipping = false;
    }
}

/// Ends a call when the driver answers with this call's nonce.
struct CallControl<'a> {
    replies: &'a mut Replies,
    nonce: &'a str,
}

impl Control for CallControl<'_> {
    fn fd(&self) -> Option<RawFd> {
        self.replies.fd()
    }

    fn check(&mut self) -> io::Result<Option<i32>> {
        let nonce = self.nonce;
        self.replies.read(|line| {
            let (got, status) = line.split_once(' ')?;
            (got == nonce).then(|| status.parse().ok()).flatten()
        })
    }
}

/// One running REPL.
struct Repl {
    language: Language,
    child: Child,
    /// `None` on kernels without pidfds: a death between calls is then found at the next
    /// call rather than while idle.
    pidfd: Option<OwnedFd>,
    /// Our ends of its stdout and stderr (`None` once at EOF).
    outputs: [Option<File>; 2],
    /// Our end of its fd 3 (non-blocking: a driver that stopped reading must not hang us).
    requests: File,
    replies: Replies,
}

impl Repl {
    /// Reads and drops whatever its pipes hold right now, at most about a pipe's worth each
    /// (a writer that never stops must not keep us here).
    fn discard_output(&mut self) {
        let mut buf = vec![0u8; protocol::MAX_CHUNK];
        for slot in &mut self.outputs {
            let Some(file) = slot.as_mut() else {
                continue;
            };
            let bound = spawn::pipe_capacity(file) + buf.len();
            let mut taken = 0;
            while taken < bound && watch::readable_now(file.as_raw_fd()).unwrap_or(false) {
                match file.read(&mut buf) {
                    Ok(0) => {
                        *slot = None;
                        break;
                    }
                    Ok(n) => taken += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        *slot = None;
                        break;
                    }
                }
            }
        }
        self.replies.discard();
    }

    /// Whether the process has exited (reaping it if so).
    fn exited(&mut self) -> Option<ExitStatus> {
        match self.child.try_wait() {
            Ok(status) => status,
            // Not our child any more (cannot happen) or waitpid failed: treat as gone.
            Err(_) => Some(ExitStatus::default()),
        }
    }
}

/// Why a REPL could not be made ready for a call.
enum StartError {
    /// It never got going; the code did not run.
    Failed(String),
    /// The call's deadline passed while it was starting; everything was killed.
    TimedOut,
    /// A system call the agent needs failed.
    Io(io::Error),
}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Io(e)
    }
}

/// All REPLs of this agent, at most one per language.
pub struct Repls {
    setup: Setup,
    live: Vec<Repl>,
    /// Numbers the cell files; never reused, so a late reader cannot pick up a newer cell.
    seq: u64,
}

impl Repls {
    pub fn new(setup: Setup) -> Self {
        Self {
            setup,
            live: Vec::new(),
            seq: 0,
        }
    }

    /// Runs `req` in its language's REPL (starting one if needed), sending `Output*` then
    /// exactly one `Completed` or `Failed` to `sink`.
    ///
    /// An `Err` means the sink failed (the channel is gone); the REPL and everything of the
    /// uid have then been killed.
    pub fn exec(
        &mut self,
        req: &ExecRequest,
        received: Instant,
        sink: &mut Sink,
    ) -> io::Result<()> {
        let timeout = Duration::from_millis(req.timeout_ms);
        let oom_kills_before = watch::oom_kills();
        self.reap_dead();
        let mut deadline = None;
        let index = match self.live.iter().position(|r| r.language == req.language) {
            Some(index) => index,
            None => {
                // Like a one-shot run, the timeout covers the interpreter's start.
                let until = Instant::now() + timeout;
                deadline = Some(until);
                match self.start(req.language, until) {
                    Ok(repl) => {
                        self.live.push(repl);
                        self.live.len() - 1
                    }
                    Err(StartError::Failed(message)) => {
                        return sink(GuestMessage::Failed { message })
                    }
                    Err(StartError::Io(e)) => {
                        let message = format!("cannot start the REPL: {e}");
                        return sink(GuestMessage::Failed { message });
                    }
                    Err(StartError::TimedOut) => {
                        let mut notes = Notes::default();
                        notes.oom_since(oom_kills_before);
                        notes.timed_out(timeout, &lost_suffix(req.language));
                        notes.send(sink)?;
                        return sink(GuestMessage::Completed(Completion {
                            exit_code: -1,
                            timed_out: true,
                            stdout_truncated: false,
                            stderr_truncated: false,
                            spawn_ms: watch::millis(received.elapsed()),
                            run_ms: 0,
                            repl_fresh: true,
                            repl_lost: true,
                        }));
                    }
                }
            }
        };
        let fresh = deadline.is_some();
        let result = self.call(index, req, received, deadline, sink);
        match result {
            Ok(Call {
                end,
                truncated: [stdout_truncated, stderr_truncated],
                started,
            }) => {
                let run_ms = watch::millis(started.elapsed());
                let spawn_ms = watch::millis(started.duration_since(received));
                let mut notes = Notes::default();
                let exit_code = match end {
                    End::Reported(code) => code,
                    End::Exited(status) => {
                        self.lose(index);
                        notes.oom_since(oom_kills_before);
                        notes.add(&exit_note(req.language, status));
                        watch::exit_code(status)
                    }
                    End::TimedOut(_) => {
                        self.lose(index);
                        notes.oom_since(oom_kills_before);
                        notes.timed_out(timeout, &lost_suffix(req.language));
                        -1
                    }
                };
                if matches!(end, End::Reported(_)) {
                    // A REPL that survives can still have lost processes to the OOM killer.
                    notes.oom_since(oom_kills_before);
                }
                notes.send(sink)?;
                let lost = !matches!(end, End::Reported(_));
                sink(GuestMessage::Completed(Completion {
                    exit_code,
                    timed_out: matches!(end, End::TimedOut(_)),
                    stdout_truncated,
                    stderr_truncated,
                    spawn_ms,
                    run_ms,
                    repl_fresh: fresh,
                    repl_lost: lost,
                }))
            }
            Err(CallError::Failed(message)) => sink(GuestMessage::Failed { message }),
            Err(CallError::Io(e)) => {
                // The sink (or a system call) failed mid-call: nothing of the call may
                // outlive it, and the REPL's state is unknown.
                self.lose(index);
                Err(e)
            }
        }
    }

    /// Hands one cell to the REPL at `index` and watches it until it ends.
    fn call(
        &mut self,
        index: usize,
        req: &ExecRequest,
        received: Instant,
        deadline: Option<Instant>,
        sink: &mut Sink,
    ) -> Result<Call, CallError> {
        self.seq += 1;
        let seq = self.seq;
        let drv = driver(req.language);
        let cells = self.setup.cells_dir.clone();
        let code_name = format!("{seq}.{}", drv.cell_ext);
        let env_name = format!("{seq}.env");
        let written = code::write_file(&cells, &code_name, req.code.as_bytes())
            .and_then(|_| code::write_file(&cells, &env_name, &env_file(&req.env)));
        if let Err(e) = written {
            remove_cell(&cells, &code_name, &env_name);
            return Err(CallError::Failed(format!(
                "cannot write the cell file: {e}"
            )));
        }
        let nonce = nonce(&req.entropy, seq);
        let repl = &mut self.live[index];
        repl.discard_output();
        let started = Instant::now();
        let deadline = deadline.unwrap_or(started + Duration::from_millis(req.timeout_ms));
        if let Err(e) = repl
            .requests
            .write_all(format!("{seq} {nonce}\n").as_bytes())
        {
            // A dead driver (EPIPE) is noticed by the watch through its pidfd; one that
            // stopped reading runs into the deadline.
            eprintln!("sbx-agent: sending a cell to the {} REPL: {e}", drv.name);
        }
        let _ = received;
        let Repl {
            child,
            pidfd,
            outputs,
            replies,
            ..
        } = repl;
        let mut control = CallControl {
            replies,
            nonce: &nonce,
        };
        let watched = watch::watch(
            Watch {
                uid: self.setup.uid,
                grace: self.setup.grace,
                deadline,
                child,
                pidfd: pidfd.as_ref(),
                outputs: [outputs[0].as_ref(), outputs[1].as_ref()],
                caps: [req.stdout_cap, req.stderr_cap],
                control: Some(&mut control),
            },
            sink,
        );
        remove_cell(&cells, &code_name, &env_name);
        let watched = watched.map_err(CallError::Io)?;
        for (slot, closed) in outputs.iter_mut().zip(watched.closed) {
            if closed {
                *slot = None;
            }
        }
        Ok(Call {
            end: watched.end,
            truncated: watched.truncated,
            started,
        })
    }

    /// Starts the language's REPL and waits (until `deadline`) for its driver to say it
    /// is ready.
    fn start(&mut self, language: Language, deadline: Instant) -> Result<Repl, StartError> {
        let drv = driver(language);
        let driver_path = install_driver(&self.setup.driver_dir, &drv).map_err(|e| {
            StartError::Failed(format!("cannot write the {} REPL driver: {e}", drv.name))
        })?;
        // Cells of an earlier agent (or REPL) are of no use to anyone.
        if self.live.is_empty() {
            if let Err(e) = code::clear(&self.setup.cells_dir) {
                eprintln!("sbx-agent: clearing the cells directory: {e}");
            }
        }
        let (program, args) = self.setup.command(language, &driver_path);
        let (request_rx, request_tx) = spawn::pipe()?;
        let (reply_rx, reply_tx) = spawn::pipe()?;
        let launch = Launch {
            program,
            args: &args,
            env: &self.setup.env,
            cwd: &self.setup.home,
            uid: self.setup.uid,
            gid: self.setup.gid,
            fds: &[
                (request_rx.as_fd(), REQUEST_FD),
                (reply_tx.as_fd(), REPLY_FD),
            ],
        };
        let mut child = spawn::spawn(&launch)
            .map_err(|e| StartError::Failed(format!("cannot start {}: {e}", program.display())))?;
        // Only the driver holds these ends now, so EOF and EPIPE say that it is gone.
        drop((request_rx, reply_tx));
        spawn::set_nonblocking(&request_tx)?;
        let outputs = spawn::output_pipes(&mut child);
        let pidfd = watch::pidfd_open(child.id()).ok();
        let mut repl = Repl {
            language,
            child,
            pidfd,
            outputs,
            requests: request_tx,
            replies: Replies {
                file: Some(reply_rx),
                partial: Vec::new(),
                skipping: false,
            },
        };
        match wait_ready(&mut repl, deadline) {
            Ok(()) => Ok(repl),
            Err(e) => {
                self.kill_everything();
                // SIGKILLed above if it was still running, so this returns at once.
                let _ = repl.child.wait();
                Err(match e {
                    ReadyError::Exited(status, output) => StartError::Failed(format!(
                        "the {} REPL failed to start ({}){}",
                        drv.name,
                        describe(status),
                        quote(&output)
                    )),
                    ReadyError::TimedOut => StartError::TimedOut,
                    ReadyError::Io(e) => StartError::Io(e),
                })
            }
        }
    }

    /// Drops REPLs whose process has exited since we last looked. The state of a session
    /// is its REPL and the processes it started: with the REPL gone, the rest goes too.
    fn reap_dead(&mut self) {
        let mut any = false;
        self.live.retain_mut(|repl| {
            let dead = repl.exited().is_some();
            any |= dead;
            !dead
        });
        if any {
            self.kill_everything();
        }
    }

    /// Forgets the REPL at `index` after killing everything of the uid.
    fn lose(&mut self, index: usize) {
        self.kill_everything();
        let mut repl = self.live.swap_remove(index);
        let _ = repl.child.wait();
    }

    fn kill_everything(&self) {
        match kill::kill_all(self.setup.uid, DRAIN_BOUND) {
            Ok(true) => {}
            Ok(false) => eprintln!(
                "sbx-agent: some processes of uid {} survived SIGKILL",
                self.setup.uid
            ),
            Err(e) => eprintln!("sbx-agent: killing the processes of a lost REPL: {e}"),
        }
    }
}

impl Idle for Repls {
    fn fds(&self, out: &mut Vec<RawFd>) {
        for repl in &self.live {
            out.extend(repl.outputs.iter().flatten().map(AsRawFd::as_raw_fd));
            out.extend(repl.replies.fd());
            out.extend(repl.pidfd.as_ref().map(AsRawFd::as_raw_fd));
        }
    }

    fn service(&mut self, ready: &[RawFd]) {
        let mut buf = vec![0u8; protocol::MAX_CHUNK];
        let mut any_dead = false;
        for repl in &mut self.live {
            for slot in &mut repl.outputs {
                let Some(file) = slot.as_mut() else {
                    continue;
                };
                if !ready.contains(&file.as_raw_fd()) {
                    continue;
                }
                // Between calls output belongs to no one: read it so the writer never
                // blocks, and drop it.
                match file.read(&mut buf) {
                    Ok(0) => *slot = None,
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => *slot = None,
                }
            }
            if repl.replies.fd().is_some_and(|fd| ready.contains(&fd))
                && repl.replies.read(|_| None::<()>).is_err()
            {
                repl.replies.file = None;
            }
            let pid_ready = repl
                .pidfd
                .as_ref()
                .is_some_and(|fd| ready.contains(&fd.as_raw_fd()));
            if pid_ready {
                any_dead |= repl.exited().is_some();
            }
        }
        if any_dead {
            self.reap_dead();
        }
    }
}

impl Drop for Repls {
    fn drop(&mut self) {
        if self.live.is_empty() {
            return;
        }
        self.kill_everything();
        for repl in &mut self.live {
            let _ = repl.child.wait();
        }
    }
}

/// How a call's watch ended, and when the cell was handed over.
struct Call {
    end: End,
    truncated: [bool; 2],
    started: Instant,
}

enum CallError {
    /// The cell could not be handed over; the code did not run, the REPL is intact.
    Failed(String),
    Io(io::Error),
}

enum ReadyError {
    /// The driver exited before it was ready, with this status and (the start of) its output.
    Exited(ExitStatus, Vec<u8>),
    TimedOut,
    Io(io::Error),
}

/// Waits for the driver's `ready` line, collecting what it prints meanwhile (that is the
/// driver's own complaint if it fails: no user code has run yet).
fn wait_ready(repl: &mut Repl, deadline: Instant) -> Result<(), ReadyError> {
    let mut output = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Err(ReadyError::TimedOut);
        }
        let mut fds = [
            watch::poll_entry(repl.outputs[0].as_ref().map(AsRawFd::as_raw_fd)),
            watch::poll_entry(repl.outputs[1].as_ref().map(AsRawFd::as_raw_fd)),
            watch::poll_entry(repl.replies.fd()),
            watch::poll_entry(repl.pidfd.as_ref().map(AsRawFd::as_raw_fd)),
        ];
        let mut wait = deadline - now;
        if repl.pidfd.is_none() {
            wait = wait.min(Duration::from_millis(5));
        }
        watch::poll(&mut fds, Some(wait)).map_err(ReadyError::Io)?;
        for (slot, pfd) in repl.outputs.iter_mut().zip(&fds) {
            let Some(file) = slot.as_mut().filter(|_| pfd.revents != 0) else {
                continue;
            };
            match file.read(&mut buf) {
                Ok(0) => *slot = None,
                Ok(n) => {
                    let room = STARTUP_OUTPUT.saturating_sub(output.len());
                    output.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => *slot = None,
            }
        }
        if fds[2].revents != 0 {
            let ready = repl
                .replies
                .read(|line| (line == "ready").then_some(()))
                .map_err(ReadyError::Io)?;
            if ready.is_some() {
                return Ok(());
            }
        }
        if repl.pidfd.is_none() || fds[3].revents != 0 {
            if let Some(status) = repl.child.try_wait().map_err(ReadyError::Io)? {
                // Its last words may still be in the pipes.
                for slot in repl.outputs.iter_mut() {
                    while let Some(file) = slot.as_mut() {
                        if !watch::readable_now(file.as_raw_fd()).map_err(ReadyError::Io)? {
                            break;
                        }
                        match file.read(&mut buf) {
                            Ok(0) | Err(_) => *slot = None,
                            Ok(n) => {
                                let room = STARTUP_OUTPUT.saturating_sub(output.len());
                                output.extend_from_slice(&buf[..n.min(room)]);
                            }
                        }
                    }
                }
                return Err(ReadyError::Exited(status, output));
            }
        }
    }
}

/// Writes the driver program where the interpreter can read it. A new file replaces the
/// old one by rename, so a running interpreter that reads its script lazily (bash) keeps
/// reading the version it started with.
fn install_driver(dir: &Path, drv: &Driver) -> io::Result<PathBuf> {
    let tmp = format!(".{}.{}", drv.file, std::process::id());
    let staged = code::write_file(dir, &tmp, drv.source.as_bytes())?;
    let path = dir.join(drv.file);
    std::fs::rename(&staged, &path)?;
    Ok(path)
}

fn remove_cell(dir: &Path, code_name: &str, env_name: &str) {
    for name in [code_name, env_name] {
        if let Err(e) = code::remove_file(&dir.join(name)) {
            eprintln!("sbx-agent: removing the cell file {name}: {e}");
        }
    }
}

/// The call's variables as `K=V\0…`. The host validated them; a name that could not be
/// set, or a NUL that would split an entry, is left out rather than garbled.
fn env_file(env: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in env {
        if key.is_empty() || key.contains(['=', '\0']) || value.contains('\0') {
            continue;
        }
        out.extend_from_slice(key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(value.as_bytes());
        out.push(0);
    }
    out
}

/// 128 random bits in hex, for telling this call's answer from anything else on fd 4.
fn nonce(entropy: &[u8], seq: u64) -> String {
    let mut bytes = [0u8; 16];
    let from_kernel = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if from_kernel.is_err() {
        // Uniqueness is what matters here, not secrecy: the code runs in the REPL anyway.
        use std::hash::BuildHasher;
        let state = std::collections::hash_map::RandomState::new();
        for (i, half) in bytes.chunks_mut(8).enumerate() {
            let hash = state.hash_one((entropy, seq, i, Instant::now()));
            half.copy_from_slice(&hash.to_le_bytes());
        }
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// "status 3" or "signal 9".
fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        (None, None) => "status unknown".into(),
    }
}

fn exit_note(language: Language, status: ExitStatus) -> String {
    let name = driver(language).name;
    let how = match describe(status) {
        d if d.starts_with("killed") => format!("was {d}"),
        d => format!("exited ({d})"),
    };
    format!("the {name} REPL {how}; its state is gone; the next call starts a fresh one")
}

fn lost_suffix(language: Language) -> String {
    format!(
        "; the {} REPL was stopped, so its state is gone and the next call starts a fresh one",
        driver(language).name
    )
}

/// `: <output>` for a failure message, trimmed, lossily decoded.
fn quote(output: &[u8]) -> String {
    let text = String::from_utf8_lossy(output);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_is_nul_separated_and_skips_unrepresentable_entries() {
        let env = vec![
            ("A".to_string(), "1 2".to_string()),
            ("B=C".to_string(), "x".to_string()),
            ("D".to_string(), "a\0b".to_string()),
            ("E".to_string(), String::new()),
        ];
        assert_eq!(env_file(&env), b"A=1 2\0E=\0");
    }

    #[test]
    fn nonces_differ() {
        let a = nonce(b"", 1);
        let b = nonce(b"", 1);
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }

    #[test]
    fn reply_lines_are_matched_whole() {
        let (rx, mut tx) = spawn::pipe().expect("pipe");
        let mut replies = Replies {
            file: Some(rx),
            partial: Vec::new(),
            skipping: false,
        };
        let mut control = CallControl {
            replies: &mut replies,
            nonce: "abc",
        };
        tx.write_all(b"xabc 1\nabc 2x\n").expect("write");
        assert_eq!(control.check().expect("read"), None);
        tx.write_all(&[b'y'; MAX_LINE + 10]).expect("write");
        tx.write_all(b" abc 9\n\nab").expect("write");
        assert_eq!(control.check().expect("read"), None);
        tx.write_all(b"c 7\n").expect("write");
        assert_eq!(control.check().expect("read"), Some(7));
    }

    #[test]
    fn exit_notes() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            exit_note(Language::Python, ExitStatus::from_raw(3 << 8)),
            "the python REPL exited (status 3); its state is gone; the next call starts a fresh one"
        );
        assert_eq!(
            exit_note(Language::Raw, ExitStatus::from_raw(9)),
            "the bash REPL was killed by signal 9; its state is gone; the next call starts a fresh one"
        );
    }
}
