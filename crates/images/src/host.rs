//! Host environment helpers for building: tool discovery, root check, running subprocesses
//! with their stderr kept for error messages, and small filesystem helpers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::ImageError;

/// A host program the build runs, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tool {
    pub name: &'static str,
    pub apt_package: &'static str,
}

pub(crate) const APT_GET: Tool = Tool {
    name: "apt-get",
    apt_package: "apt",
};
pub(crate) const DPKG_DEB: Tool = Tool {
    name: "dpkg-deb",
    apt_package: "dpkg",
};
pub(crate) const MMDEBSTRAP: Tool = Tool {
    name: "mmdebstrap",
    apt_package: "mmdebstrap",
};
pub(crate) const MKFS_EROFS: Tool = Tool {
    name: "mkfs.erofs",
    apt_package: "erofs-utils",
};
pub(crate) const CHROOT: Tool = Tool {
    name: "chroot",
    apt_package: "coreutils",
};
pub(crate) const PYTHON3: Tool = Tool {
    name: "python3",
    apt_package: "python3-pip",
};
pub(crate) const NPM: Tool = Tool {
    name: "npm",
    apt_package: "npm",
};

/// Finds `name` in `PATH`.
pub(crate) fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Fails with [`ImageError::MissingTool`] for the first tool not in `PATH`.
pub(crate) fn require_tools(tools: &[Tool]) -> Result<(), ImageError> {
    for tool in tools {
        if which(tool.name).is_none() {
            return Err(ImageError::MissingTool {
                tool: tool.name.to_string(),
                apt_package: tool.apt_package.to_string(),
            });
        }
    }
    Ok(())
}

/// Fails with [`ImageError::NotRoot`] unless the effective uid is 0.
pub(crate) fn require_root(what: &str) -> Result<(), ImageError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        Ok(())
    } else {
        Err(ImageError::NotRoot {
            what: what.to_string(),
        })
    }
}

/// Last `max_lines` lines of a subprocess's output, for error messages.
pub(crate) fn tail(bytes: &[u8], max_lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}

/// Runs `cmd` to completion; a spawn failure or non-zero exit becomes
/// [`ImageError::BuildStep`] naming `image` and `step`, with the stderr tail attached.
/// Returns stdout.
pub(crate) fn run(image: &str, step: &str, cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let output = contained(cmd).stdin(Stdio::null()).output().map_err(|e| {
        ImageError::step(
            image,
            step,
            format!("could not start {:?}: {e}", cmd.get_program()),
        )
    })?;
    if output.status.success() {
        Ok(output.stdout)
    } else {
        // Some tools (mmdebstrap) report on stdout; keep both when stderr is empty.
        let mut stderr_tail = tail(&output.stderr, 30);
        if stderr_tail.trim().is_empty() {
            stderr_tail = tail(&output.stdout, 30);
        }
        Err(ImageError::BuildStep {
            image: image.to_string(),
            step: step.to_string(),
            detail: format!("{} exited with {}", display_cmd(cmd), output.status),
            stderr_tail,
        })
    }
}

/// The same command, set up so that it and everything it starts die with this process:
/// a build tool (mmdebstrap, dpkg inside a chroot) must not keep writing into the cache
/// after `sbx` is killed. As root the command runs as PID 1 of its own PID namespace
/// (`unshare --kill-child`), so the kernel kills the whole tree when it goes; otherwise
/// only the direct child is tied to us. Its own process group keeps a terminal's Ctrl+C
/// away from it: `sbx` decides how to stop a build.
fn contained(cmd: &Command) -> Command {
    let as_root = unsafe { libc::geteuid() } == 0;
    let mut outer = if as_root && Path::new(UNSHARE).exists() {
        let mut c = Command::new(UNSHARE);
        c.args(["--pid", "--fork", "--kill-child", "--"])
            .arg(cmd.get_program());
        c
    } else {
        Command::new(cmd.get_program())
    };
    outer.args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => outer.env(key, v),
            None => outer.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        outer.current_dir(dir);
    }
    use std::os::unix::process::CommandExt;
    outer.process_group(0);
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, kill) between fork and exec.
    unsafe {
        outer.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if libc::getppid() != parent {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
            Ok(())
        });
    }
    outer
}

/// util-linux's `unshare`, present on every Debian system.
const UNSHARE: &str = "/usr/bin/unshare";

fn display_cmd(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args().take(12) {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// Total bytes of regular files under `path` (not following symlinks).
pub(crate) fn disk_size(path: &Path) -> Result<u64, ImageError> {
    let meta = fs::symlink_metadata(path).map_err(ImageError::io("stat", path))?;
    if !meta.is_dir() {
        return Ok(if meta.is_file() { meta.len() } else { 0 });
    }
    let mut total = 0;
    for entry in fs::read_dir(path).map_err(ImageError::io("read dir", path))? {
        let entry = entry.map_err(ImageError::io("read dir", path))?;
        total += disk_size(&entry.path())?;
    }
    Ok(total)
}

/// Writes `bytes` to `to` and sets the permission bits to `mode`.
pub(crate) fn write_file(to: &Path, bytes: &[u8], mode: u32) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    fs::write(to, bytes).map_err(ImageError::io("write", to))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).map_err(ImageError::io("chmod", to))
}

/// The only entry of `dir` whose name starts with `prefix` and ends with `suffix`.
pub(crate) fn find_one(
    dir: &Path,
    prefix: &str,
    suffix: &str,
) -> Result<Option<PathBuf>, ImageError> {
    let mut found = None;
    for entry in fs::read_dir(dir).map_err(ImageError::io("read dir", dir))? {
        let entry = entry.map_err(ImageError::io("read dir", dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(suffix) {
            found = Some(entry.path());
        }
    }
    Ok(found)
}

/// Mount points at or below `dir`, deepest first, read from `/proc/self/mountinfo`.
pub(crate) fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(dir) = dir.canonicalize() else {
        return Vec::new();
    };
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(&dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            out.push(
                (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'),
            );
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes a build directory. A build killed inside mmdebstrap can leave `proc`/`sys`/`dev`
/// mounted in its chroot, and a recursive delete would then descend into the host's
/// filesystems: detach every mount below `dir` first, and refuse if any remains.
pub(crate) fn remove_build_dir(dir: &Path) -> Result<(), ImageError> {
    for mount in mounts_under(dir) {
        if let Ok(c) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) {
            // SAFETY: `c` is a valid NUL-terminated path; MNT_DETACH has no memory effects.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    if let Some(left) = mounts_under(dir).first() {
        return Err(ImageError::Io {
            op: "refusing to delete (still mounted)",
            path: left.clone(),
            source: std::io::Error::from(std::io::ErrorKind::ResourceBusy),
        });
    }
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ImageError::io("remove", dir)(e)),
        _ => Ok(()),
    }
}

/// A temp build directory that is removed (mounts detached first) when dropped, so every
/// error path cleans up.
pub(crate) struct BuildDir {
    path: PathBuf,
}

impl BuildDir {
    /// Creates `<parent>/<prefix><random>/`.
    pub(crate) fn new(parent: &Path, prefix: &str) -> Result<BuildDir, ImageError> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(ImageError::io("create temp dir in", parent))?;
        // Ownership of the directory moves to us; our Drop removes it.
        Ok(BuildDir { path: dir.keep() })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; a leftover is removed by the next prune.
        let _ = remove_build_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_apt_package() {
        let bogus = Tool {
            name: "sbx-no-such-tool",
            apt_package: "sbx-pkg",
        };
        let err = require_tools(&[bogus]).unwrap_err();
        assert!(
            matches!(err, ImageError::MissingTool { ref tool, ref apt_package } if tool == "sbx-no-such-tool" && apt_package == "sbx-pkg"),
            "{err}"
        );
        assert!(err.to_string().contains("apt-get install sbx-pkg"));
        require_tools(&[Tool {
            name: "sh",
            apt_package: "dash",
        }])
        .unwrap();
    }

    #[test]
    fn failed_step_carries_stderr_tail() {
        let err = run(
            "kernel",
            "probe",
            Command::new("sh").args(["-c", "echo boom >&2; exit 3"]),
        )
        .unwrap_err();
        match err {
            ImageError::BuildStep {
                ref step,
                ref stderr_tail,
                ..
            } => {
                assert_eq!(step, "probe");
                assert_eq!(stderr_tail, "boom");
            }
            ref other => panic!("expected BuildStep, got {other}"),
        }
    }

    #[test]
    fn mountinfo_unescape() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
    }

    #[test]
    fn build_dir_is_removed_on_drop() {
        let parent = tempfile::tempdir().unwrap();
        let path = {
            let d = BuildDir::new(parent.path(), ".tmp-test-").unwrap();
            fs::create_dir_all(d.path().join("work/root/usr")).unwrap();
            fs::write(d.path().join("work/root/usr/f"), b"x").unwrap();
            d.path().to_path_buf()
        };
        assert!(!path.exists());
        assert!(mounts_under(parent.path()).is_empty());
    }

    #[test]
    fn removal_detaches_leftover_mounts_first() {
        // Needs root to mount; elsewhere there is nothing to test.
        if require_root("test").is_err() {
            return;
        }
        let parent = tempfile::tempdir().unwrap();
        let proc_dir = parent.path().join(".tmp-rootfs-raw-x/work/root/proc");
        fs::create_dir_all(&proc_dir).unwrap();
        let target = std::ffi::CString::new(proc_dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid NUL-terminated strings; a tmpfs mount touches no process memory.
        let rc = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return; // no mount permission in this environment (e.g. unprivileged container)
        }
        fs::write(proc_dir.join("precious"), b"x").unwrap();
        assert_eq!(mounts_under(parent.path()).len(), 1);
        remove_build_dir(&parent.path().join(".tmp-rootfs-raw-x")).unwrap();
        assert!(mounts_under(parent.path()).is_empty());
        assert!(!parent.path().join(".tmp-rootfs-raw-x").exists());
    }

    #[test]
    fn root_mount_is_under_root() {
        assert!(!mounts_under(Path::new("/")).is_empty());
    }
}
