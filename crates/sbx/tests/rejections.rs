//! Bad input is refused with the usage status before any VM starts. `SBX_QEMU` points at a
//! file that does not exist, so reaching QEMU at all would give a different status.

mod common;

use common::{stderr, Sbx};

fn rejected(args: &[&str], needle: &str) {
    let sbx = Sbx::new();
    let out = sbx
        .cmd()
        .env("SBX_QEMU", "/nonexistent/qemu")
        .args(args)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
    assert!(
        stderr(&out).contains(needle),
        "{args:?}: {:?} lacks {needle:?}",
        stderr(&out)
    );
    assert!(sbx.leftover_files().is_empty());
}

#[test]
fn bad_code_is_rejected() {
    rejected(&["run", ""], "code");
    rejected(&["run", "  \n\t "], "empty");
    // argv cannot carry a NUL byte, so it arrives through stdin or a file.
    let sbx = Sbx::new();
    let out = sbx.run_with_stdin(
        &["run", "-"],
        &[("SBX_QEMU", "/nonexistent/qemu")],
        b"print(1)\0",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("NUL"), "{}", stderr(&out));
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.py");
    std::fs::write(&big, "#".repeat(1024 * 1024 + 1)).unwrap();
    rejected(&["run", big.to_str().unwrap()], "limit");
    let nul = dir.path().join("nul.py");
    std::fs::write(&nul, b"print(1)\0").unwrap();
    rejected(&["run", nul.to_str().unwrap()], "NUL");
}

#[test]
fn bad_env_is_rejected() {
    rejected(&["run", "-e", "LD_PRELOAD=x", "print(1)"], "LD_PRELOAD");
    rejected(
        &["run", "-e", "A=line\nbreak", "print(1)"],
        "control character",
    );
    rejected(
        &["run", "-e", "A=\u{1b}[31m", "print(1)"],
        "control character",
    );
    rejected(&["run", "-e", "NOEQUALS", "print(1)"], "KEY=VALUE");
    rejected(&["run", "-e", "1A=x", "print(1)"], "1A");
}

#[test]
fn bad_limits_are_rejected() {
    rejected(&["run", "-t", "0", "print(1)"], "timeout");
    rejected(&["run", "-t", "301", "print(1)"], "timeout");
    rejected(&["run", "-t", "nan", "print(1)"], "timeout");
    rejected(&["run", "-m", "64", "print(1)"], "memory");
    rejected(&["run", "-l", "cobol", "print(1)"], "cobol");
}

#[test]
fn json_errors_are_typed() {
    let sbx = Sbx::new();
    let out = sbx
        .cmd()
        .args(["run", "--json", "-t", "0", "print(1)"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid_request");
    assert_eq!(v["error"]["retry_safe"], false);
}

#[test]
fn endless_stdin_is_refused_without_reading_it_all() {
    let sbx = Sbx::new();
    let mut child = sbx
        .cmd()
        .env("SBX_QEMU", "/nonexistent/qemu")
        .args(["run", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // Like `yes 'print(1)' | sbx run -`: the writer only stops when sbx closes the pipe.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let line = b"print(1)\n".repeat(4096);
        for _ in 0..100_000 {
            if stdin.write_all(&line).is_err() {
                return true;
            }
        }
        false
    });
    let started = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("limit"), "{}", stderr(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    assert!(writer.join().unwrap(), "sbx read the whole endless input");
}

#[test]
fn huge_and_odd_files_are_refused_up_front() {
    let dir = tempfile::tempdir().unwrap();
    let sparse = dir.path().join("sparse.py");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(5 << 30)
        .unwrap();
    let started = std::time::Instant::now();
    rejected(&["run", sparse.to_str().unwrap()], "limit");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the size was not checked first"
    );
    rejected(&["run", dir.path().to_str().unwrap()], "is a directory");
    rejected(&["run", "/dev/zero"], "not a regular file");
    rejected(&["run", "no_such_script.py"], "no such file");
    rejected(&["run", "./missing/job.sh"], "no such file");
}

#[test]
fn mistyped_flags_are_usage_errors_not_code() {
    rejected(&["run", "--verbose"], "--verbose");
    rejected(&["run", "--bogus", "print(1)"], "--bogus");
    rejected(&["run", "-l", "raw", "-x"], "-x");
}

#[test]
fn environment_over_the_total_is_rejected() {
    let value = format!("V={}", "v".repeat(32 * 1024));
    let mut args = vec!["run".to_string()];
    for i in 0..20 {
        args.push("-e".into());
        args.push(value.replacen("V=", &format!("V{i}="), 1));
    }
    args.push("print(1)".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    rejected(&args, "total");
}

#[test]
fn usage_errors_are_json_with_json() {
    let sbx = Sbx::new();
    for args in [
        vec!["run", "--json", "missing-file.py"],
        vec![
            "run",
            "--json",
            "--upload",
            "/nonexistent/x",
            "-c",
            "print(1)",
        ],
        vec!["run", "--json", "--expose", "http", "-c", "print(1)"],
    ] {
        let out = sbx.run(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {:?}", out.stdout));
        assert_eq!(v["error"]["kind"], "usage", "{args:?}: {v}");
        assert_eq!(v["error"]["code_may_have_run"], false);
    }
}
