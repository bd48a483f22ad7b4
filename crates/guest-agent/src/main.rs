//! `sbx-agent`: started by `guest-init` inside the language root filesystem. Announces
//! itself with `Ready`, then runs `Exec` requests one after another until the channel
//! breaks; any exit makes init power the VM off. Persistent (session) execs go to the
//! language's REPL, which lives across requests; while waiting for the next request the
//! agent keeps draining the REPLs' output.

use guest_agent::channel::{self, Channel, ChannelError};
use guest_agent::engine::{self, Job};
use guest_agent::repl::{self, Repls};
use guest_agent::{code, files, host_state};
use protocol::{ExecRequest, GuestMessage, HostMessage, Language, PROTOCOL_VERSION};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// The sandbox user from the root filesystem's /etc/passwd (fixed numbers: no NSS here).
const USER_UID: u32 = 1000;
const USER_GID: u32 = 1000;
const HOME: &str = "/home/user";
/// Under `/run` (root-owned tmpfs), so the user can read the code but not replace it.
const CODE_DIR: &str = "/run/sbx/code";
/// The REPL driver programs and the per-call cell files, likewise.
const DRIVER_DIR: &str = "/run/sbx/drivers";
const CELLS_DIR: &str = "/run/sbx/cells";
/// SIGTERM → SIGKILL on timeout.
const GRACE: Duration = Duration::from_secs(1);
/// The port device appears shortly after `virtio_console` loads.
const PORT_WAIT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    match serve() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sbx-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn serve() -> Result<(), ChannelError> {
    shield_from_oom();
    let mut chan = Channel::open(channel::find_port(PORT_WAIT)?)?;
    let uptime_ms = u64::try_from(host_state::uptime().as_millis()).unwrap_or(u64::MAX);
    chan.send(&GuestMessage::Ready {
        version: PROTOCOL_VERSION,
        uptime_ms,
    })?;
    let user = files::User {
        uid: USER_UID,
        gid: USER_GID,
        home: HOME.into(),
    };
    let mut repls = Repls::new(repl::Setup {
        python: interpreter(Language::Python).0.into(),
        bun: interpreter(Language::Javascript).0.into(),
        bash: interpreter(Language::Raw).0.into(),
        driver_dir: DRIVER_DIR.into(),
        cells_dir: CELLS_DIR.into(),
        uid: USER_UID,
        gid: USER_GID,
        home: HOME.into(),
        env: environment(Vec::new()),
        grace: GRACE,
    });
    loop {
        match chan.recv_serving(&mut repls)? {
            HostMessage::Exec(req) if req.persistent => {
                persistent_exec(&mut chan, &mut repls, req)?
            }
            // A one-shot run ends by killing every process of the user, REPLs included;
            // the next persistent call then starts a fresh one.
            HostMessage::Exec(req) => exec(&mut chan, req)?,
            HostMessage::WriteFile { path, executable } => {
                files::write(&mut chan, &user, &path, executable)?
            }
            HostMessage::ReadFile { path } => files::read(&mut chan, &user, &path)?,
            HostMessage::ListFiles { path } => files::list(&mut chan, &user, &path)?,
            // Only valid inside a write, where `files::write` consumes them; a stray one is
            // a host bug, and answering it would desynchronise the conversation.
            HostMessage::FileData { .. } | HostMessage::FileEnd | HostMessage::FileAbort => {
                eprintln!("sbx-agent: file data outside a write, ignored")
            }
        }
    }
}

/// Applies what the host hands over with every request. Not fatal: the code can still
/// run, only with a stale clock or a less fresh pool.
fn take_host_state(req: &ExecRequest) {
    if let Err(e) = host_state::set_clock(req.unix_time_ms) {
        eprintln!("sbx-agent: setting the clock: {e}");
    }
    if let Err(e) = host_state::add_entropy(&req.entropy) {
        eprintln!("sbx-agent: adding entropy: {e}");
    }
}

fn persistent_exec(
    chan: &mut Channel,
    repls: &mut Repls,
    req: ExecRequest,
) -> Result<(), ChannelError> {
    let received = Instant::now();
    take_host_state(&req);
    let mut send_err = None;
    let ran = repls.exec(&req, received, &mut |msg| {
        chan.send(&msg).map_err(|e| {
            let io = std::io::Error::other(e.to_string());
            send_err = Some(e);
            io
        })
    });
    match (ran, send_err) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => chan.send(&GuestMessage::Failed {
            message: format!("agent error: {e}"),
        }),
        (Ok(()), None) => Ok(()),
    }
}

fn exec(chan: &mut Channel, req: ExecRequest) -> Result<(), ChannelError> {
    let received = Instant::now();
    take_host_state(&req);
    let (program, default_ext) = interpreter(req.language);
    // The host validated it; checking again keeps a bad one from naming an odd file.
    let ext = req
        .extension
        .as_deref()
        .filter(|e| req.language.extensions().contains(e))
        .unwrap_or(default_ext);
    let script = match code::write(Path::new(CODE_DIR), ext, &req.code) {
        Ok(path) => path,
        Err(e) => {
            let message = format!("cannot write the code file: {e}");
            return chan.send(&GuestMessage::Failed { message });
        }
    };
    let job = Job {
        program: program.into(),
        args: vec![script.into_os_string()],
        env: environment(req.env),
        cwd: HOME.into(),
        uid: USER_UID,
        gid: USER_GID,
        timeout: Duration::from_millis(req.timeout_ms),
        grace: GRACE,
        stdout_cap: req.stdout_cap,
        stderr_cap: req.stderr_cap,
        received,
    };
    let mut send_err = None;
    let ran = engine::run(&job, &mut |msg| {
        chan.send(&msg).map_err(|e| {
            let io = std::io::Error::other(e.to_string());
            send_err = Some(e);
            io
        })
    });
    if let Err(e) = code::clear(Path::new(CODE_DIR)) {
        eprintln!("sbx-agent: removing the code file: {e}");
    }
    match (ran, send_err) {
        (_, Some(e)) => Err(e),
        (Err(e), None) => {
            // The engine itself failed (e.g. fork); say so if the channel still works.
            chan.send(&GuestMessage::Failed {
                message: format!("agent error: {e}"),
            })
        }
        (Ok(()), None) => Ok(()),
    }
}

/// Interpreter and code-file extension per language. JavaScript gets `.ts` so Bun accepts
/// TypeScript too (plain JavaScript is valid TypeScript for Bun).
fn interpreter(language: Language) -> (&'static str, &'static str) {
    match language {
        Language::Python => ("/usr/bin/python3", "py"),
        Language::Javascript => ("/usr/local/bin/bun", "ts"),
        Language::Raw => ("/bin/bash", "sh"),
    }
}

/// The defaults every run gets, then the request's variables (validated by the host) on top.
fn environment(extra: Vec<(String, String)>) -> Vec<(String, String)> {
    let defaults = [
        ("HOME", HOME),
        ("USER", "user"),
        ("LOGNAME", "user"),
        ("SHELL", "/bin/bash"),
        ("PATH", "/usr/local/bin:/usr/bin:/bin"),
        ("LANG", "C.UTF-8"),
        ("PYTHONDONTWRITEBYTECODE", "1"),
        // Output must stream and survive a timeout or a kill; a pipe would otherwise make
        // Python hold it in a block buffer until exit. A caller may set it back to "".
        ("PYTHONUNBUFFERED", "1"),
        ("DO_NOT_TRACK", "1"),
    ];
    defaults
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .chain(extra)
        .collect()
}

/// The code may exhaust memory; the OOM killer must then pick it, never the agent.
fn shield_from_oom() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", "-1000") {
        eprintln!("sbx-agent: oom_score_adj: {e}");
    }
}
