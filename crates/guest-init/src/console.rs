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
