//! The filesystem work proper. Each function runs on a fresh worker thread that first takes
//! the user's filesystem identity, so the kernel checks every access as the user's own, and
//! resolves every path beneath a descriptor of the home directory.

use super::path::{cstring, RelPath};
use super::sys::{self, Dir};
use super::{FileError, User};
use protocol::{FileEntry, FileErrorKind, FileKind, MAX_CHUNK, MAX_FRAME_LEN, MAX_LISTING};
use std::collections::BinaryHeap;
use std::ffi::{CStr, CString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::mpsc::{Receiver, SyncSender};

/// What the channel side hands the writing thread.
pub enum Incoming {
    Data(Vec<u8>),
    /// All data is in: commit the file.
    End,
}

/// Tries at a free temp name; a collision of 64 random bits means someone is squatting
/// names on purpose, and a few tries suffice to tell.
const TEMP_TRIES: usize = 8;

/// Frame space a listing may fill: its entries must fit one frame, with room to spare for
/// the message around them.
const LISTING_BUDGET: usize = MAX_FRAME_LEN - 64 * 1024;
/// Upper bound on an entry's encoded size besides its name (length prefix, kind, and the
/// variable-length size, mode and time).
const ENTRY_OVERHEAD: usize = 32;

/// Takes the user's identity on this thread and opens the home directory as the user.
fn enter_home(user: &User) -> io::Result<OwnedFd> {
    sys::become_user(user.uid, user.gid)?;
    let home = CString::new(user.home.as_os_str().as_bytes()).map_err(io::Error::other)?;
    sys::open_dir_path(&home)
}

fn errno(err: &io::Error) -> Option<i32> {
    err.raw_os_error()
}

/// Receives the file's data from `chunks` and commits it at `path` atomically: into a fresh
/// temp file next to the target, renamed over it once `Incoming::End` arrives. Any failure,
/// or the sender going away, leaves the old file as it was and removes the temp file.
pub fn write(
    user: &User,
    path: &RelPath,
    executable: bool,
    chunks: Receiver<Incoming>,
) -> Result<u64, FileError> {
    let fail = |subject: Option<&str>, err: io::Error| {
        FileError::from_io("write", path.as_str(), subject, &err)
    };
    let home = enter_home(user).map_err(|e| fail(None, e))?;
    let Some((parent, name)) = path.split_last() else {
        return Err(FileError::new(
            FileErrorKind::InvalidPath,
            "cannot write the home directory itself".into(),
        ));
    };
    let dir = open_parent(home.as_fd(), parent).map_err(|(at, e)| fail(Some(&at), e))?;
    let name = cstring(name);
    // Checked now so a write onto a directory fails before the data is sent; the rename
    // checks again (EISDIR) in case one appears meanwhile.
    match sys::lstat_at(dir.as_fd(), &name) {
        Ok(st) if sys::is_type(&st, libc::S_IFDIR) => {
            return Err(FileError::new(
                FileErrorKind::NotAFile,
                format!(
                    "cannot write {}: it is a directory",
                    super::shown(path.as_str())
                ),
            ))
        }
        Err(e) if errno(&e) != Some(libc::ENOENT) => return Err(fail(None, e)),
        _ => {}
    }
    let mode = if executable { 0o755 } else { 0o644 };
    let mut temp = TempFile::create(dir.as_fd()).map_err(|e| fail(None, e))?;
    // Explicitly, so the umask cannot narrow it.
    sys::fchmod(temp.file.as_fd(), mode).map_err(|e| fail(None, e))?;
    let mut size = 0u64;
    loop {
        match chunks.recv() {
            Ok(Incoming::Data(data)) => {
                temp.file.write_all(&data).map_err(|e| fail(None, e))?;
                size += data.len() as u64;
            }
            Ok(Incoming::End) => break,
            Err(_) => {
                return Err(FileError::new(
                    FileErrorKind::Other,
                    format!(
                        "write of {} abandoned before its end",
                        super::shown(path.as_str())
                    ),
                ))
            }
        }
    }
    temp.commit(&name).map_err(|e| fail(None, e))?;
    Ok(size)
}

/// Opens the directory `parent` (relative to home; empty = home) for use as the base of
/// the final create and rename, creating missing directories as the user.
///
/// Each prefix is resolved from home, not from the previous directory, so that symlinks
/// inside home may point anywhere else inside home. On failure, returns the prefix that
/// failed with the error.
fn open_parent(home: BorrowedFd<'_>, parent: &str) -> Result<OwnedFd, (String, io::Error)> {
    let lookup = libc::O_PATH | libc::O_DIRECTORY;
    let whole = cstring(if parent.is_empty() { "." } else { parent });
    match sys::open_beneath(home, &whole, lookup) {
        Err(e) if errno(&e) == Some(libc::ENOENT) => {}
        found => return found.map_err(|e| (parent.to_owned(), e)),
    }
    let mut dir = sys::open_beneath(home, c".", lookup).map_err(|e| (String::new(), e))?;
    let mut end = 0;
    for (i, name) in parent.split('/').enumerate() {
        end += name.len() + usize::from(i > 0);
        let prefix = &parent[..end];
        let failed = |e: io::Error| (prefix.to_owned(), e);
        let cprefix = cstring(prefix);
        dir = match sys::open_beneath(home, &cprefix, lookup) {
            Ok(fd) => fd,
            Err(e) if errno(&e) == Some(libc::ENOENT) => {
                let cname = cstring(name);
                match sys::mkdir_at(dir.as_fd(), &cname, 0o755) {
                    Ok(()) => {
                        // Exactly the directory just made: one component, and not a
                        // symlink someone swapped in since.
                        let fd = sys::open_beneath(
                            dir.as_fd(),
                            &cname,
                            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW,
                        )
                        .map_err(failed)?;
                        // The umask may have narrowed the mode mkdir was given.
                        sys::fchmod(fd.as_fd(), 0o755).map_err(failed)?;
                        fd
                    }
                    // Made by someone else meanwhile, or a dangling symlink (which then
                    // resolves to ENOENT again and is reported as not found).
                    Err(e) if errno(&e) == Some(libc::EEXIST) => {
                        sys::open_beneath(home, &cprefix, lookup).map_err(failed)?
                    }
                    Err(e) => return Err(failed(e)),
                }
            }
            Err(e) => return Err(failed(e)),
        };
    }
    Ok(dir)
}

/// The file being written, removed again unless committed.
struct TempFile<'a> {
    dir: BorrowedFd<'a>,
    name: CString,
    file: File,
    committed: bool,
}

impl<'a> TempFile<'a> {
    /// A new file with a random name in `dir`. `O_EXCL|O_NOFOLLOW` on a single component
    /// means it is a file we created, never something planted there.
    fn create(dir: BorrowedFd<'a>) -> io::Result<Self> {
        let mut tries = 0;
        loop {
            let name = cstring(&format!(".sbx-write-{:016x}.tmp", sys::random_u64()));
            match sys::create_exclusive(dir, &name) {
                Ok(fd) => {
                    return Ok(TempFile {
                        dir,
                        name,
                        file: File::from(fd),
                        committed: false,
                    })
                }
                Err(e) if errno(&e) == Some(libc::EEXIST) && tries < TEMP_TRIES => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn commit(&mut self, target: &CStr) -> io::Result<()> {
        sys::rename_at(self.dir, &self.name, target)?;
        self.committed = true;
        Ok(())
    }
}

impl Drop for TempFile<'_> {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = sys::unlink_at(self.dir, &self.name) {
                eprintln!(
                    "sbx-agent: removing the temp file {:?}: {e}",
                    self.name.to_string_lossy()
                );
            }
        }
    }
}

/// Streams the regular file at `path` into `chunks`, [`MAX_CHUNK`] bytes at a time.
/// Returns the bytes read; stops early (with an error) if the receiver goes away.
pub fn read(user: &User, path: &RelPath, chunks: SyncSender<Vec<u8>>) -> Result<u64, FileError> {
    let fail = |err: io::Error| FileError::from_io("read", path.as_str(), None, &err);
    let home = enter_home(user).map_err(fail)?;
    // O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: opening a terminal
    // must not make it ours. Anything but a regular file is refused right after.
    let fd = sys::open_beneath(
        home.as_fd(),
        &path.to_cstring(),
        libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
    )
    .map_err(fail)?;
    let st = sys::fstat(fd.as_fd()).map_err(fail)?;
    if !sys::is_type(&st, libc::S_IFREG) {
        let what = if sys::is_type(&st, libc::S_IFDIR) {
            "it is a directory"
        } else {
            "it is not a regular file"
        };
        return Err(FileError::new(
            FileErrorKind::NotAFile,
            format!("cannot read {}: {what}", super::shown(path.as_str())),
        ));
    }
    // A file larger than the filesystem holding it is mostly holes (`truncate -s 50G`):
    // sent in full it would be gigabytes of zeros written to the host, bounded by nothing.
    let size = u64::try_from(st.st_size).unwrap_or(0);
    let disk = sys::filesystem_bytes(fd.as_fd()).map_err(fail)?;
    if size > disk {
        return Err(FileError::new(
            FileErrorKind::TooLarge,
            format!(
                "cannot read {}: its size ({size} bytes) is larger than the disk it is on ({disk} bytes), so it is a sparse file that would be sent as mostly zeros",
                super::shown(path.as_str())
            ),
        ));
    }
    let mut file = File::from(fd);
    let mut total = 0u64;
    loop {
        // The file as it was when opened: one still being appended to would otherwise
        // stream for as long as its writer keeps going.
        let left = size - total;
        if left == 0 {
            return Ok(total);
        }
        let mut buf = vec![0u8; MAX_CHUNK.min(usize::try_from(left).unwrap_or(MAX_CHUNK))];
        let n = fill(&mut file, &mut buf).map_err(fail)?;
        if n == 0 {
            return Ok(total);
        }
        buf.truncate(n);
        if chunks.send(buf).is_err() {
            return Err(FileError::new(
                FileErrorKind::Other,
                format!("read of {} abandoned", super::shown(path.as_str())),
            ));
        }
        total += n as u64;
    }
}

/// Reads until `buf` is full or the file ends, so chunks are whole whenever possible.
fn fill(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Lists the directory at `path` (empty = home): at most [`MAX_LISTING`] entries, the first
/// by name, each described as itself (a symlink is not followed). The flag says whether
/// entries were left out.
pub fn list(user: &User, path: &RelPath) -> Result<(Vec<FileEntry>, bool), FileError> {
    let fail = |err: io::Error| FileError::from_io("list", path.as_str(), None, &err);
    let home = enter_home(user).map_err(fail)?;
    let fd = sys::open_beneath(
        home.as_fd(),
        &path.to_cstring(),
        libc::O_RDONLY | libc::O_DIRECTORY,
    )
    .map_err(fail)?;
    let mut dir = Dir::new(fd).map_err(fail)?;
    // A max-heap of the smallest names seen so far keeps memory bounded by MAX_LISTING
    // however large the directory is, and the result independent of readdir's order.
    let mut smallest: BinaryHeap<(CString, u8)> = BinaryHeap::new();
    let mut truncated = false;
    while let Some(entry) = dir.next_entry().map_err(fail)? {
        if matches!(entry.name.as_bytes(), b"." | b"..") {
            continue;
        }
        smallest.push((entry.name, entry.d_type));
        if smallest.len() > MAX_LISTING {
            smallest.pop();
            truncated = true;
        }
    }
    let mut budget = LISTING_BUDGET;
    let mut entries = Vec::with_capacity(smallest.len());
    for (name, d_type) in smallest.into_sorted_vec() {
        let entry = match sys::lstat_at(dir.fd(), &name) {
            Ok(st) => entry_from_stat(&name, &st),
            // Removed since readdir saw it.
            Err(e) if errno(&e) == Some(libc::ENOENT) => continue,
            // Names are readable but details are not (a directory without search
            // permission): report what readdir said.
            Err(_) => FileEntry {
                name: name.to_string_lossy().into_owned(),
                kind: kind_from_dtype(d_type),
                size: 0,
                mode: 0,
                modified: 0,
            },
        };
        // Names that are not UTF-8 grow when made valid UTF-8 (3 bytes per bad byte), so
        // the frame limit can bite before MAX_LISTING does.
        let cost = entry.name.len() + ENTRY_OVERHEAD;
        if cost > budget {
            truncated = true;
            break;
        }
        budget -= cost;
        entries.push(entry);
    }
    Ok((entries, truncated))
}

fn entry_from_stat(name: &CStr, st: &libc::stat) -> FileEntry {
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    FileEntry {
        name: name.to_string_lossy().into_owned(),
        kind,
        size: u64::try_from(st.st_size).unwrap_or(0),
        mode: st.st_mode & 0o7777,
        modified: st.st_mtime,
    }
}

fn kind_from_dtype(d_type: u8) -> FileKind {
    match d_type {
        libc::DT_REG => FileKind::File,
        libc::DT_DIR => FileKind::Directory,
        libc::DT_LNK => FileKind::Symlink,
        _ => FileKind::Other,
    }
}
