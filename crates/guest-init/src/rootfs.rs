//! Building the final root under /newroot and switching into it.
//!
//! Layout after the switch: the language image (EROFS, read-only, nosuid) as `/`, the home
//! disk (ext4, owned by the sandbox user; a tmpfs when the host attached none) on
//! `/home/user`, tmpfs on `/tmp` and `/run`, and `/dev`, `/proc`, `/sys` moved over from
//! the initramfs. The writable tmpfs areas share a budget that leaves a
//! fixed reserve of memory to the kernel, init and agent (see [`TmpfsBudget`]). The agent is copied to `/run/sbx/agent` (root, 0700) so
//! it runs inside the same root as the code, yet the code can neither read nor replace it.

use crate::error::InitError;
use crate::mounts::{self, mount_fs, move_mount, PSEUDO, SCRATCH};
use nix::mount::MsFlags;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{symlink, DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

const NEWROOT: &str = "/newroot";
const HOME: &str = "/newroot/home/user";
/// virtio-blk usually shows up within milliseconds of the module loading.
const DISK_WAIT: Duration = Duration::from_secs(5);
/// The agent's path once the switch is done.
pub const AGENT_PATH: &str = "/run/sbx/agent";

/// Mounts everything under /newroot and installs the agent there. `home_disk`: the host
/// attached a home disk ([`protocol::HOME_DISK_CMDLINE_FLAG`]); otherwise home is a tmpfs.
pub fn prepare(agent: &Path, home_disk: bool) -> Result<(), InitError> {
    let root = wait_for_disk(protocol::ROOT_DISK_SERIAL, DISK_WAIT)?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    mount_fs(&root, NEWROOT, "erofs", ro, None)?;

    let budget = TmpfsBudget::from_meminfo(!home_disk);
    if home_disk {
        let home = wait_for_disk(protocol::HOME_DISK_SERIAL, DISK_WAIT)?;
        // `noinit_itable`: the host left the inode tables unwritten (the image is sparse, so
        // they read as zeros); zeroing them in the background would only burn guest CPU.
        // `discard`: deleting a file gives its space back to the host.
        mount_fs(
            &home,
            HOME,
            "ext4",
            SCRATCH | MsFlags::MS_NOATIME,
            Some("noinit_itable,discard"),
        )?;
        // mke2fs gives every new filesystem a lost+found; a home directory starts empty.
        let _ = fs::remove_dir(format!("{HOME}/lost+found"));
    } else {
        mount_fs(
            "tmpfs",
            HOME,
            "tmpfs",
            SCRATCH,
            Some(&format!(
                "mode=0755,uid=1000,gid=1000,size={}k",
                budget.home_kib
            )),
        )?;
    }
    mount_fs(
        "tmpfs",
        "/newroot/tmp",
        "tmpfs",
        SCRATCH,
        Some(&format!("mode=1777,size={}k", budget.tmp_kib)),
    )?;
    // Holds only the agent and the code file (at most 1 MiB).
    mount_fs(
        "tmpfs",
        "/newroot/run",
        "tmpfs",
        SCRATCH,
        Some("mode=0755,size=16m"),
    )?;
    install_agent(agent)?;

    move_mount("/dev", "/newroot/dev")?;
    move_mount("/proc", "/newroot/proc")?;
    move_mount("/sys", "/newroot/sys")?;
    populate_dev(&budget)?;
    free_initramfs(agent);
    Ok(())
}

/// The MS_MOVE + chroot dance of `switch_root` (pivot_root cannot leave the initramfs).
pub fn switch() -> Result<(), InitError> {
    nix::unistd::chdir(NEWROOT).map_err(InitError::io("chdir /newroot"))?;
    mounts::move_mount(".", "/")?;
    nix::unistd::chroot(".").map_err(InitError::io("chroot /newroot"))?;
    nix::unistd::chdir("/").map_err(InitError::io("chdir /"))
}

/// Sizes of the writable tmpfs areas. Their pages cannot be reclaimed by killing a process,
/// so if code could fill them past what the unkillable parts (kernel, init, agent) need,
/// the OOM killer would find nothing to kill and the kernel would panic. Whatever the VM
/// size, [`RESERVE_KIB`] stays out of their reach; the rest is split 40/40/20 between
/// home, /tmp and /dev/shm, or 2/3 and 1/3 between /tmp and /dev/shm when home is on disk.
struct TmpfsBudget {
    /// Zero when home is on its own disk.
    home_kib: u64,
    tmp_kib: u64,
    shm_kib: u64,
}

/// Memory no tmpfs may take: measured, a 128 MiB guest panicked with 37 MiB left.
const RESERVE_KIB: u64 = 64 * 1024;
/// Every area gets at least this much, even in the smallest VM.
const MIN_AREA_KIB: u64 = 4 * 1024;

impl TmpfsBudget {
    fn from_meminfo(home_in_memory: bool) -> TmpfsBudget {
        let total_kib = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| {
                    l.strip_prefix("MemTotal:")?
                        .trim()
                        .strip_suffix("kB")?
                        .trim()
                        .parse()
                        .ok()
                })
            })
            .unwrap_or(128 * 1024);
        TmpfsBudget::for_total(total_kib, home_in_memory)
    }

    fn for_total(total_kib: u64, home_in_memory: bool) -> TmpfsBudget {
        let budget = total_kib.saturating_sub(RESERVE_KIB);
        if home_in_memory {
            TmpfsBudget {
                home_kib: (budget * 2 / 5).max(MIN_AREA_KIB),
                tmp_kib: (budget * 2 / 5).max(MIN_AREA_KIB),
                shm_kib: (budget / 5).max(MIN_AREA_KIB),
            }
        } else {
            TmpfsBudget {
                home_kib: 0,
                tmp_kib: (budget * 2 / 3).max(MIN_AREA_KIB),
                shm_kib: (budget / 3).max(MIN_AREA_KIB),
            }
        }
    }
}

/// Waits for the virtio disk whose serial is `serial` and returns its device node.
fn wait_for_disk(serial: &str, bound: Duration) -> Result<String, InitError> {
    let start = Instant::now();
    loop {
        if let Some(dev) = disk_with_serial(serial) {
            return Ok(dev);
        }
        if start.elapsed() >= bound {
            return Err(InitError::Other(format!(
                "no disk with serial {serial} within {bound:?} (virtio devices: {}; block devices: {})",
                list_dir("/sys/bus/virtio/devices"),
                list_dir("/sys/block")
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `/dev/vdX` for the disk with that serial, once both its sysfs entry and its node exist.
fn disk_with_serial(serial: &str) -> Option<String> {
    fs::read_dir("/sys/block")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let found = fs::read_to_string(entry.path().join("serial")).ok()?;
            if found.trim_end() != serial {
                return None;
            }
            let dev = format!("/dev/{}", entry.file_name().to_str()?);
            Path::new(&dev).exists().then_some(dev)
        })
}

/// Names in `dir`, for diagnostics.
fn list_dir(dir: &str) -> String {
    let names: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(" ")
    }
}

fn install_agent(agent: &Path) -> Result<(), InitError> {
    let dir = "/newroot/run/sbx";
    // 0755 so the user can reach the code directory the agent creates in here.
    DirBuilder::new()
        .mode(0o755)
        .create(dir)
        .map_err(InitError::io(format!("mkdir {dir}")))?;
    let dest = "/newroot/run/sbx/agent";
    fs::copy(agent, dest).map_err(InitError::io(format!("copy {} to {dest}", agent.display())))?;
    fs::set_permissions(dest, fs::Permissions::from_mode(0o700))
        .map_err(InitError::io(format!("chmod {dest}")))
}

/// /dev/shm, /dev/pts and the /dev/fd family that devtmpfs does not create.
fn populate_dev(budget: &TmpfsBudget) -> Result<(), InitError> {
    for dir in ["/newroot/dev/shm", "/newroot/dev/pts"] {
        DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .or_else(ignore_exists)
            .map_err(InitError::io(format!("mkdir {dir}")))?;
    }
    mount_fs(
        "tmpfs",
        "/newroot/dev/shm",
        "tmpfs",
        SCRATCH,
        Some(&format!("mode=1777,size={}k", budget.shm_kib)),
    )?;
    // gid 5 is Debian's tty group; /dev/ptmx (from devtmpfs) finds this instance via ../pts.
    mount_fs(
        "devpts",
        "/newroot/dev/pts",
        "devpts",
        PSEUDO,
        Some("mode=0620,ptmxmode=0666,gid=5"),
    )?;
    for (link, target) in [
        ("/newroot/dev/fd", "/proc/self/fd"),
        ("/newroot/dev/stdin", "/proc/self/fd/0"),
        ("/newroot/dev/stdout", "/proc/self/fd/1"),
        ("/newroot/dev/stderr", "/proc/self/fd/2"),
    ] {
        symlink(target, link)
            .or_else(ignore_exists)
            .map_err(InitError::io(format!("symlink {link}")))?;
    }
    Ok(())
}

fn ignore_exists(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::AlreadyExists {
        Ok(())
    } else {
        Err(e)
    }
}

/// The initramfs stays in memory under the new root; drop the big files we no longer need
/// (modules are loaded, the agent is copied). Best effort.
fn free_initramfs(agent: &Path) {
    let _ = fs::remove_file(agent);
    if let Ok(dir) = fs::read_dir(crate::modules::MODULE_DIR) {
        for entry in dir.flatten() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tmpfs_budget_always_leaves_the_reserve() {
        for home_in_memory in [true, false] {
            for total_mib in [92u64, 128, 218, 1000, 16_000] {
                let total = total_mib * 1024;
                let b = TmpfsBudget::for_total(total, home_in_memory);
                let sum = b.home_kib + b.tmp_kib + b.shm_kib;
                assert!(
                    sum + RESERVE_KIB <= total.max(RESERVE_KIB + 3 * MIN_AREA_KIB),
                    "{total_mib} MiB"
                );
                assert!(b.tmp_kib >= MIN_AREA_KIB && b.shm_kib >= MIN_AREA_KIB);
                assert_eq!(b.home_kib >= MIN_AREA_KIB, home_in_memory);
            }
        }
        let b = TmpfsBudget::for_total(218 * 1024, true);
        assert_eq!(b.home_kib, (218 - 64) * 1024 * 2 / 5);
        let b = TmpfsBudget::for_total(218 * 1024, false);
        assert_eq!(b.tmp_kib, (218 - 64) * 1024 * 2 / 3);
    }
}
