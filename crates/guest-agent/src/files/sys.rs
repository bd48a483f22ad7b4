//! Thin wrappers over the system calls the file service needs, each returning `io::Error`
//! with the errno, which [`super::FileError::from_io`] turns into a protocol error.

use std::ffi::{CStr, CString};
use std::io;
use std::mem::{self, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// Resolution rules for every path we look up under home: stay beneath the starting
/// directory even through symlinks and `..` (EXDEV otherwise), never follow `/proc` magic
/// links, never cross into another mount. They apply atomically to the whole walk, so a
/// component swapped for a symlink while we resolve cannot lead us out.
const RESOLVE: u64 = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;

/// `openat2` answers EAGAIN when a concurrent rename could have made a `..` step unsafe;
/// retrying is the documented remedy, bounded so a hostile renaming loop cannot pin us.
const EAGAIN_RETRIES: usize = 64;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Switches the calling thread's filesystem identity to `uid`/`gid`, and proves it took.
///
/// `setfsuid`/`setfsgid` are per-thread in the kernel (only libc's `setuid` family
/// broadcasts to all threads, and we call the raw system calls). Moving fsuid away from 0
/// also clears this thread's filesystem capabilities (`CAP_DAC_OVERRIDE`, `CAP_FOWNER`…), so
/// the kernel checks every access exactly as for the user. Supplementary groups also enter
/// those checks, but they are process-wide (`setgroups` would affect the agent's other
/// threads); the agent runs with none, so the checks see only the user's uid and gid.
pub fn become_user(uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: these system calls take plain integers and only change the calling thread's
    // credentials.
    unsafe {
        libc::syscall(libc::SYS_setfsgid, libc::c_long::from(gid));
        libc::syscall(libc::SYS_setfsuid, libc::c_long::from(uid));
    }
    // Neither call reports failure; an invalid id (-1) changes nothing and returns the
    // current one, which tells us whether the switch happened.
    // SAFETY: as above; -1 is rejected by the kernel without effect.
    let (fsuid, fsgid) = unsafe {
        (
            libc::syscall(libc::SYS_setfsuid, -1 as libc::c_long),
            libc::syscall(libc::SYS_setfsgid, -1 as libc::c_long),
        )
    };
    if fsuid == libc::c_long::from(uid) && fsgid == libc::c_long::from(gid) {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot take the user's file identity {uid}:{gid} (have {fsuid}:{fsgid})"
        )))
    }
}

/// Opens a trusted directory (the home directory itself) as a lookup handle.
pub fn open_dir_path(path: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: `path` is a valid C string; the result is checked before it is owned.
    let fd = check(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` was just opened and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat2(dir, path, flags)` confined beneath `dir` (see [`RESOLVE`]).
pub fn open_beneath(dir: BorrowedFd<'_>, path: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: `open_how` is plain integers; all-zero is its documented default. It is
    // `#[non_exhaustive]` in libc, so it cannot be built with a literal.
    let mut how: libc::open_how = unsafe { mem::zeroed() };
    how.flags = u64::from((flags | libc::O_CLOEXEC) as u32);
    how.resolve = RESOLVE;
    let mut retries = 0;
    loop {
        // SAFETY: `path` is a valid C string and `how` a valid `open_how` of the size passed.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const libc::open_how,
                mem::size_of::<libc::open_how>(),
            )
        };
        if ret >= 0 {
            let fd = libc::c_int::try_from(ret).map_err(io::Error::other)?;
            // SAFETY: the kernel just gave us this descriptor.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => {}
            Some(libc::EAGAIN) if retries < EAGAIN_RETRIES => retries += 1,
            _ => return Err(err),
        }
    }
}

/// Creates a new file named `name` (one component) in `dir`, failing if anything, even a
/// dangling symlink, already has that name.
pub fn create_exclusive(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid C string; the result is checked before it is owned.
    let fd = check(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    })?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// Renames `from` to `to`, both names in `dir`, replacing `to` (a symlink itself, never
/// what it points to) atomically.
pub fn rename_at(dir: BorrowedFd<'_>, from: &CStr, to: &CStr) -> io::Result<()> {
    // SAFETY: valid C strings.
    check(unsafe { libc::renameat(dir.as_raw_fd(), from.as_ptr(), dir.as_raw_fd(), to.as_ptr()) })
        .map(drop)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid C string.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

/// `fstatat(dir, name, AT_SYMLINK_NOFOLLOW)`: what the entry itself is.
pub fn lstat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid C string; `st` is written by the kernel on success, and only read then.
    unsafe {
        check(libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        ))?;
        Ok(st.assume_init())
    }
}

pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is written by the kernel on success, and only read then.
    unsafe {
        check(libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()))?;
        Ok(st.assume_init())
    }
}

/// Total size in bytes of the filesystem `fd` is on.
pub fn filesystem_bytes(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `st` is written by the kernel on success, and only read then.
    let st = unsafe {
        check(libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()))?;
        st.assume_init()
    };
    Ok(st.f_blocks.saturating_mul(st.f_frsize))
}

pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    // SAFETY: plain integers.
    check(unsafe { libc::fchmod(fd.as_raw_fd(), mode as libc::mode_t) }).map(drop)
}

pub fn is_type(st: &libc::stat, ty: libc::mode_t) -> bool {
    st.st_mode & libc::S_IFMT == ty
}

/// Eight unpredictable bytes, or — should the entropy call fail — merely distinct ones:
/// they only name temp files, and `O_EXCL` is what makes those safe.
pub fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: `buf` is valid for 8 bytes of writes.
    let got = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), libc::GRND_NONBLOCK) };
    if got == 8 {
        return u64::from_ne_bytes(buf);
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ COUNTER.fetch_add(1, Ordering::Relaxed).rotate_left(32) ^ u64::from(std::process::id())
}

/// A directory stream over a descriptor, closed on drop.
pub struct Dir(*mut libc::DIR);

/// One entry: its name and the type `readdir` reported (`DT_*`).
pub struct DirEntry {
    pub name: CString,
    pub d_type: u8,
}

impl Dir {
    pub fn new(fd: OwnedFd) -> io::Result<Dir> {
        let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
        // SAFETY: `raw` is an open directory descriptor whose ownership passes to the stream.
        let dir = unsafe { libc::fdopendir(raw) };
        if dir.is_null() {
            let err = io::Error::last_os_error();
            // SAFETY: fdopendir failed, so the descriptor is still ours to close.
            unsafe { libc::close(raw) };
            return Err(err);
        }
        Ok(Dir(dir))
    }

    /// The descriptor the stream reads, for `fstatat` on its entries.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the stream keeps its descriptor open until `closedir` in drop, which
        // cannot happen while this borrow of `self` lives.
        unsafe { BorrowedFd::borrow_raw(libc::dirfd(self.0)) }
    }

    /// The next entry, `None` at the end.
    pub fn next_entry(&mut self) -> io::Result<Option<DirEntry>> {
        // readdir signals errors only through errno, so it must be cleared first.
        // SAFETY: errno is thread-local; the stream is valid until drop; the entry is
        // copied out before the next readdir can overwrite it.
        unsafe {
            *libc::__errno_location() = 0;
            let ent = libc::readdir(self.0);
            if ent.is_null() {
                let err = io::Error::last_os_error();
                return match err.raw_os_error() {
                    Some(0) | None => Ok(None),
                    Some(_) => Err(err),
                };
            }
            let name = CStr::from_ptr((*ent).d_name.as_ptr()).to_owned();
            Ok(Some(DirEntry {
                name,
                d_type: (*ent).d_type,
            }))
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        // SAFETY: the stream is valid and closed exactly once.
        unsafe { libc::closedir(self.0) };
    }
}
