//! Host tests of the persistent REPLs. Like tests/engine.rs they need root (to drop to the
//! test uid) and use uid/gid 31337, and they take the same lock, because losing a REPL
//! kills every process of that uid.
//!
//! Python and bash come from the host. JavaScript runs only when `SBX_TEST_BUN` names a
//! bun binary (for example `/tmp/jsroot/usr/local/bin/bun`); otherwise those tests say they
//! were skipped.

use guest_agent::channel::Idle;
use guest_agent::kill;
use guest_agent::repl::{Repls, Setup};
use protocol::{Completion, ExecRequest, GuestMessage, Language, Stream};
use std::os::fd::RawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TEST_UID: u32 = 31337;
const PYTHON: &str = "/usr/bin/python3";
/// Generous: these tests must not flake on a loaded two-core machine.
const TIMEOUT: Duration = Duration::from_secs(60);

/// The same lock file as tests/engine.rs, so the two suites never share the uid at once.
fn serial() -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("guest-agent-engine-tests.lock"))
        .expect("open the test lock file");
    lock.lock().expect("take the test lock");
    lock
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return true;
    }
    eprintln!("skipped: these tests need root to run code as uid {TEST_UID}");
    false
}

fn have_python() -> bool {
    if Path::new(PYTHON).exists() {
        return true;
    }
    eprintln!("skipped: no {PYTHON}");
    false
}

fn bun() -> Option<PathBuf> {
    match std::env::var_os("SBX_TEST_BUN") {
        Some(path) => Some(path.into()),
        None => {
            eprintln!("skipped: set SBX_TEST_BUN to a bun binary to run the JavaScript REPL tests");
            None
        }
    }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

#[derive(Debug)]
struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    done: Option<Completion>,
    failed: Option<String>,
    elapsed: Duration,
}

impl Outcome {
    fn done(&self) -> &Completion {
        self.done
            .as_ref()
            .unwrap_or_else(|| panic!("no Completed: {self:?}"))
    }

    fn out(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Exit code 0, still in the same REPL, nothing on stderr; returns stdout.
    #[track_caller]
    fn ok(&self) -> String {
        let c = self.done();
        assert_eq!(
            (c.exit_code, c.timed_out, c.repl_lost, self.err().as_str()),
            (0, false, false, ""),
            "stdout: {}",
            self.out()
        );
        self.out()
    }
}

/// One agent's REPLs over a scratch directory, for one test.
struct Session {
    repls: Repls,
    dir: PathBuf,
    _lock: std::fs::File,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropping the REPLs kills every process of the uid; the files go after.
        self.repls = Repls::new(setup(&self.dir, None));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn setup(dir: &Path, tweak: Option<&dyn Fn(&mut Setup)>) -> Setup {
    let home = dir.join("home");
    let mut s = Setup {
        python: PYTHON.into(),
        bun: std::env::var_os("SBX_TEST_BUN")
            .map_or_else(|| "/nonexistent/bun".into(), PathBuf::from),
        bash: "/bin/bash".into(),
        driver_dir: dir.join("drivers"),
        cells_dir: dir.join("cells"),
        uid: TEST_UID,
        gid: TEST_UID,
        home: home.clone(),
        env: vec![
            ("HOME".into(), home.display().to_string()),
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
            ("PYTHONDONTWRITEBYTECODE".into(), "1".into()),
            ("PYTHONUNBUFFERED".into(), "1".into()),
        ],
        grace: Duration::from_millis(500),
    };
    if let Some(tweak) = tweak {
        tweak(&mut s);
    }
    s
}

fn session() -> Session {
    session_with(|_| {})
}

fn session_with(tweak: impl Fn(&mut Setup)) -> Session {
    let lock = serial();
    assert_eq!(
        kill::live_count(TEST_UID),
        0,
        "processes of uid {TEST_UID} left over from elsewhere"
    );
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("guest-agent-repl-{}-{n}", std::process::id()));
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("create the scratch home");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&home, Some(TEST_UID), Some(TEST_UID)).expect("chown the home");
    Session {
        repls: Repls::new(setup(&dir, Some(&tweak))),
        dir,
        _lock: lock,
    }
}

fn request(language: Language, code: &str) -> ExecRequest {
    ExecRequest {
        language,
        code: code.into(),
        env: vec![],
        timeout_ms: TIMEOUT.as_millis() as u64,
        stdout_cap: 1 << 20,
        stderr_cap: 100 << 10,
        unix_time_ms: 0,
        extension: None,
        entropy: vec![],
        persistent: true,
    }
}

impl Session {
    fn home(&self) -> PathBuf {
        self.dir.join("home")
    }

    fn run(&mut self, language: Language, code: &str) -> Outcome {
        self.run_with(language, code, |_| {})
    }

    fn run_with(
        &mut self,
        language: Language,
        code: &str,
        tweak: impl FnOnce(&mut ExecRequest),
    ) -> Outcome {
        let mut req = request(language, code);
        tweak(&mut req);
        let mut out = Outcome {
            stdout: vec![],
            stderr: vec![],
            done: None,
            failed: None,
            elapsed: Duration::ZERO,
        };
        let start = Instant::now();
        self.repls
            .exec(&req, start, &mut |msg| {
                assert!(
                    out.done.is_none() && out.failed.is_none(),
                    "message after the end: {msg:?}"
                );
                match msg {
                    GuestMessage::Output {
                        stream: Stream::Stdout,
                        data,
                    } => out.stdout.extend(data),
                    GuestMessage::Output {
                        stream: Stream::Stderr,
                        data,
                    } => out.stderr.extend(data),
                    GuestMessage::Completed(c) => out.done = Some(c),
                    GuestMessage::Failed { message } => out.failed = Some(message),
                    other => panic!("unexpected {other:?}"),
                }
                Ok(())
            })
            .expect("REPL exec");
        out.elapsed = start.elapsed();
        assert!(
            out.done.is_some() || out.failed.is_some(),
            "neither Completed nor Failed"
        );
        out
    }

    fn py(&mut self, code: &str) -> Outcome {
        self.run(Language::Python, code)
    }

    fn sh(&mut self, code: &str) -> Outcome {
        self.run(Language::Raw, code)
    }

    /// Serves the REPLs as the agent does between requests, until `done` or `bound`.
    fn idle_until(&mut self, bound: Duration, mut done: impl FnMut() -> bool) -> bool {
        let start = Instant::now();
        while start.elapsed() < bound {
            if done() {
                return true;
            }
            let mut fds: Vec<RawFd> = Vec::new();
            self.repls.fds(&mut fds);
            let mut pfds: Vec<libc::pollfd> = fds
                .iter()
                .map(|&fd| libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            // SAFETY: a valid pollfd array of its length.
            let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 20) };
            if n > 0 {
                let ready: Vec<RawFd> = pfds
                    .iter()
                    .filter(|p| p.revents != 0)
                    .map(|p| p.fd)
                    .collect();
                self.repls.service(&ready);
            }
        }
        done()
    }
}

/// Waits (without serving anything) until `path` exists.
fn wait_for_file(path: &Path, bound: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < bound {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    path.exists()
}

#[test]
fn python_state_survives_an_exception() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    let first = s.py("x = 1");
    assert_eq!(first.ok(), "");
    assert!(first.done().repl_fresh);
    let second = s.py("x = 2\nraise ValueError('boom')\nx = 3");
    let c = second.done();
    assert_eq!((c.exit_code, c.repl_fresh, c.repl_lost), (1, false, false));
    let err = second.err();
    assert!(err.contains("ValueError: boom"), "{err}");
    assert!(err.contains("File \"<cell 2>\", line 2"), "{err}");
    assert!(err.contains("raise ValueError('boom')"), "{err}");
    assert!(!err.contains("python_repl"), "driver frames leaked: {err}");
    let third = s.py("print(x)");
    assert_eq!(third.ok(), "2\n");
    assert!(!third.done().repl_fresh);
}

#[test]
fn python_tracebacks_show_the_cells_lines() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    s.py("def g():\n    raise KeyError('k')\n").ok();
    let o = s.py("g()");
    assert_eq!(o.done().exit_code, 1);
    let err = o.err();
    assert!(
        err.starts_with("Traceback (most recent call last):\n"),
        "{err}"
    );
    assert!(
        err.contains("File \"<cell 2>\", line 1, in <module>"),
        "{err}"
    );
    assert!(err.contains("File \"<cell 1>\", line 2, in g"), "{err}");
    assert!(err.contains("    raise KeyError('k')"), "{err}");
    assert!(!err.contains("python_repl"), "driver frames leaked: {err}");
}

#[test]
fn python_syntax_errors_are_reported_at_once() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    s.py("pass").ok();
    for code in ["def f(:", "if True:", "x = (1,", "print('unterminated"] {
        let o = s.py(code);
        assert_eq!(o.done().exit_code, 1, "{code}");
        let err = o.err();
        assert!(
            err.contains("SyntaxError") || err.contains("IndentationError"),
            "{code}: {err}"
        );
        assert!(err.contains("File \"<cell "), "{code}: {err}");
        assert!(!err.contains("python_repl"), "{code}: {err}");
        assert!(
            o.elapsed < Duration::from_secs(2),
            "{code}: took {:?}",
            o.elapsed
        );
    }
    assert_eq!(s.py("print('next')").ok(), "next\n");
}

#[test]
fn python_main_guard_and_multiprocessing_work() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    assert_eq!(
        s.py("if __name__ == '__main__':\n    print('main')").ok(),
        "main\n"
    );
    s.py("def square(n):\n    return n * n").ok();
    let o = s.py("from multiprocessing import Pool\n\
         with Pool(2) as pool:\n    print(pool.map(square, [1, 2, 3]))");
    assert_eq!(o.ok(), "[1, 4, 9]\n");
}

#[test]
fn python_echoes_the_last_expression() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    assert_eq!(s.py("1 + 1").ok(), "2\n");
    assert_eq!(s.py("'a'").ok(), "'a'\n");
    assert_eq!(s.py("None").ok(), "");
    assert_eq!(s.py("y = 5").ok(), "");
    assert_eq!(s.py("print('p')\ny * 2").ok(), "p\n10\n");
    assert_eq!(s.py("_").ok(), "10\n");
}

#[test]
fn python_top_level_await_works() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    let o = s.py("import asyncio\nawait asyncio.sleep(0.01)\nprint('awaited')");
    assert_eq!(o.ok(), "awaited\n");
    assert_eq!(s.py("await asyncio.sleep(0, result=5)").ok(), "5\n");
    let o = s.py("async def bad():\n    raise RuntimeError('async boom')\nawait bad()");
    assert_eq!(o.done().exit_code, 1);
    let err = o.err();
    assert!(err.contains("RuntimeError: async boom"), "{err}");
    assert!(err.contains("<cell 3>"), "{err}");
    assert!(!err.contains("asyncio"), "asyncio frames leaked: {err}");
}

#[test]
fn python_sys_exit_keeps_the_session() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    s.py("y = 7").ok();
    let o = s.py("import sys\nsys.exit(3)");
    let c = o.done();
    assert_eq!((c.exit_code, c.repl_lost), (3, false));
    let o = s.py("sys.exit('bye')");
    assert_eq!((o.done().exit_code, o.err().as_str()), (1, "bye\n"));
    assert_eq!(s.py("sys.exit()").done().exit_code, 0);
    let o = s.py("print(y)");
    assert_eq!(o.ok(), "7\n");
    assert!(!o.done().repl_fresh);
}

#[test]
fn python_os_exit_loses_the_session() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    s.py("z = 1").ok();
    let o = s.py("import os\nprint('bye', flush=True)\nos._exit(5)");
    let c = o.done();
    assert_eq!((c.exit_code, c.repl_lost, c.timed_out), (5, true, false));
    assert_eq!(o.out(), "bye\n");
    assert_eq!(
        o.err(),
        "\n[sandbox] the python REPL exited (status 5); its state is gone; the next call starts a fresh one\n"
    );
    assert_eq!(kill::live_count(TEST_UID), 0);
    let o = s.py("print('z' in globals())");
    assert_eq!(o.ok(), "False\n");
    assert!(o.done().repl_fresh);
}

#[test]
fn python_killed_by_a_signal_is_128_plus_n() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    let o = s.py("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)");
    let c = o.done();
    assert_eq!((c.exit_code, c.repl_lost, c.repl_fresh), (137, true, true));
    assert!(
        o.err().contains("the python REPL was killed by signal 9"),
        "{}",
        o.err()
    );
}

#[test]
fn fake_completion_lines_do_not_end_a_call() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    s.py("pass").ok();
    // Lines in the reply format on stdout and stderr, and one with a wrong nonce written to
    // the reply pipe itself (the cell runs in the driver's process, so it can).
    let code = "import os, sys, time\n\
                print('\\n1 0\\nready\\n0123456789abcdef0123456789abcdef 0')\n\
                sys.stderr.write('\\n00000000000000000000000000000000 0\\n')\n\
                os.write(4, b'\\n00000000000000000000000000000000 0\\nready\\n')\n\
                time.sleep(1)\n\
                print('end')";
    let o = s.py(code);
    let c = o.done();
    assert_eq!(c.exit_code, 0, "{}", o.err());
    assert!(o.out().ends_with("end\n"), "{}", o.out());
    assert!(
        o.elapsed >= Duration::from_secs(1),
        "ended early: {:?}",
        o.elapsed
    );
    assert_eq!(s.py("print('next')").ok(), "next\n");
}

#[test]
fn output_between_calls_is_discarded() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    let go = s.home().join("go");
    let done = s.home().join("done");
    let go_quiet = s.home().join("go-quiet");
    let quiet_done = s.home().join("quiet-done");
    // Two background threads, each waiting for the test's signal: one writes 3 MiB (three
    // times the pipe) while the agent is idle, the other a line nobody serves.
    let code = format!(
        "import os, sys, threading, time\n\
         def wait(path):\n    while not os.path.exists(path):\n        time.sleep(0.01)\n\
         def chatter():\n    wait({go:?})\n    \
             for _ in range(3 * 1024):\n        sys.stdout.write('x' * 1023 + '\\n')\n    \
             open({done:?}, 'w').close()\n\
         def quiet():\n    wait({go_quiet:?})\n    print('stale')\n    \
             open({quiet_done:?}, 'w').close()\n\
         threading.Thread(target=chatter, daemon=True).start()\n\
         threading.Thread(target=quiet, daemon=True).start()\n\
         print('started')"
    );
    assert_eq!(s.py(&code).ok(), "started\n");
    std::fs::write(&go, "").expect("signal the chatter");
    assert!(
        s.idle_until(TIMEOUT, || done.exists()),
        "the background writer blocked: idle output was not drained"
    );
    assert_eq!(s.py("print('two')").ok(), "two\n");
    // Not served at all between the calls: still left out of the next one.
    std::fs::write(&go_quiet, "").expect("signal the quiet thread");
    assert!(wait_for_file(&quiet_done, TIMEOUT));
    assert_eq!(s.py("print('three')").ok(), "three\n");
}

#[test]
fn background_output_during_a_call_belongs_to_it() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    s.py("import threading\n\
         go = threading.Event()\n\
         said = threading.Event()\n\
         def later():\n    go.wait()\n    print('from the background')\n    said.set()\n\
         threading.Thread(target=later, daemon=True).start()")
        .ok();
    let o = s.py("go.set()\nsaid.wait()\nprint('main')");
    assert_eq!(o.ok(), "from the background\nmain\n");
}

#[test]
fn a_forked_child_cannot_answer_or_run_later_cells() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    s.py("pass").ok();
    let o = s.py("import os, time\n\
         pid = os.fork()\n\
         if pid == 0:\n    time.sleep(1)\n\
         print('child' if pid == 0 else 'parent')");
    assert_eq!(o.ok(), "parent\n");
    // The child falls through to the driver during this call; it must exit there.
    let o = s.py("import time\ntime.sleep(3)\nprint('two')");
    assert_eq!(o.done().exit_code, 0);
    assert!(o.out().ends_with("two\n"), "{}", o.out());
    assert!(!o.out().contains("two\ntwo"), "{}", o.out());
    assert_eq!(s.py("print('three')").ok(), "three\n");
    assert_eq!(kill::live_count(TEST_UID), 1, "only the REPL may be left");
}

#[test]
fn python_timeout_loses_the_session() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    s.py("w = 1").ok();
    let o = s.run_with(
        Language::Python,
        "print('spin', flush=True)\nwhile True: pass",
        |r| r.timeout_ms = 1500,
    );
    let c = o.done();
    assert_eq!((c.exit_code, c.timed_out, c.repl_lost), (-1, true, true));
    assert_eq!(o.out(), "spin\n");
    assert_eq!(
        o.err(),
        "\n[sandbox] execution timed out after 1.5 s; the python REPL was stopped, so its state is gone and the next call starts a fresh one\n"
    );
    assert_eq!(kill::live_count(TEST_UID), 0);
    let o = s.py("print('w' in globals())");
    assert_eq!(o.ok(), "False\n");
    assert!(o.done().repl_fresh);
}

#[test]
fn bash_timeout_kills_everything_the_session_started() {
    if !is_root() {
        return;
    }
    let mut s = session();
    s.sh("echo warm").ok();
    let late = s.home().join("late");
    let code = format!("(sleep 100; touch {late:?}) & sleep 100");
    let o = s.run_with(Language::Raw, &code, |r| r.timeout_ms = 2000);
    let c = o.done();
    assert_eq!((c.exit_code, c.timed_out, c.repl_lost), (-1, true, true));
    assert!(
        o.err()
            .contains("execution timed out after 2 s; the bash REPL was stopped"),
        "{}",
        o.err()
    );
    assert_eq!(
        kill::live_count(TEST_UID),
        0,
        "a process of the session survived"
    );
    // Nothing is left that could create it.
    assert!(!late.exists());
    let o = s.sh("echo again");
    assert_eq!(o.ok(), "again\n");
    assert!(o.done().repl_fresh);
}

#[test]
fn bash_keeps_cwd_exports_and_functions() {
    if !is_root() {
        return;
    }
    let mut s = session();
    let o = s.sh("cd /tmp && export V=7 && f() { echo fn; }");
    assert_eq!(o.ok(), "");
    assert!(o.done().repl_fresh);
    let o = s.sh("pwd; echo $V; f");
    assert_eq!(o.ok(), "/tmp\n7\nfn\n");
    assert!(!o.done().repl_fresh);
    // A failing command is the call's status, not the session's end.
    let o = s.sh("false");
    assert_eq!((o.done().exit_code, o.done().repl_lost), (1, false));
    assert_eq!(s.sh("echo $V").ok(), "7\n");
}

#[test]
fn bash_exit_loses_the_session() {
    if !is_root() {
        return;
    }
    let mut s = session();
    s.sh("X=1").ok();
    let o = s.sh("exit 3");
    let c = o.done();
    assert_eq!((c.exit_code, c.repl_lost), (3, true));
    assert_eq!(
        o.err(),
        "\n[sandbox] the bash REPL exited (status 3); its state is gone; the next call starts a fresh one\n"
    );
    let o = s.sh("echo \"[${X-}]\"");
    assert_eq!(o.ok(), "[]\n");
    assert!(o.done().repl_fresh);
}

#[test]
fn bash_options_of_the_session_do_not_break_the_driver() {
    if !is_root() {
        return;
    }
    let mut s = session();
    s.sh("set -u; v=1").ok();
    assert_eq!(
        s.sh("echo $v; case $- in *u*) echo kept;; esac").ok(),
        "1\nkept\n"
    );
    s.sh("set -x").ok();
    let o = s.sh("echo hi");
    assert_eq!(o.out(), "hi\n");
    assert!(o.err().ends_with("+ echo hi\n"), "{}", o.err());
    assert!(
        !o.err().contains("__sbx"),
        "the driver was traced: {}",
        o.err()
    );
    assert_eq!(s.sh("set +x").done().exit_code, 0);
    // The REPL is a non-interactive shell, like a script: an unset variable under -u (or a
    // failure under -e) ends it, and with it the session.
    let o = s.sh("echo $UNSET_THING");
    assert_eq!(
        (o.done().exit_code, o.done().repl_lost),
        (1, true),
        "{}",
        o.err()
    );
    s.sh("set -e").ok();
    let o = s.sh("false; echo not reached");
    assert_eq!((o.done().exit_code, o.done().repl_lost), (1, true));
    assert_eq!(o.out(), "");
}

#[test]
fn env_applies_to_one_call_only() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    let env = |r: &mut ExecRequest| {
        r.env = vec![
            ("FOO".into(), "bar baz".into()),
            ("K".into(), "call".into()),
            ("HOME".into(), "/elsewhere".into()),
        ]
    };
    let home = s.home().display().to_string();
    s.sh("K=session").ok();
    let o = s.run_with(
        Language::Raw,
        "echo \"$FOO|$K|$HOME\"; env | grep -c '^K='",
        env,
    );
    assert_eq!(o.ok(), "bar baz|call|/elsewhere\n1\n");
    let o = s.sh("echo \"${FOO-unset}|$K|$HOME\"; env | grep -c '^K=' || true");
    assert_eq!(o.ok(), format!("unset|session|{home}\n0\n"));

    let o = s.run_with(
        Language::Python,
        "import os\nprint(os.environ['FOO'], os.environ['HOME'])",
        env,
    );
    assert_eq!(o.ok(), "bar baz /elsewhere\n");
    let o = s.py("print(os.environ.get('FOO'), os.environ['HOME'] == os.path.expanduser('~'))");
    assert_eq!(o.ok(), "None True\n");
}

#[test]
fn background_processes_survive_successful_calls() {
    if !is_root() {
        return;
    }
    let mut s = session();
    s.sh("sleep 30 & bg=$!").ok();
    assert_eq!(s.sh("kill -0 $bg && echo alive").ok(), "alive\n");
    assert_eq!(kill::live_count(TEST_UID), 2, "the REPL and its sleep");
}

#[test]
fn output_caps_apply_per_call_and_the_session_survives() {
    if !is_root() {
        return;
    }
    let mut s = session();
    let o = s.sh("head -c 2097152 /dev/zero; echo done >&2");
    let c = o.done();
    assert_eq!(o.stdout.len(), 1 << 20);
    assert!(c.stdout_truncated && !c.stderr_truncated);
    assert_eq!((c.exit_code, c.repl_lost), (0, false));
    assert_eq!(o.err(), "done\n");
    let o = s.sh("echo small");
    assert_eq!(o.ok(), "small\n");
    assert!(!o.done().stdout_truncated);
}

#[test]
fn a_missing_interpreter_is_failed() {
    if !is_root() {
        return;
    }
    let mut s = session_with(|setup| setup.bash = "/nonexistent/bash".into());
    let o = s.sh("echo hi");
    assert!(o.done.is_none());
    let message = o.failed.expect("Failed");
    assert!(message.contains("/nonexistent/bash"), "{message}");
}

#[test]
fn a_driver_that_dies_before_it_is_ready_is_failed() {
    if !is_root() {
        return;
    }
    let mut s = session_with(|setup| setup.bash = "/bin/false".into());
    let o = s.sh("echo hi");
    assert!(o.done.is_none());
    let message = o.failed.expect("Failed");
    assert!(
        message.contains("the bash REPL failed to start (status 1)"),
        "{message}"
    );
}

#[test]
fn cell_files_are_removed_after_each_call() {
    if !is_root() {
        return;
    }
    let mut s = session();
    let o = s.sh("ls -l \"$(dirname \"$BASH_SOURCE\")\" | tail -n +2 | cut -c1-10");
    assert_eq!(o.ok(), "-r--r--r--\n-r--r--r--\n");
    let cells = s.dir.join("cells");
    let left: Vec<_> = std::fs::read_dir(&cells)
        .expect("cells dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn control_pipes_do_not_reach_programs_the_code_starts() {
    if !is_root() || !have_python() {
        return;
    }
    let mut s = session();
    let check = "ls /proc/self/fd | sort -n | tr '\\n' ' '";
    // 3 is ls's own handle on the directory it lists.
    assert_eq!(s.sh(check).ok(), "0 1 2 3 ");
    let o = s.py(&format!("import os\nos.system({check:?})\nprint()"));
    assert_eq!(o.ok(), "0 1 2 3 \n");
}

// ---- JavaScript (only with SBX_TEST_BUN) ----

fn js(s: &mut Session, code: &str) -> Outcome {
    s.run(Language::Javascript, code)
}

#[test]
fn js_state_types_and_await() {
    if !is_root() {
        return;
    }
    let Some(_) = bun() else { return };
    let mut s = session();
    let o = js(&mut s, "const greet = (n: string): string => \"hi \" + n");
    assert_eq!(o.ok(), "");
    assert!(o.done().repl_fresh);
    assert_eq!(js(&mut s, "console.log(greet(\"a\"))").ok(), "hi a\n");
    assert_eq!(js(&mut s, "let x = 1").ok(), "");
    assert_eq!(js(&mut s, "x = x + 1").ok(), "2\n");
    assert_eq!(
        js(
            &mut s,
            "await new Promise(r => setTimeout(r, 10)); console.log(\"done\")"
        )
        .ok(),
        "done\n"
    );
    assert_eq!(
        js(&mut s, "import fs from \"fs\"; typeof fs.readFileSync").ok(),
        "\"function\"\n"
    );
    assert_eq!(js(&mut s, "({ a: 1 })").ok(), "{\n  a: 1,\n}\n");
    assert_eq!(
        js(&mut s, "typeof require(\"path\").join").ok(),
        "\"function\"\n"
    );
    // Packages and relative imports resolve from the working directory (the home).
    let pkg = s.home().join("node_modules/greeting");
    std::fs::create_dir_all(&pkg).expect("package dir");
    std::fs::write(pkg.join("index.js"), "module.exports = { word: 'hello' };").expect("write");
    std::fs::write(s.home().join("local.ts"), "export const n: number = 42;").expect("write");
    assert_eq!(
        js(
            &mut s,
            "import g from \"greeting\"; import { n } from \"./local.ts\"; `${g.word} ${n}`"
        )
        .ok(),
        "\"hello 42\"\n"
    );
    assert_eq!(js(&mut s, "require(\"greeting\").word").ok(), "\"hello\"\n");
}

#[test]
fn js_errors_fail_the_call_but_keep_the_session() {
    if !is_root() {
        return;
    }
    let Some(_) = bun() else { return };
    let mut s = session();
    js(&mut s, "let kept = 5").ok();
    let o = js(
        &mut s,
        "function thrower() { throw new Error(\"boom\") }\nthrower()",
    );
    assert_eq!((o.done().exit_code, o.done().repl_lost), (1, false));
    assert!(o.err().contains("boom"), "{}", o.err());
    assert!(o.err().contains("<cell 2>"), "{}", o.err());
    assert!(
        !o.err().contains("bun_repl"),
        "driver frames leaked: {}",
        o.err()
    );
    let o = js(&mut s, "const broken = ;");
    assert_eq!(o.done().exit_code, 1);
    assert!(!o.err().is_empty());
    let o = js(&mut s, "Promise.reject(new Error(\"rejected\")); 1");
    assert_eq!(o.done().exit_code, 1, "{}", o.out());
    assert!(o.err().contains("rejected"), "{}", o.err());
    let o = js(
        &mut s,
        "setTimeout(() => { throw new Error(\"later\") }, 200); 0",
    );
    assert_eq!(o.ok(), "0\n");
    // The timer fires between calls: printed, discarded, and the session lives on.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(js(&mut s, "kept").ok(), "5\n");
}

#[test]
fn js_event_loop_runs_between_calls() {
    if !is_root() {
        return;
    }
    let Some(_) = bun() else { return };
    let mut s = session();
    js(
        &mut s,
        "const server = Bun.serve({ hostname: \"127.0.0.1\", port: 0, fetch: () => new Response(\"pong\") }); let ticks = 0; setInterval(() => ticks++, 10)",
    )
    .ok();
    std::thread::sleep(Duration::from_millis(300));
    let o = js(&mut s, "ticks > 5");
    assert_eq!(o.ok(), "true\n");
    let o = js(
        &mut s,
        "await (await fetch(`http://127.0.0.1:${server.port}/`)).text()",
    );
    assert_eq!(o.ok(), "\"pong\"\n");
}

#[test]
fn js_output_is_complete_and_env_is_per_call() {
    if !is_root() {
        return;
    }
    let Some(_) = bun() else { return };
    let mut s = session();
    let o = s.run_with(
        Language::Javascript,
        "process.stdout.write(\"y\".repeat(3_000_000)); console.log(process.env.FOO)",
        |r| {
            r.stdout_cap = 8 << 20;
            r.env = vec![("FOO".into(), "bar".into())];
        },
    );
    let out = o.ok();
    // Everything arrives before the call ends. (Bun itself may let `console.log` overtake
    // a queued `process.stdout.write`, so the order is not checked.)
    assert_eq!(out.len(), 3_000_004);
    assert_eq!(out.bytes().filter(|&b| b == b'y').count(), 3_000_000);
    assert!(out.contains("bar\n"));
    assert_eq!(
        js(&mut s, "console.log(process.env.FOO)").ok(),
        "undefined\n"
    );
}

#[test]
fn js_process_exit_loses_the_session() {
    if !is_root() {
        return;
    }
    let Some(_) = bun() else { return };
    let mut s = session();
    js(&mut s, "var gone = 1").ok();
    let o = js(&mut s, "console.log(\"bye\"); process.exit(4)");
    let c = o.done();
    assert_eq!((c.exit_code, c.repl_lost), (4, true));
    assert!(
        o.err().contains("the javascript REPL exited (status 4)"),
        "{}",
        o.err()
    );
    let o = js(&mut s, "typeof gone");
    assert_eq!(o.ok(), "\"undefined\"\n");
    assert!(o.done().repl_fresh);
}
