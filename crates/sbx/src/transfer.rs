//! `sbx run --upload/--download`: files copied into the guest before the code runs and out
//! of it afterwards, streamed in chunks so memory does not grow with the file.
//!
//! Everything that can be checked on the host is checked before a VM boots: the local
//! files, the guest paths, and the directories downloads land in. Downloads are written to
//! a temporary file beside their target and renamed over it only when complete, so a
//! failed or interrupted download never leaves a partial file under the target's name.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sandbox::Session;
use serde::Serialize;

use crate::run::InputError;

/// A local file to copy into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upload {
    pub local: PathBuf,
    /// Normalised, relative to /home/user.
    pub guest: String,
    /// The local file has an execute bit, so the guest copy gets one too.
    pub executable: bool,
}

/// A guest file to copy out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Download {
    /// Normalised, relative to /home/user.
    pub guest: String,
    /// Where the file ends up (a file path, never a directory).
    pub local: PathBuf,
}

/// What happened to one transfer, for the JSON result.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    pub guest: String,
    pub local: PathBuf,
    /// Bytes copied, when the transfer succeeded.
    pub bytes: Option<u64>,
    pub error: Option<String>,
}

#[derive(Debug, Default)]
pub struct Plan {
    pub uploads: Vec<Upload>,
    pub downloads: Vec<Download>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.uploads.is_empty() && self.downloads.is_empty()
    }
}

fn usage(msg: impl Into<String>) -> InputError {
    InputError::Usage(msg.into())
}

/// Checks every `--upload`/`--download` against the local filesystem and the guest path
/// rules, without starting anything.
pub fn plan(uploads: &[String], downloads: &[String]) -> Result<Plan, InputError> {
    let mut plan = Plan::default();
    for spec in uploads {
        plan.uploads.push(plan_upload(spec)?);
    }
    for spec in downloads {
        let download = plan_download(spec)?;
        if let Some(other) = plan.downloads.iter().find(|d| d.local == download.local) {
            return Err(usage(format!(
                "--download {spec}: {} is also the target of --download {}",
                download.local.display(),
                other.guest
            )));
        }
        plan.downloads.push(download);
    }
    Ok(plan)
}

/// `LOCAL[:GUEST]`, split at the last `:` (guest paths rarely hold one; local names may).
/// An empty GUEST means the default.
pub fn split_upload(spec: &str) -> (&str, Option<&str>) {
    match spec.rsplit_once(':') {
        Some((local, guest)) => (local, Some(guest).filter(|g| !g.is_empty())),
        None => (spec, None),
    }
}

/// `GUEST[:LOCAL]`, split at the first `:`. An empty LOCAL means the default.
pub fn split_download(spec: &str) -> (&str, Option<&str>) {
    match spec.split_once(':') {
        Some((guest, local)) => (guest, Some(local).filter(|l| !l.is_empty())),
        None => (spec, None),
    }
}

fn plan_upload(spec: &str) -> Result<Upload, InputError> {
    let (local, guest) = split_upload(spec);
    if local.is_empty() {
        return Err(usage(format!(
            "--upload {spec:?}: no local file before the ':'"
        )));
    }
    let local = PathBuf::from(local);
    let meta = std::fs::metadata(&local)
        .map_err(|e| usage(format!("--upload {}: {e}", local.display())))?;
    if meta.is_dir() {
        return Err(usage(format!(
            "--upload {}: is a directory (upload files one by one)",
            local.display()
        )));
    }
    if !meta.is_file() {
        return Err(usage(format!(
            "--upload {}: not a regular file",
            local.display()
        )));
    }
    // Opening now catches a file we may not read before a VM is spent on it.
    std::fs::File::open(&local).map_err(|e| usage(format!("--upload {}: {e}", local.display())))?;
    let name = || {
        local.file_name().and_then(OsStr::to_str).ok_or_else(|| {
            usage(format!(
                "--upload {}: the file name is not UTF-8; give the guest path after a ':'",
                local.display()
            ))
        })
    };
    let guest = match guest {
        None => name()?.to_string(),
        Some(dir) if dir.ends_with('/') => format!("{dir}{}", name()?),
        Some(path) => path.to_string(),
    };
    let guest = sandbox::normalize_guest_path(&guest, false)
        .map_err(|e| usage(format!("--upload {spec}: {e}")))?;
    Ok(Upload {
        local,
        guest,
        executable: meta.permissions().mode() & 0o111 != 0,
    })
}

fn plan_download(spec: &str) -> Result<Download, InputError> {
    let (guest, local) = split_download(spec);
    let guest = sandbox::normalize_guest_path(guest, false)
        .map_err(|e| usage(format!("--download {spec}: {e}")))?;
    // A normalised path is never empty, so it has a last component.
    let base = guest
        .rsplit('/')
        .next()
        .unwrap_or(guest.as_str())
        .to_string();
    let local = match local {
        None => PathBuf::from(&base),
        Some(l) if l.ends_with('/') || Path::new(l).is_dir() => Path::new(l).join(&base),
        Some(l) => PathBuf::from(l),
    };
    if local.is_dir() {
        return Err(usage(format!(
            "--download {spec}: {} is a directory",
            local.display()
        )));
    }
    let dir = parent_dir(&local);
    match std::fs::metadata(dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(usage(format!(
                "--download {spec}: {} is not a directory",
                dir.display()
            )))
        }
        Err(e) => {
            return Err(usage(format!(
                "--download {spec}: directory {}: {e}",
                dir.display()
            )))
        }
    }
    if let Err(e) = nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK) {
        return Err(usage(format!(
            "--download {spec}: directory {}: {}",
            dir.display(),
            std::io::Error::from(e)
        )));
    }
    Ok(Download { guest, local })
}

/// The directory a file path lands in (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Copies one local file into the session, streaming it.
pub async fn upload(session: &Session, up: &Upload) -> Record {
    let result = async {
        let file = tokio::fs::File::open(&up.local)
            .await
            .map_err(|e| format!("{}: {e}", up.local.display()))?;
        session
            .write_file_from(&up.guest, file, up.executable)
            .await
            .map_err(|e| describe(&e))
    }
    .await;
    record(&up.guest, &up.local, result)
}

/// Copies one guest file out of the session into a temporary file beside its target, then
/// renames it into place.
pub async fn download(session: &Session, down: &Download) -> Record {
    let result = download_atomically(session, down).await;
    record(&down.guest, &down.local, result)
}

async fn download_atomically(session: &Session, down: &Download) -> Result<u64, String> {
    let dir = parent_dir(&down.local);
    let name = down
        .local
        .file_name()
        .map(|n| n.to_string_lossy().chars().take(100).collect::<String>())
        .unwrap_or_default();
    let part = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".sbx-part")
        .tempfile_in(dir)
        .map_err(|e| format!("creating a temporary file in {}: {e}", dir.display()))?;
    let _listed = PartialFile::track(part.path());
    let file = part
        .as_file()
        .try_clone()
        .map_err(|e| format!("{}: {e}", part.path().display()))?;
    let mut sink = tokio::fs::File::from_std(file);
    let size = session
        .read_file_to(&down.guest, &mut sink)
        .await
        .map_err(|e| describe(&e))?;
    drop(sink);
    // Temporary files are private (0600); the result gets what a new file normally gets.
    let mode = 0o666 & !umask();
    std::fs::set_permissions(part.path(), std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", part.path().display()))?;
    part.persist(&down.local)
        .map_err(|e| format!("{}: {}", down.local.display(), e.error))?;
    Ok(size)
}

fn record(guest: &str, local: &Path, result: Result<u64, String>) -> Record {
    let (bytes, error) = match result {
        Ok(n) => (Some(n), None),
        Err(e) => (None, Some(e)),
    };
    Record {
        guest: guest.to_string(),
        local: local.to_path_buf(),
        bytes,
        error,
    }
}

/// The reason a transfer failed, without repeating the path the caller prints anyway.
fn describe(err: &sandbox::Error) -> String {
    match err {
        sandbox::Error::File(sandbox::FileError::Guest { message, .. }) => message.clone(),
        other => other.to_string(),
    }
}

/// The process's file-creation mask, read without changing it (`umask(2)` can only be read
/// by setting it, which would race with other threads creating files).
fn umask() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o022)
}

/// Temporary download files in progress. A second Ctrl+C exits at once, without running
/// destructors, so that path removes them from here.
static PARTIAL: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

struct PartialFile(PathBuf);

impl PartialFile {
    fn track(path: &Path) -> PartialFile {
        if let Ok(mut list) = PARTIAL.lock() {
            list.push(path.to_path_buf());
        }
        PartialFile(path.to_path_buf())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Ok(mut list) = PARTIAL.lock() {
            list.retain(|p| p != &self.0);
        }
    }
}

/// Removes every temporary download file still in progress (on a forced exit).
pub fn remove_partial_files() {
    // try_lock: this runs from a signal-driven exit and must never wait on a lock.
    if let Ok(list) = PARTIAL.try_lock() {
        for path in list.iter() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_split_where_documented() {
        assert_eq!(split_upload("a.csv"), ("a.csv", None));
        assert_eq!(
            split_upload("a.csv:data/b.csv"),
            ("a.csv", Some("data/b.csv"))
        );
        assert_eq!(split_upload("x:y:z"), ("x:y", Some("z")));
        assert_eq!(split_upload("a.csv:"), ("a.csv", None));
        assert_eq!(split_download("out.log"), ("out.log", None));
        assert_eq!(
            split_download("out.log:logs/x"),
            ("out.log", Some("logs/x"))
        );
        assert_eq!(split_download("a:b:c"), ("a", Some("b:c")));
        assert_eq!(split_download("a:"), ("a", None));
    }

    fn err(r: Result<Plan, InputError>) -> String {
        match r {
            Ok(p) => panic!("accepted: {p:?}"),
            Err(InputError::Usage(m)) => m,
            Err(InputError::Invalid(e)) => format!("[{}] {e}", e.field()),
        }
    }

    #[test]
    fn uploads_are_checked_before_anything_starts() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data.csv");
        std::fs::write(&file, "a,b\n").unwrap();
        let f = file.to_str().unwrap();

        let plan = plan(&[f.to_string()], &[]).unwrap();
        assert_eq!(plan.uploads[0].guest, "data.csv");
        assert!(!plan.uploads[0].executable);
        let p = super::plan(&[format!("{f}:in/")], &[]).unwrap();
        assert_eq!(p.uploads[0].guest, "in/data.csv");
        let p = super::plan(&[format!("{f}:./x/../y.csv")], &[]).unwrap();
        assert_eq!(p.uploads[0].guest, "y.csv");

        let missing = dir.path().join("nope");
        assert!(err(super::plan(&[missing.display().to_string()], &[])).contains("nope"));
        assert!(
            err(super::plan(&[dir.path().display().to_string()], &[])).contains("is a directory")
        );
        assert!(err(super::plan(&["/dev/null".into()], &[])).contains("not a regular file"));
        for bad in ["../../etc/x", "/etc/x", ".."] {
            let msg = err(super::plan(&[format!("{f}:{bad}")], &[]));
            assert!(
                msg.starts_with(&format!("--upload {f}:{bad}: path: ")),
                "{bad}: {msg}"
            );
        }
        assert!(err(super::plan(&[":x".into()], &[])).contains("no local file"));
    }

    #[test]
    fn downloads_land_in_existing_directories() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let p = plan(&[], &["logs/run.log".into()]).unwrap();
        assert_eq!(p.downloads[0].local, PathBuf::from("run.log"));
        assert_eq!(p.downloads[0].guest, "logs/run.log");
        let p = plan(&[], &[format!("logs/run.log:{d}")]).unwrap();
        assert_eq!(p.downloads[0].local, dir.path().join("run.log"));
        let p = plan(&[], &[format!("a.txt:{d}/b.txt")]).unwrap();
        assert_eq!(p.downloads[0].local, dir.path().join("b.txt"));

        assert!(err(plan(&[], &[format!("a:{d}/missing/b")])).contains("missing"));
        assert!(err(plan(&[], &["../x".into()])).starts_with("--download ../x: path: "));
        assert!(err(plan(&[], &["".into()])).starts_with("--download : path: "));
        assert!(
            err(plan(&[], &[format!("a:{d}/x"), format!("b:{d}/x")])).contains("also the target")
        );
    }

    #[test]
    fn umask_is_read_without_changing_it() {
        let mask = umask();
        assert!(mask <= 0o777);
    }
}
