//! Diagnostics on the serial console, the only output the host keeps from init.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

const CONSOLE: &str = "/dev/console";

/// Writes one line to the console. Best effort: there is nowhere else to report to.
pub fn line(msg: &str) {
    if let Ok(mut console) = open() {
        let _ = console.write_all(format!("{msg}\n").as_bytes());
    }
}

/// Points fds 0–2 at the console. The kernel only does so when the initramfs has a
/// `/dev/console` node; without it they are closed, and the agent would otherwise get
/// some random file as its stderr.
pub fn attach_stdio() {
    let Ok(console) = open() else { return };
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, which nothing in init holds as a File.
        unsafe { libc::dup2(console.as_raw_fd(), fd) };
    }
    // If open() itself returned fd 0–2, dropping it would close a standard descriptor.
    if console.as_raw_fd() <= 2 {
        std::mem::forget(console);
    }
}

fn open() -> std::io::Result<std::fs::File> {
    // O_NOCTTY: PID 1 must never acquire a controlling terminal (a serial BREAK or ^C
    // would otherwise signal it).
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(CONSOLE)
}

static TRACE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Turns on boot-stage tracing (kernel command line `sbx.debug=1`).
pub fn enable_trace() {
    TRACE.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// With tracing on, writes the guest uptime and a boot stage, to see where boot time goes.
pub fn trace(stage: &str) {
    if !TRACE.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    line(&format!(
        "sbx-init: {}.{:03} {stage}",
        ts.tv_sec,
        ts.tv_nsec / 1_000_000
    ));
}
