//! Process ownership as a user sees it: interrupts and a killed `sbx` leave no QEMU behind.

mod common;

use std::time::Duration;

use common::Sbx;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Waits until the run's QEMU exists, so the signal lands mid-run.
fn wait_for_vm(sbx: &Sbx) {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while sbx.leftover_processes().iter().all(|p| !p.contains("qemu")) {
        assert!(std::time::Instant::now() < until, "no QEMU appeared");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn ctrl_c_cancels_and_cleans_up() {
    let sbx = Sbx::new();
    let child = sbx.spawn(&["run", "-t", "60", "import time; time.sleep(60)"]);
    wait_for_vm(&sbx);
    std::thread::sleep(Duration::from_secs(2));
    kill(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    sbx.assert_clean();
}

#[test]
fn sigkill_of_sbx_takes_its_vm_down() {
    let sbx = Sbx::new();
    let mut child = sbx.spawn(&["run", "-t", "60", "import time; time.sleep(60)"]);
    wait_for_vm(&sbx);
    std::thread::sleep(Duration::from_secs(1));
    child.kill().unwrap();
    child.wait().unwrap();
    let left = sbx.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "QEMU outlived a killed sbx: {left:?}");
    // The next start reaps what the killed process could not remove.
    let out = sbx.run(&["run", "-l", "raw", "echo next"]);
    assert_eq!(common::stdout(&out), "next\n");
    sbx.assert_clean();
}

#[test]
fn doctor_explains_the_accelerator() {
    let sbx = Sbx::new();
    let out = sbx.run(&["doctor"]);
    let text = common::stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}{}", common::stderr(&out));
    assert!(text.contains("QEMU"), "{text}");
    assert!(text.contains("accelerator"), "{text}");
    assert!(text.contains("why"), "{text}");
}

#[test]
fn interrupted_json_run_reports_a_cancelled_error() {
    let sbx = Sbx::new();
    let child = sbx.spawn(&["run", "--json", "-t", "60", "import time; time.sleep(60)"]);
    wait_for_vm(&sbx);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON error object");
    assert_eq!(v["error"]["kind"], "cancelled");
    assert_eq!(v["error"]["code_may_have_run"], true);
    sbx.assert_clean();
}

/// Forcing KVM on a host whose KVM the probe rejected fails at once, saying why; where
/// KVM works, forcing it simply runs.
#[test]
fn forced_kvm_follows_the_probe() {
    let sbx = Sbx::new();
    let doctor = sbx.run(&["doctor", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&doctor.stdout).unwrap();
    let rejected = !report["accelerator"]["kvm_rejected_because"].is_null();
    let started = std::time::Instant::now();
    let out = sbx
        .cmd()
        .env("SBX_ACCEL", "kvm")
        .args(["run", "-l", "raw", "echo ok"])
        .output()
        .unwrap();
    if rejected {
        assert_eq!(out.status.code(), Some(125));
        assert!(
            common::stderr(&out).contains("SBX_ACCEL=kvm"),
            "{}",
            common::stderr(&out)
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}",
            started.elapsed()
        );
    } else {
        assert_eq!(common::stdout(&out), "ok\n", "{}", common::stderr(&out));
    }
    sbx.assert_clean();
}

#[test]
fn second_ctrl_c_kills_everything_at_once() {
    let sbx = Sbx::new();
    let child = sbx.spawn(&["run", "-t", "60", "import time; time.sleep(60)"]);
    wait_for_vm(&sbx);
    let pid = Pid::from_raw(child.id() as i32);
    kill(pid, Signal::SIGINT).unwrap();
    kill(pid, Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let left = sbx.wait_no_processes(Duration::from_secs(5));
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_vanished_reader_stops_the_run() {
    use std::io::Read;
    let sbx = Sbx::new();
    let mut child = sbx.spawn(&["run", "-t", "60", "-l", "raw", "yes"]);
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"y\ny\ny\ny\ny\n");
    let started = std::time::Instant::now();
    drop(stdout);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(141));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    sbx.assert_clean();
}
