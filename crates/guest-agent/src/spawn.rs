//! Starting the code's process: unprivileged, in its own session, with a clean environment,
//! stdin at EOF and stdout/stderr on pipes the agent reads.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Everything about how a process is started that one-shot runs and REPLs share.
pub(crate) struct Launch<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    /// The complete environment (nothing is inherited), later entries winning.
    pub env: &'a [(String, String)],
    pub cwd: &'a Path,
    pub uid: u32,
    pub gid: u32,
    /// Extra descriptors the child gets, as (ours, the number it has in the child). The
    /// child's copies are inheritable; ours stay close-on-exec.
    pub fds: &'a [(BorrowedFd<'a>, RawFd)],
}

/// Spawns the process with stdout and stderr piped. An `Err` means it never ran (for
/// example the interpreter is missing); std reports exec failures from the child back to us.
pub(crate) fn spawn(launch: &Launch) -> io::Result<Child> {
    let mut cmd = Command::new(launch.program);
    cmd.args(launch.args)
        .env_clear()
        // Later entries win, so the request's variables override the defaults.
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(launch.cwd)
        // Immediate EOF: the code must never read protocol bytes or wait for input.
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (uid, gid) = (launch.uid, launch.gid);
    let fds: Vec<(RawFd, RawFd)> = launch
        .fds
        .iter()
        .map(|(ours, theirs)| (ours.as_raw_fd(), *theirs))
        .collect();
    // SAFETY: the closure only makes raw system calls (async-signal-safe) and reads `fds`,
    // which was allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            place_fds(&fds)?;
            close_others_on_exec(&fds);
            become_user(uid, gid)
        });
    }
    cmd.spawn()
}

/// Runs in the forked child: gives each extra descriptor its number. Every source is first
/// moved above all the targets, so placing one can never overwrite another still to come.
fn place_fds(fds: &[(RawFd, RawFd)]) -> io::Result<()> {
    let Some(above) = fds.iter().map(|&(_, target)| target + 1).max() else {
        return Ok(());
    };
    let mut moved = [0 as RawFd; 8];
    if fds.len() > moved.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    // SAFETY (both loops): fcntl/dup2 on descriptors this process holds.
    for (slot, &(source, _)) in moved.iter_mut().zip(fds) {
        let fd = unsafe { libc::fcntl(source, libc::F_DUPFD_CLOEXEC, above) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        *slot = fd;
    }
    // dup2 clears close-on-exec on the target, which is what makes it reach the program.
    for (&fd, &(_, target)) in moved.iter().zip(fds) {
        if unsafe { libc::dup2(fd, target) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs in the forked child: descriptors the agent inherited without close-on-exec (from
/// whoever started it) must not reach the code. Marked rather than closed, because std's
/// own exec-error pipe is among them. Best effort: kernels before 5.11 lack the flag.
fn close_others_on_exec(fds: &[(RawFd, RawFd)]) {
    let first = fds.iter().map(|&(_, target)| target + 1).max().unwrap_or(3);
    // SAFETY: a raw syscall with plain integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
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

/// Pipe capacity for the code's output: as large as the stdout cap.
const PIPE_CAPACITY: libc::c_int = 1 << 20;

/// Takes the child's stdout and stderr pipes as plain files (so one loop can poll and read
/// them alike), enlarged to [`PIPE_CAPACITY`].
///
/// Runtimes that make stdout non-blocking (Bun, Node) drop whatever the pipe cannot take
/// at the moment they exit (`process.exit()` right after a big write). A pipe as large as
/// the output cap lets such a write complete at once. Best effort: a smaller pipe still
/// works for everything else.
pub(crate) fn output_pipes(child: &mut Child) -> [Option<File>; 2] {
    let out = child.stdout.take().map(|p| File::from(OwnedFd::from(p)));
    let err = child.stderr.take().map(|p| File::from(OwnedFd::from(p)));
    for file in [&out, &err].into_iter().flatten() {
        // SAFETY: F_SETPIPE_SZ on a pipe fd we own; no memory is passed.
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_CAPACITY) };
    }
    [out, err]
}

/// A pipe whose two ends are close-on-exec: (read end, write end).
pub(crate) fn pipe() -> io::Result<(File, File)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 fills the two-element array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created these descriptors and nobody else owns them.
    Ok(unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) })
}

/// Makes reads (or writes) on our end of a pipe return `WouldBlock` instead of waiting.
pub(crate) fn set_nonblocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// How many bytes the pipe can hold (its capacity), or the size we asked for if unknown.
pub(crate) fn pipe_capacity(file: &File) -> usize {
    // SAFETY: F_GETPIPE_SZ on a descriptor we own; no memory is passed.
    let size = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETPIPE_SZ) };
    usize::try_from(size).unwrap_or(PIPE_CAPACITY as usize)
}
