//! Building the final root under /newroot and switching into it.
//!
//! Layout after the switch: the language image (EROFS, read-only, nosuid) as `/`, tmpfs on
//! `/home/user` (owned by the sandbox user), `/tmp` and `/run`, and `/dev`, `/proc`, `/sys`
//! moved over from the initramfs. The writable tmpfs areas share a budget that leaves a
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
const ROOT_DISK: &str = "/dev/vda";
/// virtio-blk usually shows up within milliseconds of the module loading.
const DISK_WAIT: Duration = Duration::from_secs(5);
/// The agent's path once the switch is done.
pub const AGENT_PATH: &str = "/run/sbx/agent";

/// Mounts everything under /newroot and installs the agent there.
pub fn prepare(agent: &Path) -> Result<(), InitError> {
    wait_for(ROOT_DISK, DISK_WAIT)?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    mount_fs(ROOT_DISK, NEWROOT, "erofs", ro, None)?;

    let budget = TmpfsBudget::from_meminfo();
    mount_fs(
        "tmpfs",
        "/newroot/home/user",
        "tmpfs",
        SCRATCH,
        Some(&format!(
            "mode=0755,uid=1000,gid=1000,size={}k",
            budget.home_kib
        )),
    )?;
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
/// size, [`RESERVE_KIB`] stays out of their reach; the rest is split 40/40/20.
struct TmpfsBudget {
    home_kib: u64,
    tmp_kib: u64,
    shm_kib: u64,
}

/// Memory no tmpfs may take: measured, a 128 MiB guest panicked with 37 MiB left.
const RESERVE_KIB: u64 = 64 * 1024;
/// Every area gets at least this much, even in the smallest VM.
const MIN_AREA_KIB: u64 = 4 * 1024;

impl TmpfsBudget {
    fn from_meminfo() -> TmpfsBudget {
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
        TmpfsBudget::for_total(total_kib)
    }

    fn for_total(total_kib: u64) -> TmpfsBudget {
        let budget = total_kib.saturating_sub(RESERVE_KIB);
        TmpfsBudget {
            home_kib: (budget * 2 / 5).max(MIN_AREA_KIB),
            tmp_kib: (budget * 2 / 5).max(MIN_AREA_KIB),
            shm_kib: (budget / 5).max(MIN_AREA_KIB),
        }
    }
}

fn wait_for(path: &str, bound: Duration) -> Result<(), InitError> {
    let start = Instant::now();
    while !Path::new(path).exists() {
        if start.elapsed() >= bound {
            return Err(InitError::Other(format!(
                "{path} did not appear within {bound:?} (virtio devices: {})",
                list_dir("/sys/bus/virtio/devices")
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
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
        for total_mib in [92u64, 128, 218, 1000, 16_000] {
            let total = total_mib * 1024;
            let b = TmpfsBudget::for_total(total);
            let sum = b.home_kib + b.tmp_kib + b.shm_kib;
            assert!(
                sum + RESERVE_KIB <= total.max(RESERVE_KIB + 3 * MIN_AREA_KIB),
                "{total_mib} MiB"
            );
            assert!(b.home_kib >= MIN_AREA_KIB && b.shm_kib >= MIN_AREA_KIB);
        }
        let b = TmpfsBudget::for_total(218 * 1024);
        assert_eq!(b.home_kib, (218 - 64) * 1024 * 2 / 5);
    }
}
