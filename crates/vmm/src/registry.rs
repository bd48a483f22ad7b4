//! The on-disk registry of running VMs: one JSON entry file and one work directory per VM,
//! so that VMs left behind by a crashed (or SIGKILLed) host are found and reaped on the
//! next start, and a second Ctrl+C can kill every VM at once.
//!
//! Layout under the registry directory (mode 0700, owned by us):
//! `vm-<8 hex>.json` (the [`Entry`]) and `vm-<8 hex>/` (sockets, console log, QEMU stderr).
//! Paths stay short because unix socket paths are limited to 107 bytes.
//!
//! Pids are only trusted together with their start time (`/proc/<pid>/stat` field 22): a
//! recorded pid whose start time differs belongs to an unrelated process and is never
//! signalled.

use std::collections::HashMap;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, TryLockError};

use serde::{Deserialize, Serialize};

use crate::error::VmmError;
use crate::process::kill_group;
use crate::procstat;

/// What is recorded for each VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// `None` between creating the entry and QEMU being spawned.
    pub qemu_pid: Option<u32>,
    pub pgid: Option<u32>,
    pub qemu_start_time: Option<u64>,
    pub owner_pid: u32,
    pub owner_start_time: u64,
    /// Informational; reaping derives the directory from the entry name instead of trusting
    /// a path read from disk.
    pub work_dir: PathBuf,
}

/// A VM slot: its id, work directory and entry file.
#[derive(Clone, Debug)]
pub(crate) struct Slot {
    pub id: String,
    pub work_dir: PathBuf,
    entry_path: PathBuf,
}

#[derive(Clone, Copy, Debug)]
struct Live {
    pgid: u32,
    start_time: u64,
}

/// Handle on a registry directory. Cloning shares the same in-memory set of live VMs.
#[derive(Clone, Debug)]
pub struct Registry {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    owner_pid: u32,
    owner_start_time: u64,
    /// id → QEMU group. A `Mutex`, but [`Registry::kill_all`] only ever `try_lock`s it and
    /// falls back to the entry files, so a task stuck or panicked while holding it cannot
    /// stop the emergency kill.
    live: Mutex<HashMap<String, Live>>,
}

impl Registry {
    /// Opens (creating with mode 0700) the registry directory and reaps stale entries: any
    /// whose owner is gone. Refuses a directory owned by another user, since whoever owns it
    /// could plant entries naming our processes or swap work dirs for symlinks.
    pub fn open(dir: &Path) -> Result<Registry, VmmError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| VmmError::io("creating registry directory", dir, e))?;
        let meta = fs::symlink_metadata(dir).map_err(|e| VmmError::io("inspecting", dir, e))?;
        let euid = nix::unistd::geteuid().as_raw();
        if !meta.is_dir() || meta.uid() != euid {
            return Err(VmmError::io(
                "refusing registry directory (not a directory owned by this user)",
                dir,
                io::Error::from(io::ErrorKind::PermissionDenied),
            ));
        }
        let owner_pid = std::process::id();
        let owner_start_time = procstat::start_time(owner_pid).ok_or_else(|| {
            VmmError::io(
                "reading own start time from",
                format!("/proc/{owner_pid}/stat"),
                io::Error::from(io::ErrorKind::NotFound),
            )
        })?;
        let reg = Registry {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                owner_pid,
                owner_start_time,
                live: Mutex::new(HashMap::new()),
            }),
        };
        let reaped = reg.reap_stale();
        if reaped > 0 {
            tracing::info!(reaped, dir = %dir.display(), "reaped stale VM entries");
        }
        Ok(reg)
    }

    /// The registry directory.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Removes every entry whose owner process is gone (or whose pid now belongs to another
    /// process), SIGKILLing its QEMU group if that QEMU is still the recorded process.
    /// Returns how many entries were removed.
    pub fn reap_stale(&self) -> usize {
        let mut reaped = 0;
        for (id, entry_path) in self.entry_files() {
            let entry = match read_entry(&entry_path) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(path = %entry_path.display(), error = %e, "unreadable registry entry left alone");
                    continue;
                }
            };
            if procstat::is_same_process(entry.owner_pid, entry.owner_start_time) {
                continue; // a live owner (maybe another process) manages its own VMs
            }
            if let (Some(pid), Some(start)) = (entry.qemu_pid, entry.qemu_start_time) {
                kill_if_same(pid, entry.pgid.unwrap_or(pid), start);
            }
            let slot = self.slot_for(&id);
            remove_slot_files(&slot);
            reaped += 1;
        }
        reaped
    }

    /// SIGKILLs every QEMU group this process registered, synchronously and without
    /// waiting for anything. For the second Ctrl+C: it never blocks on a lock.
    pub fn kill_all(&self) {
        let groups: Vec<Live> = match self.inner.live.try_lock() {
            Ok(live) => live.values().copied().collect(),
            Err(TryLockError::Poisoned(p)) => p.into_inner().values().copied().collect(),
            Err(TryLockError::WouldBlock) => self.own_groups_from_disk(),
        };
        for g in groups {
            kill_if_same(g.pgid, g.pgid, g.start_time);
        }
    }

    /// Allocates a slot: writes the entry (owner only) first, then creates the work dir, so
    /// a crash in between never leaves a work dir without an entry to find it by.
    pub(crate) fn allocate(&self) -> Result<Slot, VmmError> {
        for _ in 0..16 {
            let id = format!("vm-{:08x}", rand::random::<u32>());
            let slot = self.slot_for(&id);
            if slot.entry_path.exists() || slot.work_dir.exists() {
                continue;
            }
            let entry = Entry {
                qemu_pid: None,
                pgid: None,
                qemu_start_time: None,
                owner_pid: self.inner.owner_pid,
                owner_start_time: self.inner.owner_start_time,
                work_dir: slot.work_dir.clone(),
            };
            write_entry(&slot.entry_path, &entry)?;
            DirBuilder::new()
                .mode(0o700)
                .create(&slot.work_dir)
                .map_err(|e| VmmError::io("creating VM work directory", &slot.work_dir, e))?;
            return Ok(slot);
        }
        Err(VmmError::io(
            "allocating a VM slot in",
            self.dir(),
            io::Error::from(io::ErrorKind::AlreadyExists),
        ))
    }

    /// Records the spawned QEMU in memory (for [`Registry::kill_all`]) and on disk.
    pub(crate) fn record_qemu(
        &self,
        slot: &Slot,
        pid: u32,
        start_time: u64,
    ) -> Result<(), VmmError> {
        let live = Live {
            pgid: pid,
            start_time,
        };
        lock(&self.inner.live).insert(slot.id.clone(), live);
        let entry = Entry {
            qemu_pid: Some(pid),
            pgid: Some(pid),
            qemu_start_time: Some(start_time),
            owner_pid: self.inner.owner_pid,
            owner_start_time: self.inner.owner_start_time,
            work_dir: slot.work_dir.clone(),
        };
        write_entry(&slot.entry_path, &entry)
    }

    /// Forgets the in-memory record. Called after the group was killed and *before* it is
    /// reaped, so `kill_all` can never signal a recycled pid.
    pub(crate) fn forget(&self, slot: &Slot) {
        lock(&self.inner.live).remove(&slot.id);
    }

    /// Removes the work dir and the entry file (in that order).
    pub(crate) fn release(&self, slot: &Slot) {
        self.forget(slot);
        remove_slot_files(slot);
    }

    fn slot_for(&self, id: &str) -> Slot {
        Slot {
            id: id.to_string(),
            work_dir: self.inner.dir.join(id),
            entry_path: self.inner.dir.join(format!("{id}.json")),
        }
    }

    fn entry_files(&self) -> Vec<(String, PathBuf)> {
        let Ok(rd) = fs::read_dir(&self.inner.dir) else {
            return Vec::new();
        };
        rd.filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let id = name.strip_suffix(".json")?;
                is_valid_id(id).then(|| (id.to_string(), e.path()))
            })
            .collect()
    }

    fn own_groups_from_disk(&self) -> Vec<Live> {
        self.entry_files()
            .into_iter()
            .filter_map(|(_, p)| read_entry(&p).ok())
            .filter(|e| {
                e.owner_pid == self.inner.owner_pid
                    && e.owner_start_time == self.inner.owner_start_time
            })
            .filter_map(|e| {
                Some(Live {
                    pgid: e.pgid.or(e.qemu_pid)?,
                    start_time: e.qemu_start_time?,
                })
            })
            .collect()
    }
}

/// Locks, recovering from poisoning: the map holds plain data that is valid after any panic.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn is_valid_id(id: &str) -> bool {
    id.len() == 11 && id.starts_with("vm-") && id[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// SIGKILLs group `pgid` only if `pid` is still the process started at `start_time` and
/// still leads that group.
fn kill_if_same(pid: u32, pgid: u32, start_time: u64) {
    match procstat::read_stat(pid) {
        Some(s) if s.start_time == start_time && s.pgid as u32 == pgid => kill_group(pgid),
        Some(_) => tracing::warn!(
            pid,
            "recorded QEMU pid now belongs to another process; not killing"
        ),
        None => {}
    }
}

fn remove_slot_files(slot: &Slot) {
    if let Err(e) = fs::remove_dir_all(&slot.work_dir) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(dir = %slot.work_dir.display(), error = %e, "could not remove VM work dir");
        }
    }
    if let Err(e) = fs::remove_file(&slot.entry_path) {
        if e.kind() != io::ErrorKind::NotFound {
            tracing::warn!(path = %slot.entry_path.display(), error = %e, "could not remove registry entry");
        }
    }
}

fn read_entry(path: &Path) -> Result<Entry, VmmError> {
    let bytes = fs::read(path).map_err(|e| VmmError::io("reading registry entry", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        VmmError::io(
            "parsing registry entry",
            path,
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })
}

/// Writes atomically (temp file + rename) so a reader never sees half an entry.
fn write_entry(path: &Path, entry: &Entry) -> Result<(), VmmError> {
    let tmp = path.with_extension("json.tmp");
    let json = serde_json::to_vec(entry)
        .map_err(|e| VmmError::io("encoding registry entry", path, io::Error::other(e)))?;
    fs::write(&tmp, json).map_err(|e| VmmError::io("writing registry entry", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| VmmError::io("renaming registry entry to", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    fn sleeper() -> (Child, u32, u64) {
        let child = Command::new("sleep")
            .arg("60")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = procstat::start_time(pid).unwrap();
        (child, pid, start)
    }

    fn plant(dir: &Path, id: &str, pid: u32, start: u64, owner_alive: bool) {
        let me = std::process::id();
        let my_start = procstat::start_time(me).unwrap();
        let entry = Entry {
            qemu_pid: Some(pid),
            pgid: Some(pid),
            qemu_start_time: Some(start),
            owner_pid: me,
            // Same pid, different start time: exactly what a recycled owner pid looks like.
            owner_start_time: if owner_alive {
                my_start
            } else {
                my_start + 1_000_000
            },
            work_dir: dir.join(id),
        };
        fs::create_dir(dir.join(id)).unwrap();
        fs::write(dir.join(id).join("console.log"), "x").unwrap();
        write_entry(&dir.join(format!("{id}.json")), &entry).unwrap();
    }

    fn wait_exit(child: &mut Child) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(s) = child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    #[test]
    fn reaps_stale_entry_and_kills_its_qemu() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut child, pid, start) = sleeper();
        plant(tmp.path(), "vm-0000abcd", pid, start, false);
        let reg = Registry::open(tmp.path()).unwrap();
        let status = wait_exit(&mut child).expect("stale QEMU stand-in was killed");
        assert_eq!(status.signal(), Some(libc::SIGKILL));
        assert!(!tmp.path().join("vm-0000abcd").exists());
        assert!(!tmp.path().join("vm-0000abcd.json").exists());
        assert_eq!(reg.reap_stale(), 0);
    }

    #[test]
    fn never_kills_a_pid_whose_start_time_differs() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut child, pid, start) = sleeper();
        plant(tmp.path(), "vm-0000beef", pid, start + 7, false);
        Registry::open(tmp.path()).unwrap();
        assert!(
            child.try_wait().unwrap().is_none(),
            "unrelated process must survive"
        );
        assert!(
            !tmp.path().join("vm-0000beef.json").exists(),
            "stale entry still removed"
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn leaves_entries_of_live_owners_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let (mut child, pid, start) = sleeper();
        plant(tmp.path(), "vm-0000cafe", pid, start, true);
        Registry::open(tmp.path()).unwrap();
        assert!(child.try_wait().unwrap().is_none());
        assert!(tmp.path().join("vm-0000cafe.json").exists());
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn kill_all_kills_registered_groups_even_when_locked() {
        let tmp = tempfile::tempdir().unwrap();
        let reg = Registry::open(tmp.path()).unwrap();
        let (mut a, apid, astart) = sleeper();
        let (mut b, bpid, bstart) = sleeper();
        let sa = reg.allocate().unwrap();
        let sb = reg.allocate().unwrap();
        assert!(sa.work_dir.is_dir());
        reg.record_qemu(&sa, apid, astart).unwrap();
        reg.record_qemu(&sb, bpid, bstart).unwrap();
        // Hold the lock as a stuck task would: kill_all must fall back to the entry files.
        let guard = reg.inner.live.lock().unwrap();
        reg.kill_all();
        drop(guard);
        assert_eq!(
            wait_exit(&mut a).and_then(|s| s.signal()),
            Some(libc::SIGKILL)
        );
        assert_eq!(
            wait_exit(&mut b).and_then(|s| s.signal()),
            Some(libc::SIGKILL)
        );
        reg.release(&sa);
        reg.release(&sb);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);
    }

    #[test]
    fn ids_are_validated() {
        assert!(is_valid_id("vm-0123abcd"));
        assert!(!is_valid_id("vm-../../etc"));
        assert!(!is_valid_id("xx-0123abcd"));
    }
}
