//! The library API against real microVMs (images from the user cache, built by
//! `sbx images build` / `scripts/test.sh`).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use sandbox::{Config, Error, Language, RunRequest, Scheduler, Stream, TransientError};

fn config(runtime: &Path) -> Config {
    let mut config = Config::from_env().expect("config");
    config.runtime_dir = runtime.to_path_buf();
    config
}

fn runtime_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbxlib-")
        .tempdir_in("/tmp")
        .unwrap()
}

fn qemu_processes_under(dir: &Path) -> usize {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&needle))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_chunks_add_up_to_the_result() {
    let dir = runtime_dir();
    let scheduler = Scheduler::new(config(dir.path())).await.unwrap();
    let code = "import sys, time\nfor i in range(5):\n    print(i, flush=True)\n    sys.stderr.write(f'e{i}\\n'); sys.stderr.flush()\n    time.sleep(0.05)";
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut chunks = 0;
    let result = scheduler
        .run_streaming(RunRequest::new(Language::Python, code), |c| {
            chunks += 1;
            match c.stream {
                Stream::Stdout => out.extend(c.data),
                Stream::Stderr => err.extend(c.data),
            }
        })
        .await
        .unwrap();
    assert_eq!(result.stdout, b"0\n1\n2\n3\n4\n");
    assert_eq!(out, result.stdout);
    assert_eq!(err, result.stderr);
    assert!(
        chunks >= 5,
        "output should stream as it is produced, got {chunks} chunks"
    );
    assert!(result.timing.total_ms >= result.timing.boot_ms + result.timing.execute_ms);
    scheduler.shutdown().await;
    assert_eq!(qemu_processes_under(dir.path()), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_errors_name_the_field() {
    let dir = runtime_dir();
    let scheduler = Scheduler::new(config(dir.path())).await.unwrap();
    let err = scheduler
        .run(RunRequest::new(Language::Raw, "   "))
        .await
        .unwrap_err();
    match err {
        Error::Invalid(v) => assert_eq!(v.field(), "code"),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

/// A "QEMU" that answers `-version` like the real one but dies at once when asked to boot:
/// every boot fails transiently, is retried, and the slot is released in the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_boots_are_retried_then_reported_as_transient() {
    let dir = runtime_dir();
    let fake = dir.path().join("fake-qemu");
    let real = which_qemu();
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\ncase \"$*\" in *-version*) exec {real} \"$@\";; esac\necho 'fake QEMU: refusing to boot' >&2\nexit 1\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = config(&dir.path().join("rt"));
    cfg.qemu = Some(fake);
    cfg.accelerator = sandbox::AccelChoice::Force(sandbox::Accelerator::Tcg);
    cfg.max_concurrent_vms = 1;
    let scheduler = Scheduler::new(cfg).await.unwrap();
    let err = scheduler
        .run(RunRequest::new(Language::Raw, "echo never"))
        .await
        .unwrap_err();
    assert!(err.is_retry_safe(), "{err:?}");
    assert!(!err.code_may_have_run());
    match &err {
        Error::Transient(TransientError::Boot { retries, .. }) => assert_eq!(*retries, 2),
        other => panic!("expected a transient boot error, got {other:?}"),
    }
    assert!(
        err.to_string().contains("refusing to boot") || format!("{err:?}").contains("refusing"),
        "{err:?}"
    );
    // The one slot was released: a second run gets to boot (and fails the same way) rather
    // than waiting forever, and shutdown returns.
    let again = tokio::time::timeout(
        Duration::from_secs(60),
        scheduler.run(RunRequest::new(Language::Raw, "echo x")),
    )
    .await;
    assert!(matches!(again, Ok(Err(Error::Transient(_)))));
    tokio::time::timeout(Duration::from_secs(10), scheduler.shutdown())
        .await
        .expect("shutdown returns");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_run_kills_its_vm() {
    let dir = runtime_dir();
    let scheduler = Scheduler::new(config(dir.path())).await.unwrap();
    let run =
        scheduler.run(RunRequest::new(Language::Raw, "sleep 60").timeout(Duration::from_secs(90)));
    // Long enough to be booting or running, far shorter than the run.
    let outcome = tokio::time::timeout(Duration::from_secs(4), run).await;
    assert!(outcome.is_err(), "the run should still be going");
    assert_eq!(
        qemu_processes_under(dir.path()),
        0,
        "a dropped run left its QEMU"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(
        left.iter()
            .all(|p| p.is_dir() && std::fs::read_dir(p).unwrap().next().is_none()),
        "{left:?}"
    );
}

fn which_qemu() -> String {
    let paths = std::env::var("PATH").unwrap_or_default();
    for dir in paths.split(':') {
        let p = Path::new(dir).join("qemu-system-x86_64");
        if p.is_file() {
            return p.display().to_string();
        }
    }
    panic!("qemu-system-x86_64 not on PATH");
}
