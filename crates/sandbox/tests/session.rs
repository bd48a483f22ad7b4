//! Sessions against real microVMs: REPL state per language, the failure table (what each
//! kind of failure does to the session), files, and the lifecycle (idle timeout, close,
//! cancellation, a dying VM). Images come from the user cache (`scripts/test.sh` builds them).

use std::path::Path;
use std::time::{Duration, Instant};

use sandbox::{
    Config, Error, FileError, FileErrorKind, FileKind, Language, Scheduler, Session, SessionOptions,
};

const T: Duration = Duration::from_secs(60);

fn config(runtime: &Path) -> Config {
    let mut config = Config::from_env().expect("config");
    config.runtime_dir = runtime.to_path_buf();
    config.scratch_dir = runtime.join("scratch");
    config
}

fn runtime_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbxsess-")
        .tempdir_in("/tmp")
        .expect("runtime dir")
}

fn qemu_processes_under(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&needle))
        .count()
}

async fn open(dir: &Path, options: SessionOptions) -> (Scheduler, Session) {
    let scheduler = Scheduler::new(config(dir)).await.expect("scheduler");
    let session = scheduler.session(options).await.expect("session");
    (scheduler, session)
}

async fn exec(session: &Session, code: &str) -> sandbox::ExecutionResult {
    session
        .exec(code, T, vec![])
        .await
        .unwrap_or_else(|e| panic!("exec {code:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_keeps_state_like_a_notebook() {
    let dir = runtime_dir();
    let (scheduler, s) = open(dir.path(), SessionOptions::new(Language::Python)).await;

    let first = exec(&s, "x = 1").await;
    assert_eq!(first.exit_code, 0, "{}", text(&first.stderr));
    assert_eq!(first.repl.map(|r| r.fresh), Some(true));
    let boom = exec(&s, "x = 2; raise ValueError(\"boom\"); x = 3").await;
    assert_eq!(boom.exit_code, 1);
    assert!(
        text(&boom.stderr).contains("ValueError: boom"),
        "{}",
        text(&boom.stderr)
    );
    let shown = exec(&s, "print(x)").await;
    assert_eq!((shown.exit_code, text(&shown.stdout)), (0, "2\n".into()));
    assert_eq!(shown.repl.map(|r| (r.fresh, r.lost)), Some((false, false)));

    // Incomplete input is a SyntaxError at once, never a wait for more lines.
    let started = Instant::now();
    let bad = exec(&s, "def f(:").await;
    eprintln!("SyntaxError answered in {:?}", started.elapsed());
    assert_eq!(bad.exit_code, 1);
    assert!(
        text(&bad.stderr).contains("SyntaxError"),
        "{}",
        text(&bad.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    let main = exec(
        &s,
        "if __name__ == \"__main__\":\n\n    print(\"main\", x)\n",
    )
    .await;
    assert_eq!(text(&main.stdout), "main 2\n");
    // The last expression is echoed, as in a notebook.
    assert_eq!(text(&exec(&s, "x * 21").await.stdout), "42\n");
    // Functions defined in the session work in multiprocessing workers.
    let pool = exec(
        &s,
        "import multiprocessing as mp\ndef sq(n):\n    return n * n\nwith mp.Pool(2) as p:\n    print(p.map(sq, range(5)))",
    )
    .await;
    assert_eq!(
        text(&pool.stdout),
        "[0, 1, 4, 9, 16]\n",
        "{}",
        text(&pool.stderr)
    );
    // A 'spawn' worker cannot see them: a clear error, at once, and the session goes on.
    let started = std::time::Instant::now();
    let spawned = exec(
        &s,
        "with mp.get_context('spawn').Pool(1) as p:\n    print(p.map(sq, [1]))",
    )
    .await;
    assert_ne!(spawned.exit_code, 0);
    assert!(!spawned.timed_out);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        text(&spawned.stderr).contains("'sq' was defined in the session"),
        "{}",
        text(&spawned.stderr)
    );
    assert_eq!(spawned.repl.map(|r| r.lost), Some(false));
    // The same with a fork server, whose workers' parent is not the REPL.
    let served = exec(
        &s,
        "with mp.get_context('forkserver').Pool(1) as p:\n    print(p.map(sq, [1]))",
    )
    .await;
    assert!(
        !served.timed_out && served.exit_code != 0,
        "{}",
        text(&served.stderr)
    );
    assert!(
        started.elapsed() < Duration::from_secs(50),
        "{:?}",
        started.elapsed()
    );

    // sys.exit ends the call, not the session.
    let exit = exec(&s, "import sys; sys.exit(3)").await;
    assert_eq!(exit.exit_code, 3);
    assert_eq!(exit.repl.map(|r| r.lost), Some(false));
    assert_eq!(text(&exec(&s, "print(x)").await.stdout), "2\n");

    // The REPL process dying loses the state; the next call says it is fresh.
    let died = exec(&s, "import os; os._exit(5)").await;
    assert_eq!(died.exit_code, 5);
    assert_eq!(died.repl.map(|r| r.lost), Some(true));
    let after = exec(&s, "print('x' in globals())").await;
    assert_eq!(text(&after.stdout), "False\n");
    assert_eq!(after.repl.map(|r| r.fresh), Some(true));
    assert_eq!(s.exec_count(), 13);

    s.close().await;
    assert!(matches!(
        s.exec("1", T, vec![]).await,
        Err(Error::SessionClosed { .. })
    ));
    scheduler.shutdown().await;
    assert_eq!(qemu_processes_under(dir.path()), 0);
}

/// Counts, inside the guest, processes named `sleep`, zombies, and whether /tmp/late exists.
const CENSUS: &str = r#"sleeps=0; zombies=0
for p in /proc/[0-9]*; do
  read -r _ comm state _ < "$p/stat" 2>/dev/null || continue
  [ "$comm" = "(sleep)" ] && sleeps=$((sleeps+1))
  [ "$state" = Z ] && zombies=$((zombies+1))
done
echo "sleeps=$sleeps zombies=$zombies late=$([ -e /tmp/late ] && echo yes || echo no)""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_keeps_cwd_exports_and_functions_and_a_timeout_kills_everything() {
    let dir = runtime_dir();
    let (scheduler, s) = open(dir.path(), SessionOptions::new(Language::Raw)).await;

    exec(&s, "cd /tmp && export V=7 && f() { echo fn; }").await;
    let r = exec(&s, "pwd; echo $V; f").await;
    assert_eq!(text(&r.stdout), "/tmp\n7\nfn\n", "{}", text(&r.stderr));
    exec(&s, "alias ll='echo aliased'").await;
    assert_eq!(text(&exec(&s, "ll").await.stdout), "aliased\n");

    // env given to a call applies to that call only.
    let with_env = s
        .exec("echo $ONLY_NOW", T, vec![("ONLY_NOW".into(), "yes".into())])
        .await
        .expect("exec with env");
    assert_eq!(text(&with_env.stdout), "yes\n");
    assert_eq!(text(&exec(&s, "echo \"[$ONLY_NOW]\"").await.stdout), "[]\n");

    // A background process started by a successful call keeps running.
    exec(&s, "sleep 300 &").await;
    assert!(text(&exec(&s, CENSUS).await.stdout).starts_with("sleeps=1 "));

    let timed = s
        .exec(
            "(sleep 100; touch /tmp/late) & sleep 100",
            Duration::from_secs(2),
            vec![],
        )
        .await
        .expect("timeout is a result");
    assert!(timed.timed_out);
    assert_eq!(timed.exit_code, -1);
    assert_eq!(timed.repl.map(|r| r.lost), Some(true));
    let census = exec(&s, CENSUS).await;
    assert_eq!(text(&census.stdout), "sleeps=0 zombies=0 late=no\n");
    assert_eq!(census.repl.map(|r| r.fresh), Some(true));
    // The working directory is state too: a fresh REPL starts at home.
    assert_eq!(text(&exec(&s, "pwd").await.stdout), "/home/user\n");

    // `exit` ends the shell, which is the REPL dying.
    let exited = exec(&s, "exit 4").await;
    assert_eq!(
        (exited.exit_code, exited.repl.map(|r| r.lost)),
        (4, Some(true))
    );
    assert_eq!(text(&exec(&s, "echo back").await.stdout), "back\n");

    scheduler.shutdown().await;
    assert!(matches!(
        s.exec("true", T, vec![]).await,
        Err(Error::SessionClosed { .. })
    ));
    assert_eq!(qemu_processes_under(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_keeps_declarations_and_awaits() {
    let dir = runtime_dir();
    let (scheduler, s) = open(dir.path(), SessionOptions::new(Language::Javascript)).await;

    let decl = exec(&s, "const greet = (n: string): string => \"hi \" + n").await;
    assert_eq!(decl.exit_code, 0, "{}", text(&decl.stderr));
    let r = exec(&s, "console.log(greet(\"a\"))").await;
    assert_eq!(text(&r.stdout), "hi a\n", "{}", text(&r.stderr));
    let r = exec(
        &s,
        "await new Promise(r => setTimeout(r, 10)); console.log(\"done\")",
    )
    .await;
    assert_eq!(text(&r.stdout), "done\n", "{}", text(&r.stderr));
    let thrown = exec(&s, "throw new Error(\"nope\")").await;
    assert_eq!(thrown.exit_code, 1);
    assert!(text(&thrown.stderr).contains("nope"));
    let rejected = exec(&s, "Promise.reject(new Error(\"unhandled\")); 1").await;
    assert_ne!(rejected.exit_code, 0, "{}", text(&rejected.stdout));
    assert!(text(&rejected.stderr).contains("unhandled"));
    // State survives errors.
    assert_eq!(
        text(&exec(&s, "console.log(greet(\"b\"))").await.stdout),
        "hi b\n"
    );

    scheduler.shutdown().await;
    assert_eq!(qemu_processes_under(dir.path()), 0);
}

fn guest_refusal(err: Error) -> FileErrorKind {
    match err {
        Error::File(FileError::Guest { kind, .. }) => kind,
        other => panic!("expected a guest refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_round_trip_and_stay_inside_home() {
    let dir = runtime_dir();
    let (scheduler, s) = open(dir.path(), SessionOptions::new(Language::Raw)).await;

    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(
        s.write_file("data/in.bin", &data, false)
            .await
            .expect("write"),
        300_000
    );
    assert_eq!(s.read_file("data/in.bin").await.expect("read"), data);
    assert_eq!(s.write_file("empty", b"", false).await.expect("empty"), 0);
    assert_eq!(s.read_file("./empty").await.expect("read empty"), b"");
    s.write_file("run.sh", b"#!/bin/sh\necho ran as $(id -u)\n", true)
        .await
        .expect("write script");
    let ran = exec(&s, "./run.sh; stat -c '%U %a' data/in.bin run.sh").await;
    assert_eq!(
        text(&ran.stdout),
        "ran as 1000\nuser 644\nuser 755\n",
        "{}",
        text(&ran.stderr)
    );

    let listing = s.list_files("").await.expect("list home");
    let names: Vec<_> = listing
        .entries
        .iter()
        .map(|e| (e.name.as_str(), e.kind))
        .collect();
    assert_eq!(
        names,
        [
            ("data", FileKind::Directory),
            ("empty", FileKind::File),
            ("run.sh", FileKind::File)
        ]
    );

    // Refused before anything is sent.
    for bad in ["../../etc/x", "/etc/x", "a\0b", ""] {
        match s.write_file(bad, b"x", false).await {
            Err(Error::Invalid(e)) => assert_eq!(e.field(), "path"),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    // Refused by the guest: symlinks out of home, however they are reached.
    exec(
        &s,
        "ln -s /etc/shadow leak && ln -s /etc etc && ln -s / root",
    )
    .await;
    assert_eq!(
        guest_refusal(s.read_file("leak").await.unwrap_err()),
        FileErrorKind::OutsideHome
    );
    assert_eq!(
        guest_refusal(s.write_file("etc/x", b"x", false).await.unwrap_err()),
        FileErrorKind::OutsideHome
    );
    assert_eq!(
        guest_refusal(s.list_files("root/etc").await.unwrap_err()),
        FileErrorKind::OutsideHome
    );
    assert_eq!(
        guest_refusal(s.read_file("missing").await.unwrap_err()),
        FileErrorKind::NotFound
    );
    assert_eq!(
        guest_refusal(s.read_file("data").await.unwrap_err()),
        FileErrorKind::NotAFile
    );
    let etc = exec(&s, "ls /etc/x 2>&1; readlink leak").await;
    assert!(
        text(&etc.stdout).contains("No such file"),
        "{}",
        text(&etc.stdout)
    );
    // Writing over the link replaces the link, never its target.
    s.write_file("leak", b"mine", false)
        .await
        .expect("replace the link");
    assert_eq!(
        text(
            &exec(&s, "cat leak; test -L leak || echo ' plain'")
                .await
                .stdout
        ),
        "mine plain\n"
    );

    // A sparse file larger than the disk is refused, not sent as gigabytes of zeros; a
    // file still growing is read as it was when the read began.
    exec(&s, "truncate -s 50G holes").await;
    assert_eq!(
        guest_refusal(s.read_file("holes").await.unwrap_err()),
        FileErrorKind::TooLarge
    );
    exec(
        &s,
        "(while :; do head -c 65536 /dev/zero; sleep 0.05; done > growing) & sleep 0.5",
    )
    .await;
    let mut sink = Vec::new();
    let size = s
        .read_file_to("growing", &mut sink)
        .await
        .expect("a growing file");
    assert_eq!(size, sink.len() as u64);
    exec(&s, "kill %1").await;

    scheduler.shutdown().await;
    assert_eq!(qemu_processes_under(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_cancellation_and_a_dead_vm_close_the_session() {
    let dir = runtime_dir();
    let scheduler = Scheduler::new(config(dir.path())).await.expect("scheduler");

    let idle = scheduler
        .session(SessionOptions::new(Language::Raw).idle_timeout(Duration::from_secs(2)))
        .await
        .expect("session");
    exec(&idle, "true").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    match idle.exec("true", T, vec![]).await {
        Err(Error::SessionClosed { reason }) => assert!(reason.contains("idle"), "{reason}"),
        other => panic!("expected closed: {other:?}"),
    }

    let cancelled = scheduler
        .session(SessionOptions::new(Language::Raw))
        .await
        .expect("session");
    let slow = tokio::time::timeout(
        Duration::from_secs(2),
        cancelled.exec("sleep 30", T, vec![]),
    );
    assert!(slow.await.is_err(), "the call should still be running");
    assert!(matches!(
        cancelled.exec("true", T, vec![]).await,
        Err(Error::SessionClosed { .. })
    ));

    let doomed = scheduler
        .session(SessionOptions::new(Language::Raw))
        .await
        .expect("session");
    exec(&doomed, "true").await;
    scheduler.registry().kill_all();
    let lost = doomed.exec("echo hi", T, vec![]).await.unwrap_err();
    assert!(
        matches!(
            lost,
            Error::OutcomeUnknown { .. } | Error::SessionClosed { .. }
        ),
        "{lost:?}"
    );
    assert!(matches!(
        doomed.exec("true", T, vec![]).await,
        Err(Error::SessionClosed { .. })
    ));

    for bad in [Duration::ZERO, Duration::from_secs(25 * 3600)] {
        assert!(matches!(
            scheduler
                .session(SessionOptions::new(Language::Raw).idle_timeout(bad))
                .await,
            Err(Error::Invalid(_))
        ));
    }
    scheduler.shutdown().await;
    assert_eq!(qemu_processes_under(dir.path()), 0);
}

/// Home is a disk of its own, not guest memory: a file larger than the whole VM's memory
/// fits, a full disk is an ordinary error the code sees, and the session goes on. The
/// images never have a name in the scratch dir, so nothing there can be left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_is_a_disk_larger_than_memory_and_filling_it_is_an_ordinary_error() {
    let dir = runtime_dir();
    let (scheduler, big) = open(
        dir.path(),
        SessionOptions::new(Language::Raw).memory_mb(256),
    )
    .await;
    let wrote = exec(
        &big,
        "dd if=/dev/zero of=f bs=1M count=400 status=none && stat -c %s f && findmnt -n -o FSTYPE /home/user || df -T /home/user",
    )
    .await;
    assert_eq!(wrote.exit_code, 0, "{}", text(&wrote.stderr));
    assert!(
        text(&wrote.stdout).starts_with("419430400\n"),
        "{}",
        text(&wrote.stdout)
    );
    assert!(
        text(&wrote.stdout).contains("ext4"),
        "{}",
        text(&wrote.stdout)
    );
    let scratch: Vec<_> = std::fs::read_dir(dir.path().join("scratch"))
        .expect("scratch dir exists")
        .collect();
    assert!(
        scratch.is_empty(),
        "named files in the scratch dir: {scratch:?}"
    );
    big.close().await;

    let small = scheduler
        .session(SessionOptions::new(Language::Raw).disk_mb(64))
        .await
        .expect("session with a 64 MiB disk");
    let full = exec(&small, "dd if=/dev/zero of=f bs=1M count=100 status=none").await;
    assert_ne!(full.exit_code, 0);
    assert!(
        text(&full.stderr).contains("No space left on device"),
        "{}",
        text(&full.stderr)
    );
    // The VM is fine and the space comes back once the file is gone.
    let again = exec(
        &small,
        "rm f && dd if=/dev/zero of=g bs=1M count=32 status=none && echo ok",
    )
    .await;
    assert_eq!(text(&again.stdout), "ok\n", "{}", text(&again.stderr));
    small.close().await;

    assert!(matches!(
        scheduler
            .session(SessionOptions::new(Language::Raw).disk_mb(1))
            .await,
        Err(Error::Invalid(sandbox::ValidationError::Disk { .. }))
    ));
    scheduler.shutdown().await;
    assert_eq!(qemu_processes_under(dir.path()), 0);
}

/// A program run in a session sees its files and behaves as a one-shot run (a script, no
/// REPL echo); the REPL starts afresh after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_in_a_session_runs_as_a_script_beside_the_files() {
    let dir = runtime_dir();
    let (scheduler, s) = open(dir.path(), SessionOptions::new(Language::Python)).await;
    exec(&s, "kept = 1").await;
    s.write_file("in.txt", b"42", false).await.expect("write");
    let ran = s
        .run_program(
            "import sys\nprint(open('in.txt').read(), __file__.endswith('.py'))\n7 * 6\nsys.exit(3)",
            T,
            vec![],
            None,
            |_| {},
        )
        .await
        .expect("program");
    assert_eq!((ran.exit_code, text(&ran.stdout)), (3, "42 True\n".into()));
    assert!(ran.repl.is_none());
    let after = exec(&s, "print('kept' in globals())").await;
    assert_eq!(text(&after.stdout), "False\n");
    assert_eq!(after.repl.map(|r| r.fresh), Some(true));
    assert!(matches!(
        s.run_program("1", T, vec![], Some("sh"), |_| {}).await,
        Err(Error::Invalid(sandbox::ValidationError::Extension { .. }))
    ));
    s.close().await;
    scheduler.shutdown().await;
    assert_eq!(qemu_processes_under(dir.path()), 0);
}
