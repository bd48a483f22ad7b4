//! Starting the code's process: unprivileged, in its own session, with a clean environment.

use crate::engine::Job;
use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};

/// Spawns the job's program. An `Err` means the code never ran (for example the
/// interpreter is missing); std reports exec failures from the child back to us.
pub(crate) fn spawn(job: &Job) -> io::Result<Child> {
    let mut cmd = Command::new(&job.program);
    cmd.args(&job.args)
        .env_clear()
        // Later entries win, so the request's variables override the defaults.
        .envs(job.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&job.cwd)
        // Immediate EOF: the code must never read protocol bytes or wait for input.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (uid, gid) = (job.uid, job.gid);
    // SAFETY: `become_user` only makes raw system calls, which are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || become_user(uid, gid));
    }
    cmd.spawn()
}

/// Runs in the forked child before exec. We drop privileges ourselves (instead of
/// `CommandExt::uid`) because resetting the OOM score must happen while still root.
fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY (all blocks): raw syscalls with valid, static arguments.
    unsafe {
        // Own session and process group; no controlling terminal.
        if libc::setsid() < 0 {
            return Err(io::Error::last_os_error());
        }
        // The agent shields itself from the OOM killer and children inherit that; the code
        // must be the first thing the OOM killer picks, not the last. Best effort.
        let fd = libc::open(
            c"/proc/self/oom_score_adj".as_ptr(),
            libc::O_WRONLY | libc::O_CLOEXEC,
        );
        if fd >= 0 {
            libc::write(fd, b"0".as_ptr().cast(), 1);
            libc::close(fd);
        }
        // No supplementary groups: root's groups must not leak into the sandbox user.
        if libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) != 0
            || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            || libc::syscall(libc::SYS_setresuid, uid, uid, uid) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
