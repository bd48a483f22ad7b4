//! Host tests of the execution engine. They need root (to drop to the test uid) and use
//! uid/gid 31337, which nothing else on the machine runs as, because the engine kills every
//! process of its uid.

use guest_agent::engine::{run, Job};
use guest_agent::{code, kill};
use protocol::{Completion, GuestMessage, Stream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const TEST_UID: u32 = 31337;

/// Tests share the uid, and each run kills all of its processes: run them one at a time,
/// across processes too (nextest runs every test in its own process), hence a file lock.
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

static COUNTER: AtomicUsize = AtomicUsize::new(0);

struct Outcome {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_chunks: usize,
    done: Option<Completion>,
    failed: Option<String>,
    elapsed: Duration,
}

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return true;
    }
    eprintln!("skipped: these tests need root to run code as uid {TEST_UID}");
    false
}

/// A scratch directory for the code file, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn job(program: &str, script: &Path, timeout: Duration) -> Job {
    Job {
        program: program.into(),
        args: vec![script.as_os_str().to_owned()],
        env: vec![
            ("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into()),
            ("LANG".into(), "C.UTF-8".into()),
        ],
        cwd: "/tmp".into(),
        uid: TEST_UID,
        gid: TEST_UID,
        timeout,
        grace: Duration::from_millis(500),
        stdout_cap: 1 << 20,
        stderr_cap: 100 << 10,
        received: Instant::now(),
    }
}

fn exec_with(program: &str, ext: &str, code: &str, tweak: impl FnOnce(&mut Job)) -> Outcome {
    let _serial = serial();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let scratch =
        Scratch(std::env::temp_dir().join(format!("guest-agent-test-{}-{n}", std::process::id())));
    let script = code::write(&scratch.0, ext, code).expect("write code");
    let mut j = job(program, &script, Duration::from_secs(10));
    tweak(&mut j);
    let mut out = Outcome {
        stdout: vec![],
        stderr: vec![],
        stdout_chunks: 0,
        done: None,
        failed: None,
        elapsed: Duration::ZERO,
    };
    let start = Instant::now();
    run(&j, &mut |msg| {
        assert!(
            out.done.is_none() && out.failed.is_none(),
            "message after the end: {msg:?}"
        );
        match msg {
            GuestMessage::Output {
                stream: Stream::Stdout,
                data,
            } => {
                assert!(!data.is_empty() && data.len() <= protocol::MAX_CHUNK);
                out.stdout_chunks += 1;
                out.stdout.extend(data)
            }
            GuestMessage::Output {
                stream: Stream::Stderr,
                data,
            } => out.stderr.extend(data),
            GuestMessage::Completed(c) => out.done = Some(c),
            GuestMessage::Failed { message } => out.failed = Some(message),
            other => panic!("engine sent {other:?}"),
        }
        Ok(())
    })
    .expect("engine run");
    out.elapsed = start.elapsed();
    assert_eq!(
        kill::live_count(TEST_UID),
        0,
        "processes of the run survived it"
    );
    out
}

fn bash(code: &str) -> Outcome {
    exec_with("/bin/bash", "sh", code, |_| {})
}

fn done(o: &Outcome) -> &Completion {
    o.done
        .as_ref()
        .unwrap_or_else(|| panic!("no Completed; failed={:?}", o.failed))
}

#[test]
fn exact_bytes() {
    if !is_root() {
        return;
    }
    let o = bash("printf abc");
    assert_eq!(o.stdout, b"abc");
    assert_eq!(o.stderr, b"");
    let c = done(&o);
    assert_eq!(
        (c.exit_code, c.timed_out, c.stdout_truncated),
        (0, false, false)
    );
}

#[test]
fn binary_and_carriage_returns_are_untouched() {
    if !is_root() {
        return;
    }
    let o = bash(r"printf 'a\r\nb\0c\xff'; printf 'err\r' >&2");
    assert_eq!(o.stdout, b"a\r\nb\0c\xff");
    assert_eq!(o.stderr, b"err\r");
}

#[test]
fn exit_code_is_kept() {
    if !is_root() {
        return;
    }
    assert_eq!(done(&bash("exit 3")).exit_code, 3);
}

#[test]
fn signal_death_is_128_plus_n() {
    if !is_root() {
        return;
    }
    assert_eq!(done(&bash("kill -SEGV $$")).exit_code, 139);
    assert_eq!(done(&bash("kill -KILL $$")).exit_code, 137);
}

#[test]
fn output_over_cap_is_cut_and_drained() {
    if !is_root() {
        return;
    }
    // 2 MiB of stdout against a 1 MiB cap: the program neither blocks nor loses its code.
    for (code, want) in [
        ("head -c 2097152 /dev/zero | tr '\\0' x; exit 3", 3),
        ("head -c 2097152 /dev/zero", 0),
    ] {
        let o = bash(code);
        let c = done(&o);
        assert_eq!(o.stdout.len(), 1 << 20);
        assert!(c.stdout_truncated && !c.stderr_truncated);
        assert_eq!(c.exit_code, want);
    }
    // Exactly at the cap is not truncation.
    let o = exec_with("/bin/bash", "sh", "head -c 1000 /dev/zero", |j| {
        j.stdout_cap = 1000
    });
    assert_eq!(o.stdout.len(), 1000);
    assert!(!done(&o).stdout_truncated);
    // stderr has its own cap.
    let o = exec_with("/bin/bash", "sh", "head -c 5000 /dev/zero >&2", |j| {
        j.stderr_cap = 4096
    });
    assert_eq!(o.stderr.len(), 4096);
    assert!(done(&o).stderr_truncated);
}

#[test]
fn timeout_kills_and_keeps_earlier_output() {
    if !is_root() {
        return;
    }
    let o = exec_with(
        "/bin/bash",
        "sh",
        "echo before; sleep 60; echo after",
        |j| j.timeout = Duration::from_secs(2),
    );
    let c = done(&o);
    assert_eq!((c.exit_code, c.timed_out), (-1, true));
    assert_eq!(o.stdout, b"before\n");
    assert_eq!(o.stderr, b"\n[sandbox] execution timed out after 2 s\n");
    assert!(o.elapsed < Duration::from_secs(4), "took {:?}", o.elapsed);
}

#[test]
fn timeout_with_sigterm_ignored_still_ends() {
    if !is_root() {
        return;
    }
    let code = "trap '' TERM; echo ready; while :; do sleep 0.05; done";
    let o = exec_with("/bin/bash", "sh", code, |j| {
        j.timeout = Duration::from_millis(500)
    });
    let c = done(&o);
    assert_eq!((c.exit_code, c.timed_out), (-1, true));
    assert_eq!(o.stdout, b"ready\n");
    // timeout + grace (0.5 s each) + a little.
    assert!(
        o.elapsed < Duration::from_millis(2500),
        "took {:?}",
        o.elapsed
    );
}

#[test]
fn background_processes_do_not_hang_completion() {
    if !is_root() {
        return;
    }
    // Both hold stdout open; the run ends when the main process does, and they die with it.
    let o = bash("(sleep 100 &); setsid sleep 100 & echo main done");
    let c = done(&o);
    assert_eq!(c.exit_code, 0);
    assert_eq!(o.stdout, b"main done\n");
    assert!(o.elapsed < Duration::from_secs(3), "took {:?}", o.elapsed);
}

#[test]
fn stdin_is_at_eof() {
    if !is_root() {
        return;
    }
    assert_eq!(bash("read x; echo $?").stdout, b"1\n");
}

#[test]
fn runs_unprivileged_without_supplementary_groups() {
    if !is_root() {
        return;
    }
    let o =
        bash("id -u; id -g; id -G; ps -o pid=,pgid=,sid= -p $$ | awk '{print ($1==$2 && $2==$3)}'");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "31337\n31337\n31337\n1\n"
    );
}

#[test]
fn environment_is_exactly_what_was_given() {
    if !is_root() {
        return;
    }
    let o = exec_with("/bin/bash", "sh", "env | LC_ALL=C sort", |j| {
        j.env.push(("FOO".into(), "bar baz".into()));
        j.env.push(("LANG".into(), "C".into()));
    });
    let env = String::from_utf8_lossy(&o.stdout);
    // bash adds PWD, SHLVL and _ itself; nothing of ours beyond what was given.
    let ours: Vec<&str> = env
        .lines()
        .filter(|l| !l.starts_with("PWD=") && !l.starts_with("SHLVL=") && !l.starts_with("_="))
        .collect();
    assert_eq!(
        ours,
        ["FOO=bar baz", "LANG=C", "PATH=/usr/local/bin:/usr/bin:/bin"]
    );
}

#[test]
fn split_utf8_arrives_byte_exact() {
    if !is_root() {
        return;
    }
    // "€" is e2 82 ac; the two halves are written (and read) separately.
    let o = bash(r"printf '\xe2\x82'; sleep 0.2; printf '\xac!'");
    assert_eq!(o.stdout, "€!".as_bytes());
    assert!(
        o.stdout_chunks >= 2,
        "expected the character split across chunks"
    );
}

#[test]
fn missing_interpreter_is_failed() {
    if !is_root() {
        return;
    }
    let o = exec_with("/nonexistent/python3", "py", "print(1)", |_| {});
    assert!(o.done.is_none());
    assert!(
        o.failed
            .as_deref()
            .is_some_and(|m| m.contains("/nonexistent/python3")),
        "{:?}",
        o.failed
    );
}

#[test]
fn python_runs_and_reports_exit_codes() {
    if !is_root() {
        return;
    }
    let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        eprintln!("skipped: no system python3");
        return;
    };
    let o = exec_with(
        python,
        "py",
        "import sys\nprint('€', end='')\nsys.exit('msg')",
        |_| {},
    );
    assert_eq!(o.stdout, "€".as_bytes());
    assert_eq!(o.stderr, b"msg\n");
    assert_eq!(done(&o).exit_code, 1);
    let o = exec_with(python, "py", "import os\nos._exit(7)", |_| {});
    assert_eq!(done(&o).exit_code, 7);
}

#[test]
fn fork_bomb_is_contained_by_timeout() {
    if !is_root() {
        return;
    }
    // Bounded fan-out so a failure cannot take the host down; still many processes racing.
    let code = "f() { sleep 30 & sleep 30 & wait; }; for i in $(seq 50); do f & done; wait";
    let o = exec_with("/bin/bash", "sh", code, |j| {
        j.timeout = Duration::from_millis(500)
    });
    assert!(done(&o).timed_out);
}
