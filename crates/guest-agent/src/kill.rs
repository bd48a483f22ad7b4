//! Signalling and counting every process that belongs to one uid.
//!
//! The code's uid is the unit of ownership: everything the code started runs as that uid
//! and nothing else does, so "kill the run" means "kill every process of that uid". Process
//! groups and sessions are not enough because the code can leave them (`setsid`).

use std::io;
use std::time::{Duration, Instant};

/// Sends `sig` to every process whose real or saved uid is `uid`.
///
/// A short-lived helper drops to `uid` and calls `kill(-1, sig)`: the kernel then signals
/// exactly the processes that uid may signal (its own), atomically with respect to fork, so
/// a fork bomb cannot outrun it, and it can never hit a root process such as the agent.
pub fn signal_all(uid: u32, sig: i32) -> io::Result<()> {
    if uid == 0 {
        // kill(-1) as root would take the whole VM (and, in tests, the host) down.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal every root process",
        ));
    }
    // SAFETY: the child only makes raw system calls (async-signal-safe) and then `_exit`s,
    // so forking from a multi-threaded process is sound.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // Raw syscall rather than glibc's setresuid: no cross-thread setxid machinery in a
        // forked child. Dropping every uid from root also drops every capability (CAP_KILL).
        unsafe {
            let ok = libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
            if ok {
                libc::kill(-1, sig);
            }
            libc::_exit(if ok { 0 } else { 1 });
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: plain waitpid on the helper we just forked.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
        Ok(())
    } else {
        Err(io::Error::other(
            "signal helper could not drop to the target uid",
        ))
    }
}

/// Counts live (non-zombie) processes whose real, effective or saved uid is `uid`.
///
/// Reads `/proc/<pid>/status` rather than the owner of `/proc/<pid>`, which a process can
/// make read as root by clearing its dumpable flag.
pub fn live_count(uid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| {
            // A process may exit between listing and reading: that is simply "not live".
            std::fs::read_to_string(e.path().join("status"))
                .is_ok_and(|s| is_live_with_uid(&s, uid))
        })
        .count()
}

fn is_live_with_uid(status: &str, uid: u32) -> bool {
    let mut live = false;
    let mut owned = false;
    for line in status.lines() {
        if let Some(state) = line.strip_prefix("State:") {
            // Zombies (Z) and dead tasks (X) hold no resources and cannot run any more.
            live = !matches!(state.trim_start().chars().next(), Some('Z' | 'X'));
        } else if let Some(ids) = line.strip_prefix("Uid:") {
            owned = ids
                .split_whitespace()
                .take(3)
                .any(|id| id.parse() == Ok(uid));
        }
    }
    live && owned
}

/// SIGKILLs every process of `uid` until none is left alive or `bound` has passed.
/// Returns whether they are all gone.
pub fn kill_all(uid: u32, bound: Duration) -> io::Result<bool> {
    let start = Instant::now();
    loop {
        // Checking first spares the common case (nothing left) a fork, which is costly
        // under software emulation.
        if live_count(uid) == 0 {
            return Ok(true);
        }
        signal_all(uid, libc::SIGKILL)?;
        if live_count(uid) == 0 {
            return Ok(true);
        }
        if start.elapsed() >= bound {
            return Ok(false);
        }
        // Dying takes a moment (exit work, unmapping memory); poll in small steps.
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::is_live_with_uid;

    #[test]
    fn parses_status() {
        let s = "Name:\tsleep\nState:\tS (sleeping)\nUid:\t1000\t1000\t1000\t1000\n";
        assert!(is_live_with_uid(s, 1000));
        assert!(!is_live_with_uid(s, 1001));
        let z = "Name:\tsleep\nState:\tZ (zombie)\nUid:\t1000\t1000\t1000\t1000\n";
        assert!(!is_live_with_uid(z, 1000));
        let saved = "State:\tR (running)\nUid:\t0\t0\t1000\t0\n";
        assert!(is_live_with_uid(saved, 1000));
    }
}
