//! [`Session`]: one VM kept alive across calls, with a persistent REPL and files.
//!
//! A session owns its VM and the scheduler slot it holds. Calls take turns (one operation at
//! a time, in arrival order). After each call the session is either handed back for the next
//! one or closed, following one rule: a failure *inside* the guest (an exception, a timeout,
//! a dead REPL, a refused file) keeps the session; a failure of the VM or of the transport
//! closes it, and every later call gets [`Error::SessionClosed`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use protocol::{FileEntry, GuestMessage, HostMessage, Language, MAX_CHUNK};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Mutex, OwnedSemaphorePermit};
use vmm::{Accelerator, Vm};

use crate::error::{Error, FileError, PermanentError};
use crate::exec::{millis, Cell};
use crate::netproc::{execute_with_network, NetProcess};
use crate::network::{ExposedPort, NetworkPolicy, PortMapping};
use crate::request::{DEFAULT_DISK_MB, DEFAULT_MEMORY_MB};
use crate::result::{ExecutionResult, OutputChunk, ReplInfo, Timing};
use crate::scheduler::BootedVm;
use crate::validate::{
    normalize_guest_path, validate_code, validate_env, validate_extension, validate_timeout,
};

/// How long a session may sit unused before its VM is stopped.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a file transfer may make no progress before the VM is considered stuck. The
/// guest moves a 64 KiB chunk in milliseconds even under emulation; this only catches a
/// guest that stopped answering.
const FILE_STALL_LIMIT: Duration = Duration::from_secs(60);

/// What kind of session to open.
///
/// ```
/// use sandbox::{Language, SessionOptions};
/// use std::time::Duration;
///
/// let opts = SessionOptions::new(Language::Raw).idle_timeout(Duration::from_secs(60));
/// assert_eq!(opts.memory_mb, sandbox::DEFAULT_MEMORY_MB);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    pub language: Language,
    pub memory_mb: u32,
    /// Size of the disk holding `/home/user`, in MiB (default [`DEFAULT_DISK_MB`]).
    pub disk_mb: u32,
    /// The VM is stopped after this long without a call (default 300 s).
    pub idle_timeout: Duration,
    /// Where the guest may connect to; the default is no network at all.
    pub network: NetworkPolicy,
    /// Guest ports reachable from the host on 127.0.0.1 for the session's life.
    pub expose_ports: Vec<PortMapping>,
}

impl SessionOptions {
    pub fn new(language: Language) -> Self {
        Self {
            language,
            memory_mb: DEFAULT_MEMORY_MB,
            disk_mb: DEFAULT_DISK_MB,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            network: NetworkPolicy::default(),
            expose_ports: Vec::new(),
        }
    }

    pub fn network(mut self, policy: NetworkPolicy) -> Self {
        self.network = policy;
        self
    }

    pub fn expose(mut self, port: PortMapping) -> Self {
        self.expose_ports.push(port);
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

    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }
}

/// A directory listing from [`Session::list_files`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listing {
    /// Sorted by name. Symlinks are listed as such, never followed.
    pub entries: Vec<FileEntry>,
    /// The directory had more than [`protocol::MAX_LISTING`] entries; the rest are left out.
    pub truncated: bool,
}

/// A VM that keeps its REPL state and its files across calls. Cheap to clone; clones share
/// the VM, and calls from any of them take turns. The VM is stopped by [`Session::close`],
/// after the idle timeout, by [`crate::Scheduler::shutdown`], or when the last clone is
/// dropped.
#[derive(Clone)]
pub struct Session {
    shared: Arc<Shared>,
}

/// A session reference that does not keep the VM alive (held by the scheduler).
pub(crate) struct WeakSession(Weak<Shared>);

impl WeakSession {
    pub(crate) fn strong_count(&self) -> usize {
        self.0.strong_count()
    }

    pub(crate) fn upgrade(&self) -> Option<Session> {
        self.0.upgrade().map(|shared| Session { shared })
    }
}

struct Shared {
    language: Language,
    accelerator: Accelerator,
    idle_timeout: Duration,
    boot: Duration,
    exposed_ports: Vec<ExposedPort>,
    /// The home disk's size: no download can honestly be larger.
    disk_bytes: u64,
    /// `Open` between calls. A call takes the VM out and puts it back when it is done, so a
    /// call whose future is dropped midway drops the VM with it (killing it): the
    /// conversation with the guest is then in an unknown state and cannot go on.
    state: Mutex<State>,
    exec_count: AtomicU64,
    /// The idle watchdog and, with a network, the network watchdog.
    watchdogs: std::sync::Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        for handle in self
            .watchdogs
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            handle.abort();
        }
    }
}

enum State {
    Open(Box<Live>),
    Closed(String),
}

struct Live {
    vm: Vm,
    net: Option<NetProcess>,
    _slot: OwnedSemaphorePermit,
    last_used: tokio::time::Instant,
}

/// What a call's failure means for the session.
enum Fault {
    /// The guest answered; the session goes on.
    Call(Error),
    /// The VM or transport failed before anything ran: the session is closed with this
    /// reason and the call gets [`Error::SessionClosed`].
    Transport(String),
    /// The VM or transport failed after the code was sent: the session is closed and the
    /// call gets this error ([`Error::OutcomeUnknown`]).
    Lost(Error),
}

impl From<Error> for Fault {
    fn from(e: Error) -> Self {
        Fault::Call(e)
    }
}

const CANCELLED: &str = "an earlier call on it was cancelled midway, which stops the VM";

impl Session {
    pub(crate) fn start(options: SessionOptions, booted: BootedVm) -> Session {
        let has_net = booted.net.is_some();
        let shared = Arc::new(Shared {
            language: options.language,
            accelerator: booted.accelerator,
            idle_timeout: options.idle_timeout,
            boot: booted.boot,
            disk_bytes: u64::from(options.disk_mb) * 1024 * 1024,
            exposed_ports: booted
                .net
                .as_ref()
                .map(|n| n.exposed_ports().to_vec())
                .unwrap_or_default(),
            state: Mutex::new(State::Open(Box::new(Live {
                vm: booted.vm,
                net: booted.net,
                _slot: booted.slot,
                last_used: tokio::time::Instant::now(),
            }))),
            exec_count: AtomicU64::new(0),
            watchdogs: std::sync::Mutex::new(Vec::new()),
        });
        let mut handles = vec![tokio::spawn(watch_idle(Arc::downgrade(&shared))).abort_handle()];
        if has_net {
            handles.push(tokio::spawn(watch_network(Arc::downgrade(&shared))).abort_handle());
        }
        *shared.watchdogs.lock().unwrap_or_else(|p| p.into_inner()) = handles;
        Session { shared }
    }

    pub(crate) fn downgrade(&self) -> WeakSession {
        WeakSession(Arc::downgrade(&self.shared))
    }

    pub fn language(&self) -> Language {
        self.shared.language
    }

    pub fn accelerator(&self) -> Accelerator {
        self.shared.accelerator
    }

    pub fn idle_timeout(&self) -> Duration {
        self.shared.idle_timeout
    }

    /// How long the session's VM took to boot.
    pub fn boot_time(&self) -> Duration {
        self.shared.boot
    }

    /// Where the session's forwarded guest ports are reachable on the host. They stay the
    /// same for the session's life, also when its network process is restarted.
    pub fn exposed_ports(&self) -> &[ExposedPort] {
        &self.shared.exposed_ports
    }

    /// Calls sent to the guest so far (whatever their outcome).
    pub fn exec_count(&self) -> u64 {
        self.shared.exec_count.load(Ordering::Relaxed)
    }

    /// Runs code in the session's REPL. See [`Session::exec_streaming`].
    pub async fn exec(
        &self,
        code: &str,
        timeout: Duration,
        env: Vec<(String, String)>,
    ) -> Result<ExecutionResult, Error> {
        self.exec_streaming(code, timeout, env, |_| {}).await
    }

    /// Runs code in the session's REPL, calling `on_output` with output as it arrives.
    ///
    /// `env` applies to this call only. The result's `repl` says whether the call started a
    /// fresh REPL and whether the REPL was lost (timeout, exit, signal); either way the
    /// session stays open. A VM or transport failure closes the session and is returned as
    /// [`Error::OutcomeUnknown`] (the code may have run).
    pub async fn exec_streaming(
        &self,
        code: &str,
        timeout: Duration,
        env: Vec<(String, String)>,
        on_output: impl FnMut(OutputChunk) + Send,
    ) -> Result<ExecutionResult, Error> {
        let cell = Cell {
            language: self.shared.language,
            code,
            env: &env,
            timeout,
            extension: None,
            persistent: true,
        };
        self.call(cell, on_output).await
    }

    /// Runs `code` as a program of its own in this session's VM, exactly as
    /// [`crate::Scheduler::run`] runs it (a script file, `extension` as in
    /// [`crate::RunRequest::extension`], no REPL), so that it sees the session's files.
    ///
    /// When it ends, every process of the session ends with it, the REPL included: the next
    /// [`Session::exec`] starts a fresh REPL. Meant for one program between file transfers
    /// (as `sbx run --upload … --download …` does), not for mixing with REPL calls.
    pub async fn run_program(
        &self,
        code: &str,
        timeout: Duration,
        env: Vec<(String, String)>,
        extension: Option<&str>,
        on_output: impl FnMut(OutputChunk) + Send,
    ) -> Result<ExecutionResult, Error> {
        if let Some(ext) = extension {
            validate_extension(self.shared.language, ext)?;
        }
        let cell = Cell {
            language: self.shared.language,
            code,
            env: &env,
            timeout,
            extension,
            persistent: false,
        };
        self.call(cell, on_output).await
    }

    /// One execution on the session's VM, REPL call or program.
    async fn call(
        &self,
        cell: Cell<'_>,
        mut on_output: impl FnMut(OutputChunk) + Send,
    ) -> Result<ExecutionResult, Error> {
        let started = Instant::now();
        validate_code(cell.code)?;
        validate_timeout(cell.timeout)?;
        validate_env(cell.env)?;
        let mut turn = self.turn().await?;
        let outcome = async {
            let live = &mut *turn.live;
            if let Some(net) = live.net.as_mut() {
                // It died between calls (killed, crashed): QEMU takes a new one on the same
                // socket, so the guest's network comes back, on the same host ports.
                if net.is_gone() {
                    net.restart(&live.vm)
                        .await
                        .map_err(|e| Fault::Transport(e.to_string()))?;
                }
            }
            let setup = started.elapsed();
            let exec_started = Instant::now();
            self.shared.exec_count.fetch_add(1, Ordering::Relaxed);
            let (outcome, network) =
                execute_with_network(&mut live.vm, live.net.as_mut(), &cell, &mut on_output)
                    .await
                    .map_err(|e| match e {
                        // The guest could not start its REPL: the VM itself is fine.
                        Error::Permanent(PermanentError::GuestCannotRun(_)) => Fault::Call(e),
                        Error::Transient(t) => Fault::Transport(t.to_string()),
                        other => Fault::Lost(other),
                    })?;
            let completion = &outcome.completion;
            let result = ExecutionResult {
                language: cell.language,
                stdout: outcome.stdout,
                stderr: outcome.stderr,
                exit_code: completion.exit_code,
                timed_out: completion.timed_out,
                stdout_truncated: completion.stdout_truncated,
                stderr_truncated: completion.stderr_truncated,
                timing: Timing {
                    setup_ms: millis(setup),
                    boot_ms: 0,
                    execute_ms: millis(exec_started.elapsed()),
                    total_ms: millis(started.elapsed()),
                    boot_retries: 0,
                },
                accelerator: self.shared.accelerator,
                repl: cell.persistent.then_some(ReplInfo {
                    fresh: completion.repl_fresh,
                    lost: completion.repl_lost,
                }),
                exposed_ports: self.shared.exposed_ports.clone(),
                network,
            };
            Ok(CallEnd {
                value: result,
                // The guest never reported: it is stuck, and only stopping the VM is safe.
                close: outcome.host_timed_out.then(|| {
                    format!(
                        "the guest stopped answering during a call that timed out after {} s",
                        cell.timeout.as_secs_f64()
                    )
                }),
            })
        }
        .await;
        turn.finish(outcome).await
    }

    /// Writes `data` to `path` (relative to `/home/user`), replacing any file atomically.
    /// Returns the number of bytes written.
    pub async fn write_file(
        &self,
        path: &str,
        data: &[u8],
        executable: bool,
    ) -> Result<u64, Error> {
        self.write_file_from(path, data, executable).await
    }

    /// Streams `source` into `path` (relative to `/home/user`) in chunks, so memory use does
    /// not grow with the file. Missing parent directories are created. The file appears
    /// whole or not at all; on any failure the old file (if any) is untouched.
    pub async fn write_file_from(
        &self,
        path: &str,
        mut source: impl AsyncRead + Unpin + Send,
        executable: bool,
    ) -> Result<u64, Error> {
        let path = normalize_guest_path(path, false)?;
        let mut turn = self.turn().await?;
        let outcome = upload(&mut turn.live.vm, &path, executable, &mut source).await;
        turn.finish(outcome.map(CallEnd::keep)).await
    }

    /// Reads the whole file at `path` (relative to `/home/user`) into memory. For large
    /// files use [`Session::read_file_to`], which streams.
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let mut data = Vec::new();
        self.read_file_to(path, &mut data).await?;
        Ok(data)
    }

    /// Streams the file at `path` (relative to `/home/user`) into `sink` in chunks and
    /// returns its size. A symlink that leads outside the home directory is refused.
    pub async fn read_file_to(
        &self,
        path: &str,
        mut sink: impl AsyncWrite + Unpin + Send,
    ) -> Result<u64, Error> {
        let path = normalize_guest_path(path, false)?;
        let mut turn = self.turn().await?;
        let outcome = download(&mut turn.live.vm, &path, &mut sink, self.shared.disk_bytes).await;
        turn.finish(outcome.map(CallEnd::keep)).await
    }

    /// Lists the directory at `path` (relative to `/home/user`; `""` is the home directory).
    pub async fn list_files(&self, path: &str) -> Result<Listing, Error> {
        let path = normalize_guest_path(path, true)?;
        let mut turn = self.turn().await?;
        let outcome = list(&mut turn.live.vm, &path).await;
        turn.finish(outcome.map(CallEnd::keep)).await
    }

    /// Stops the VM. Waits for a call in progress to finish first. Later calls get
    /// [`Error::SessionClosed`]. Closing twice is fine.
    pub async fn close(&self) {
        self.close_because("it was closed by the caller").await;
    }

    pub(crate) async fn close_because(&self, reason: &str) {
        let mut state = self.shared.state.lock().await;
        if let State::Open(live) = std::mem::replace(&mut *state, State::Closed(reason.into())) {
            live.vm.shutdown().await;
        }
    }

    /// Waits for this session's turn and takes the VM out for one operation.
    async fn turn(&self) -> Result<Turn<'_>, Error> {
        let mut state = self.shared.state.lock().await;
        match std::mem::replace(&mut *state, State::Closed(CANCELLED.into())) {
            State::Open(live) => Ok(Turn { state, live }),
            State::Closed(reason) => {
                let err = Error::SessionClosed {
                    reason: reason.clone(),
                };
                *state = State::Closed(reason);
                Err(err)
            }
        }
    }
}

/// One operation's exclusive use of the VM. Dropping it unfinished (a cancelled call) drops
/// the VM, which kills it, and leaves the session closed.
struct Turn<'s> {
    state: tokio::sync::MutexGuard<'s, State>,
    live: Box<Live>,
}

impl Turn<'_> {
    /// Hands the VM back, or stops it, depending on how the operation ended.
    async fn finish<T>(mut self, outcome: Result<CallEnd<T>, Fault>) -> Result<T, Error> {
        let (result, close) = match outcome {
            Ok(end) => (Ok(end.value), end.close),
            Err(Fault::Call(e)) => (Err(e), None),
            Err(Fault::Transport(reason)) => {
                let reason = format!("the VM failed: {reason}");
                let err = Error::SessionClosed {
                    reason: reason.clone(),
                };
                (Err(err), Some(reason))
            }
            Err(Fault::Lost(err)) => {
                let reason = format!("the VM failed during a call: {err}");
                (Err(err), Some(reason))
            }
        };
        match close {
            Some(reason) => {
                self.live.vm.shutdown().await;
                *self.state = State::Closed(reason);
            }
            None => {
                self.live.last_used = tokio::time::Instant::now();
                *self.state = State::Open(self.live);
            }
        }
        result
    }
}

/// How an operation ended well enough for the guest to have answered.
struct CallEnd<T> {
    value: T,
    /// Close the session after handing back `value`, for this reason.
    close: Option<String>,
}

impl<T> CallEnd<T> {
    fn keep(value: T) -> Self {
        Self { value, close: None }
    }
}

async fn send(vm: &mut Vm, msg: HostMessage) -> Result<(), Fault> {
    vm.send(&msg)
        .await
        .map_err(|e| Fault::Transport(e.to_string()))
}

async fn recv(vm: &mut Vm) -> Result<GuestMessage, Fault> {
    match tokio::time::timeout(FILE_STALL_LIMIT, vm.recv()).await {
        Ok(Ok(msg)) => Ok(msg),
        Ok(Err(e)) => Err(Fault::Transport(e.to_string())),
        Err(_) => Err(Fault::Transport(format!(
            "the guest made no progress on a file transfer for {} s",
            FILE_STALL_LIMIT.as_secs()
        ))),
    }
}

fn unexpected(msg: &GuestMessage) -> Fault {
    let what: String = format!("{msg:?}").chars().take(120).collect();
    Fault::Transport(format!("the guest sent an unexpected message: {what}"))
}

async fn list(vm: &mut Vm, path: &str) -> Result<Listing, Fault> {
    send(
        vm,
        HostMessage::ListFiles {
            path: path.to_string(),
        },
    )
    .await?;
    match recv(vm).await? {
        GuestMessage::Listing { entries, truncated } => Ok(Listing { entries, truncated }),
        GuestMessage::FileFailed { kind, message } => Err(Fault::Call(
            FileError::Guest {
                kind,
                path: path.to_string(),
                message,
            }
            .into(),
        )),
        other => Err(unexpected(&other)),
    }
}

/// Sends `WriteFile`, the data in chunks, then `FileEnd`, and reads the one answer. Stops
/// sending early when the guest has already refused the write.
async fn upload(
    vm: &mut Vm,
    path: &str,
    executable: bool,
    source: &mut (impl AsyncRead + Unpin),
) -> Result<u64, Fault> {
    let refused = |kind, message| {
        Fault::Call(
            FileError::Guest {
                kind,
                path: path.to_string(),
                message,
            }
            .into(),
        )
    };
    send(
        vm,
        HostMessage::WriteFile {
            path: path.to_string(),
            executable,
        },
    )
    .await?;
    let mut buf = vec![0u8; MAX_CHUNK];
    let mut early_answer = None;
    loop {
        let n = match read_full(source, &mut buf).await {
            Ok(n) => n,
            Err(e) => {
                send(vm, HostMessage::FileAbort).await?;
                // The guest answers the abort (or already answered a failure); read it so
                // the conversation stays in step, then report the caller's error.
                if early_answer.is_none() {
                    recv(vm).await?;
                }
                return Err(Fault::Call(FileError::Source(e).into()));
            }
        };
        if n == 0 {
            break;
        }
        send(
            vm,
            HostMessage::FileData {
                data: buf[..n].to_vec(),
            },
        )
        .await?;
        if let Some(msg) = vm.try_recv().map_err(|e| Fault::Transport(e.to_string()))? {
            early_answer = Some(msg);
            break;
        }
    }
    send(vm, HostMessage::FileEnd).await?;
    let answer = match early_answer {
        Some(msg) => msg,
        None => recv(vm).await?,
    };
    match answer {
        GuestMessage::FileDone { size } => Ok(size),
        GuestMessage::FileFailed { kind, message } => Err(refused(kind, message)),
        other => Err(unexpected(&other)),
    }
}

/// Fills `buf` as far as the source allows, so chunks are full-sized except the last.
async fn read_full(
    source: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match source.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Sends `ReadFile` and copies the data into `sink` until `FileDone`. If the sink fails, the
/// rest of the data is still received (and dropped) so the conversation stays in step.
async fn download(
    vm: &mut Vm,
    path: &str,
    sink: &mut (impl AsyncWrite + Unpin),
    limit: u64,
) -> Result<u64, Fault> {
    send(
        vm,
        HostMessage::ReadFile {
            path: path.to_string(),
        },
    )
    .await?;
    let mut received: u64 = 0;
    let mut sink_error = None;
    loop {
        match recv(vm).await? {
            GuestMessage::FileData { data } => {
                received += data.len() as u64;
                // The guest refuses files larger than their disk; one that sends more
                // anyway is not behaving, and the conversation cannot be trusted after.
                if received > limit {
                    return Err(Fault::Transport(format!(
                        "the guest sent more than the home disk's {limit} bytes for one file"
                    )));
                }
                if sink_error.is_none() {
                    if let Err(e) = sink.write_all(&data).await {
                        sink_error = Some(e);
                    }
                }
            }
            GuestMessage::FileDone { size } => {
                if let Some(e) = sink_error {
                    return Err(Fault::Call(FileError::Sink(e).into()));
                }
                sink.flush()
                    .await
                    .map_err(|e| Fault::Call(FileError::Sink(e).into()))?;
                if size != received {
                    return Err(Fault::Transport(format!(
                        "the guest reported {size} bytes but sent {received}"
                    )));
                }
                return Ok(size);
            }
            GuestMessage::FileFailed { kind, message } => {
                return Err(Fault::Call(
                    FileError::Guest {
                        kind,
                        path: path.to_string(),
                        message,
                    }
                    .into(),
                ))
            }
            other => return Err(unexpected(&other)),
        }
    }
}

/// Stops the VM once the session has been idle for its idle timeout. Holds only a weak
/// reference, so it never keeps a dropped session's VM alive.
/// How often an idle session checks that its network process is alive.
const NETWORK_CHECK: Duration = Duration::from_secs(1);

/// Restarts the network process when it dies between calls, so forwarded ports keep
/// working while the session waits for its next call (a call in progress notices the death
/// itself and fails).
async fn watch_network(weak: Weak<Shared>) {
    loop {
        tokio::time::sleep(NETWORK_CHECK).await;
        let Some(shared) = weak.upgrade() else { return };
        // Busy means a call holds the VM; it deals with a dead process itself.
        let Ok(mut state) = shared.state.try_lock() else {
            continue;
        };
        let State::Open(live) = &mut *state else {
            return;
        };
        let Live { vm, net, .. } = &mut **live;
        let Some(net) = net.as_mut() else { return };
        if net.is_gone() {
            if let Err(e) = net.restart(vm).await {
                let reason = format!("its network process died and could not be restarted: {e}");
                if let State::Open(live) = std::mem::replace(&mut *state, State::Closed(reason)) {
                    live.vm.shutdown().await;
                }
                return;
            }
        }
    }
}

async fn watch_idle(weak: Weak<Shared>) {
    loop {
        let deadline = {
            let Some(shared) = weak.upgrade() else { return };
            let state = shared.state.lock().await;
            match &*state {
                State::Open(live) => live.last_used + shared.idle_timeout,
                State::Closed(_) => return,
            }
        };
        tokio::time::sleep_until(deadline).await;
        let Some(shared) = weak.upgrade() else { return };
        let mut state = shared.state.lock().await;
        let idle = shared.idle_timeout;
        if let State::Open(live) = &*state {
            if live.last_used + idle <= tokio::time::Instant::now() {
                let reason = format!(
                    "it was idle for {} s (its idle timeout)",
                    idle.as_secs_f64()
                );
                if let State::Open(live) = std::mem::replace(&mut *state, State::Closed(reason)) {
                    live.vm.shutdown().await;
                }
                return;
            }
        }
    }
}
