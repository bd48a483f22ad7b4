//! Thin wrappers over mount(2) that say what failed.

use crate::error::InitError;
use nix::mount::{mount, MsFlags};
use std::path::Path;

/// Flags for proc, sysfs and friends: nothing on them should be executable or a device.
pub const PSEUDO: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);
/// Flags for writable scratch areas the code can fill: no setuid files, no device nodes.
pub const SCRATCH: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

pub fn mount_fs(
    source: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    mount(Some(source), target, Some(fstype), flags, data)
        .map_err(InitError::io(format!("mount {fstype} on {target}")))
}

/// Moves an existing mount (cheaper than mounting a second instance).
pub fn move_mount(from: &str, to: &str) -> Result<(), InitError> {
    mount(Some(from), to, None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(InitError::io(format!("move mount {from} to {to}")))
}

/// Makes /dev/console openable with as little work as possible: the kernel's built-in
/// initramfs normally provides the node; devtmpfs is mounted only if it does not.
pub fn ensure_console() -> Result<(), InitError> {
    if Path::new("/dev/console").exists() {
        return Ok(());
    }
    mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )
}
