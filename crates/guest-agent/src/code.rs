//! Code files: written by root, readable (not writable) by the sandbox user.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replaces whatever a previous run left in `dir` with one file `main.<ext>` holding `code`.
/// The directory is 0755 and the file 0444, both owned by the agent (root), so the code can
/// read itself but neither change nor delete it.
pub fn write(dir: &Path, ext: &str, code: &str) -> io::Result<PathBuf> {
    clear(dir)?;
    write_file(dir, &format!("main.{ext}"), code.as_bytes())
}

/// Writes `data` to `dir/name` (mode 0444; `dir` 0755, created if missing), replacing a
/// file of that name. Readable by the sandbox user, writable by nobody but root.
pub fn write_file(dir: &Path, name: &str, data: &[u8]) -> io::Result<PathBuf> {
    DirBuilder::new().recursive(true).mode(0o755).create(dir)?;
    // The umask may have narrowed the mode at creation; set it explicitly.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let path = dir.join(name);
    remove_file(&path)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o444)
        .open(&path)?;
    file.write_all(data)?;
    file.set_permissions(fs::Permissions::from_mode(0o444))?;
    Ok(path)
}

/// Removes one file; a missing one is fine.
pub fn remove_file(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes `dir` and everything in it; a missing directory is fine.
pub fn clear(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
