//! The guest's home disk: a sparse ext4 image made fresh for each boot.
//!
//! The home directory lives on a disk rather than in guest memory so that a large file
//! costs host disk, not RAM anywhere: guest pages holding it can be written back and
//! dropped, and QEMU's writes land in the host page cache. The image is an unnamed file
//! (`O_TMPFILE`, or created and unlinked at once where the filesystem lacks it), so it has
//! no name that could outlive the VM: the kernel frees it when QEMU and we close it, even
//! if both are SIGKILLed. QEMU receives it as inherited descriptors in an fd set.
//!
//! `mke2fs` is run rather than writing ext4 structures by hand: it is part of every Debian
//! and Ubuntu base system, takes ~3 ms for a sparse image, and no Rust crate creates ext4.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::VmmError;

/// Where and how big the home disk of a VM is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HomeDiskSpec {
    /// A directory on a disk-backed filesystem (not tmpfs, or the image costs host RAM).
    pub dir: PathBuf,
    /// Apparent size; the image only takes host disk space for what the guest writes.
    pub size_mb: u32,
}

/// `mke2fs` normally finishes in milliseconds; this only bounds a wedged one.
const MKFS_TIMEOUT: Duration = Duration::from_secs(30);

/// A formatted home image, open twice: QEMU wants a read-write and a read-only descriptor
/// in the fd set, since it opens images in both modes while probing them.
#[derive(Debug)]
pub(crate) struct ScratchDisk {
    rw: File,
    ro: File,
}

impl ScratchDisk {
    /// Creates and formats a sparse image of `spec.size_mb` MiB in `spec.dir`.
    pub(crate) async fn create(spec: &HomeDiskSpec) -> Result<ScratchDisk, VmmError> {
        let dir = spec.dir.clone();
        let size = u64::from(spec.size_mb) * 1024 * 1024;
        let rw = tokio::task::spawn_blocking(move || new_image(&dir, size))
            .await
            .map_err(|e| VmmError::io("creating the home disk in", &spec.dir, e.into()))??;
        // Through /proc, so the unnamed file can be opened again (and given to mke2fs).
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", rw.as_raw_fd()));
        format(rw.as_raw_fd()).await?;
        let ro = File::open(&proc_path)
            .map_err(|e| VmmError::io("reopening the home disk", &spec.dir, e))?;
        Ok(ScratchDisk { rw, ro })
    }

    /// The descriptors QEMU must inherit, read-write first.
    pub(crate) fn fds(&self) -> [RawFd; 2] {
        [self.rw.as_raw_fd(), self.ro.as_raw_fd()]
    }
}

fn new_image(dir: &Path, size: u64) -> Result<File, VmmError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| VmmError::io("creating the scratch directory", dir, e))?;
    let file = tempfile::tempfile_in(dir)
        .map_err(|e| VmmError::io("creating the home disk in", dir, e))?;
    file.set_len(size)
        .map_err(|e| VmmError::io("sizing the home disk in", dir, e))?;
    Ok(file)
}

/// Formats the image as ext4 without a journal (a throwaway disk needs no crash
/// consistency) and with its root owned by the sandbox user. The feature list is spelled
/// out and the distribution's mke2fs.conf ignored, so every host makes the same filesystem
/// and none uses a feature the guest kernel lacks. Inode tables are left unwritten
/// (`uninit_bg` + `lazy_itable_init`): the image stays sparse and the guest mounts it with
/// `noinit_itable`.
async fn format(fd: RawFd) -> Result<(), VmmError> {
    let mke2fs = find_mke2fs()?;
    let mut cmd = tokio::process::Command::new(&mke2fs);
    cmd.args([
        "-q", "-F", "-b", "4096", "-I", "256", "-i", "16384", "-m", "0",
    ])
    .args([
        "-O",
        "extent,flex_bg,64bit,huge_file,dir_nlink,extra_isize,uninit_bg,^resize_inode",
        "-E",
        "root_owner=1000:1000,lazy_itable_init=1,nodiscard",
    ])
    .arg(proc_path_for_child(fd))
    .env("MKE2FS_CONFIG", "/dev/null")
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    // SAFETY: runs in the forked child before exec; fcntl is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || clear_cloexec(fd));
    }
    let failed = |reason: String| VmmError::Tool {
        tool: mke2fs.clone(),
        action: "formatting the home disk",
        reason,
    };
    let child = cmd.spawn().map_err(|e| failed(e.to_string()))?;
    let out = tokio::time::timeout(MKFS_TIMEOUT, child.wait_with_output())
        .await
        .map_err(|_| failed(format!("did not finish within {MKFS_TIMEOUT:?}")))?
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(failed(format!("{}: {}", out.status, stderr.trim())));
    }
    Ok(())
}

/// The child inherits the descriptor under the same number, so it reaches the unnamed
/// file through its own /proc entry.
fn proc_path_for_child(fd: RawFd) -> OsString {
    OsString::from(format!("/dev/fd/{fd}"))
}

/// Lets `fd` survive `exec` in a forked child. Only for use in `pre_exec`.
pub(crate) fn clear_cloexec(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor number; an invalid one only returns EBADF.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `dir` (or, if it does not exist yet, its nearest existing parent) is on a
/// memory-backed filesystem, where home disk images would take host RAM.
pub fn scratch_on_tmpfs(dir: &Path) -> bool {
    use nix::sys::statfs::{statfs, FsType, TMPFS_MAGIC};
    // Not in nix; the value is linux/magic.h's.
    const RAMFS_MAGIC: FsType = FsType(0x8584_58f6);
    let existing = dir
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    statfs(existing)
        .map(|s| [TMPFS_MAGIC, RAMFS_MAGIC].contains(&s.filesystem_type()))
        .unwrap_or(false)
}

/// `mke2fs` lives in /sbin, which is not on an ordinary user's `PATH`.
pub fn find_mke2fs() -> Result<PathBuf, VmmError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/sbin"].map(PathBuf::from));
    which::which_in_global(
        "mke2fs",
        Some(std::env::join_paths(dirs).unwrap_or_default()),
    )
    .ok()
    .and_then(|mut found| found.next())
    .ok_or(VmmError::ToolMissing {
        tool: "mke2fs",
        package: "e2fsprogs",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn image_is_sparse_ext4_and_has_no_name() {
        let dir = tempfile::tempdir().unwrap();
        let spec = HomeDiskSpec {
            dir: dir.path().join("scratch"),
            size_mb: 2048,
        };
        let disk = ScratchDisk::create(&spec).await.unwrap();
        let meta = disk.rw.metadata().unwrap();
        assert_eq!(meta.len(), 2048 * 1024 * 1024);
        assert!(
            meta.blocks() * 512 < 4 * 1024 * 1024,
            "only metadata is written: {} bytes",
            meta.blocks() * 512
        );
        assert_eq!(meta.nlink(), 0, "the image has no name");
        assert_eq!(std::fs::read_dir(&spec.dir).unwrap().count(), 0);
        // ext4's magic number sits at offset 1080 of the superblock.
        use std::os::unix::fs::FileExt;
        let mut magic = [0u8; 2];
        disk.ro.read_exact_at(&mut magic, 1080).unwrap();
        assert_eq!(magic, [0x53, 0xef]);
    }

    #[tokio::test]
    async fn unusable_dir_is_a_setup_error_naming_it() {
        let err = ScratchDisk::create(&HomeDiskSpec {
            dir: "/proc/sbx-no-such-dir".into(),
            size_mb: 64,
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("/proc/sbx-no-such-dir"), "{err}");
    }
}
