//! The file service: writes, reads and lists files under the user's home directory on the
//! host's behalf, streaming in chunks, with the user's own filesystem permissions.
//!
//! Two rules hold for every operation:
//!
//! - **Nothing outside home.** Every path is resolved with `openat2` beneath a descriptor of
//!   the home directory, so neither `..` nor a symlink — even one the user's code swaps in
//!   while we resolve — can lead out of it (that is answered with `OutsideHome`).
//! - **No more privilege than the user.** The filesystem work runs on a fresh worker thread
//!   whose filesystem uid and gid are the user's, so the kernel checks every access as it
//!   would for the user's code, and files we create belong to the user.
//!
//! The calling thread keeps the conversation with the host; data passes between it and the
//! worker through a bounded queue of [`MAX_CHUNK`]-byte chunks, so memory stays at a few
//! hundred KiB whatever the file's size.
//!
//! [`write`], [`read`] and [`list`] speak over the agent's [`Channel`]; [`serve_write`],
//! [`serve_read`] and [`serve_list`] do the same over any [`Conversation`], which is how the
//! tests drive them.

mod ops;
mod path;
mod sys;

use crate::channel::{Channel, ChannelError};
use ops::Incoming;
use protocol::{FileErrorKind, GuestMessage, HostMessage, MAX_CHUNK};
use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::{self, JoinHandle};

/// Whose files these are: every access is checked by the kernel as this user, and no path
/// may resolve outside `home`.
#[derive(Debug, Clone)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// Chunks queued between the channel thread and the worker. Enough to keep both busy; each
/// is at most [`MAX_CHUNK`] bytes, so this bounds the memory in flight.
const PIPELINE_DEPTH: usize = 4;

/// The host end of a file operation: where requests' follow-up messages come from and
/// answers go. An error from either means the conversation is over (the agent exits).
pub trait Conversation {
    fn recv(&mut self) -> Result<HostMessage, ChannelError>;
    fn send(&mut self, msg: &GuestMessage) -> Result<(), ChannelError>;
}

impl Conversation for Channel {
    fn recv(&mut self) -> Result<HostMessage, ChannelError> {
        Channel::recv(self)
    }

    fn send(&mut self, msg: &GuestMessage) -> Result<(), ChannelError> {
        Channel::send(self, msg)
    }
}

/// Handles `WriteFile`: receives `FileData`… `FileEnd` from `chan`, answers once.
pub fn write(
    chan: &mut Channel,
    user: &User,
    path: &str,
    executable: bool,
) -> Result<(), ChannelError> {
    serve_write(chan, user, path, executable)
}

/// Handles `ReadFile`: sends `FileData`… then `FileDone`, or `FileFailed`.
pub fn read(chan: &mut Channel, user: &User, path: &str) -> Result<(), ChannelError> {
    serve_read(chan, user, path)
}

/// Handles `ListFiles`: sends `Listing` or `FileFailed`.
pub fn list(chan: &mut Channel, user: &User, path: &str) -> Result<(), ChannelError> {
    serve_list(chan, user, path)
}

/// A file operation's failure, as the host will be told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FileError {
    pub(crate) kind: FileErrorKind,
    pub(crate) message: String,
}

impl FileError {
    fn new(kind: FileErrorKind, message: String) -> Self {
        FileError { kind, message }
    }

    /// Classifies a system call's failure while doing `op` on `path`; `subject`, when
    /// given, is the part of the path (a parent directory) the failure is about.
    fn from_io(op: &str, path: &str, subject: Option<&str>, err: &io::Error) -> Self {
        use FileErrorKind::*;
        let (kind, detail) = match err.raw_os_error() {
            Some(libc::ENOENT) => (NotFound, "no such file or directory"),
            Some(libc::EXDEV) => (OutsideHome, "it leads outside the home directory"),
            Some(libc::ENOTDIR) => (NotADirectory, "not a directory"),
            Some(libc::EISDIR) => (NotAFile, "it is a directory"),
            Some(libc::EACCES | libc::EPERM) => (PermissionDenied, "permission denied"),
            Some(libc::EROFS) => (PermissionDenied, "read-only file system"),
            Some(libc::ENOSPC | libc::EDQUOT) => {
                (NoSpace, "no space left in the guest's home directory")
            }
            Some(libc::ENAMETOOLONG) => (InvalidPath, "name too long"),
            Some(libc::ELOOP) => (
                Other,
                "too many levels of symbolic links, or a link that may not be followed",
            ),
            _ => (Other, ""),
        };
        let detail = if detail.is_empty() {
            err.to_string()
        } else {
            detail.to_owned()
        };
        let path = shown(path);
        let message = match subject {
            Some(at) if !at.is_empty() => format!("cannot {op} {path}: {}: {detail}", shown(at)),
            _ => format!("cannot {op} {path}: {detail}"),
        };
        FileError { kind, message }
    }

    fn to_message(&self) -> GuestMessage {
        GuestMessage::FileFailed {
            kind: self.kind,
            message: self.message.clone(),
        }
    }
}

/// A path for a message: quoted and escaped, and cut short if it is very long.
fn shown(path: &str) -> String {
    const SHOWN: usize = 160;
    if path.len() <= SHOWN {
        return format!("{path:?}");
    }
    let mut cut = SHOWN;
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{:?}…", &path[..cut])
}

fn spawn<T: Send + 'static>(
    op: &str,
    path: &str,
    job: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<JoinHandle<Result<T, FileError>>, FileError> {
    thread::Builder::new()
        .name(format!("files-{op}"))
        .spawn(job)
        .map_err(|e| {
            FileError::new(
                FileErrorKind::Other,
                format!("cannot {op} {}: no worker thread: {e}", shown(path)),
            )
        })
}

/// The worker's result; a panic is reported as an internal error rather than propagated,
/// since the host still needs its one answer.
fn finish<T>(
    worker: JoinHandle<Result<T, FileError>>,
    op: &str,
    path: &str,
) -> Result<T, FileError> {
    worker.join().unwrap_or_else(|_| {
        Err(FileError::new(
            FileErrorKind::Other,
            format!("cannot {op} {}: internal error in the agent", shown(path)),
        ))
    })
}

/// [`write`] over any [`Conversation`].
pub fn serve_write<C: Conversation + ?Sized>(
    conv: &mut C,
    user: &User,
    path: &str,
    executable: bool,
) -> Result<(), ChannelError> {
    let rel = match path::validate(path, false) {
        Ok(rel) => rel,
        Err(e) => return fail_and_drain(conv, e),
    };
    let (tx, rx) = mpsc::sync_channel(PIPELINE_DEPTH);
    let job_user = user.clone();
    let worker = match spawn("write", path, move || {
        ops::write(&job_user, &rel, executable, rx)
    }) {
        Ok(worker) => worker,
        Err(e) => return fail_and_drain(conv, e),
    };
    loop {
        // Before `End` the worker only stops by failing: report that before waiting for
        // more data, so the host learns of it as soon as possible.
        if worker.is_finished() {
            drop(tx);
            return fail_and_drain(conv, failure(finish(worker, "write", path), path));
        }
        let msg = match conv.recv() {
            Ok(msg) => msg,
            Err(e) => {
                // Without `End` the worker discards the temp file; wait for that, so no
                // half-written file outlives the agent.
                drop(tx);
                let _ = worker.join();
                return Err(e);
            }
        };
        match msg {
            HostMessage::FileData { data } if data.len() <= MAX_CHUNK => {
                if tx.send(Incoming::Data(data)).is_err() {
                    drop(tx);
                    return fail_and_drain(conv, failure(finish(worker, "write", path), path));
                }
            }
            HostMessage::FileData { data } => {
                drop(tx);
                let _ = worker.join();
                let e = FileError::new(
                    FileErrorKind::Other,
                    format!(
                        "cannot write {}: a chunk of {} bytes exceeds the {MAX_CHUNK}-byte limit",
                        shown(path),
                        data.len()
                    ),
                );
                return fail_and_drain(conv, e);
            }
            HostMessage::FileEnd => {
                // If the worker already failed this send fails too, and its error is the
                // answer.
                let _ = tx.send(Incoming::End);
                drop(tx);
                let answer = match finish(worker, "write", path) {
                    Ok(size) => GuestMessage::FileDone { size },
                    Err(e) => e.to_message(),
                };
                return conv.send(&answer);
            }
            HostMessage::FileAbort => {
                // No `FileEnd` follows an abort; the worker discards the temp file.
                drop(tx);
                let _ = worker.join();
                let e = FileError::new(
                    FileErrorKind::Other,
                    format!("write of {} abandoned by the host", shown(path)),
                );
                return conv.send(&e.to_message());
            }
            other => {
                // The host broke the protocol; the write is abandoned (nothing committed)
                // and the stray request is lost, as there is no way to hand it back.
                drop(tx);
                let _ = worker.join();
                eprintln!(
                    "sbx-agent: {} arrived in the middle of a file write; write abandoned",
                    request_name(&other)
                );
                let e = FileError::new(
                    FileErrorKind::Other,
                    format!("write of {} interrupted by another request", shown(path)),
                );
                return conv.send(&e.to_message());
            }
        }
    }
}

/// The error of a worker that stopped before it was told to commit.
fn failure(result: Result<u64, FileError>, path: &str) -> FileError {
    result.err().unwrap_or_else(|| {
        FileError::new(
            FileErrorKind::Other,
            format!("write of {} ended before its data did", shown(path)),
        )
    })
}

/// Answers a write with its failure, then consumes the rest of it up to `FileEnd` (or
/// `FileAbort`, which needs no second answer) so the next message read is the host's next
/// request.
fn fail_and_drain<C: Conversation + ?Sized>(
    conv: &mut C,
    err: FileError,
) -> Result<(), ChannelError> {
    conv.send(&err.to_message())?;
    loop {
        match conv.recv()? {
            HostMessage::FileData { .. } => {}
            HostMessage::FileEnd | HostMessage::FileAbort => return Ok(()),
            other => {
                eprintln!(
                    "sbx-agent: {} arrived before the end of a failed write; dropped",
                    request_name(&other)
                );
                return Ok(());
            }
        }
    }
}

fn request_name(msg: &HostMessage) -> &'static str {
    match msg {
        HostMessage::Exec(_) => "Exec",
        HostMessage::WriteFile { .. } => "WriteFile",
        HostMessage::FileData { .. } => "FileData",
        HostMessage::FileEnd => "FileEnd",
        HostMessage::FileAbort => "FileAbort",
        HostMessage::ReadFile { .. } => "ReadFile",
        HostMessage::ListFiles { .. } => "ListFiles",
    }
}

/// [`read`] over any [`Conversation`].
pub fn serve_read<C: Conversation + ?Sized>(
    conv: &mut C,
    user: &User,
    path: &str,
) -> Result<(), ChannelError> {
    let rel = match path::validate(path, false) {
        Ok(rel) => rel,
        Err(e) => return conv.send(&e.to_message()),
    };
    let (tx, rx) = mpsc::sync_channel(PIPELINE_DEPTH);
    let job_user = user.clone();
    let worker = match spawn("read", path, move || ops::read(&job_user, &rel, tx)) {
        Ok(worker) => worker,
        Err(e) => return conv.send(&e.to_message()),
    };
    let mut sent = 0u64;
    // Ends when the worker returns, dropping its sender.
    while let Ok(data) = rx.recv() {
        let len = data.len() as u64;
        if let Err(e) = conv.send(&GuestMessage::FileData { data }) {
            // Dropping the receiver stops the worker at its next chunk.
            drop(rx);
            let _ = worker.join();
            return Err(e);
        }
        sent += len;
    }
    let answer = match finish(worker, "read", path) {
        Ok(_) => GuestMessage::FileDone { size: sent },
        Err(e) => e.to_message(),
    };
    conv.send(&answer)
}

/// [`list`] over any [`Conversation`].
pub fn serve_list<C: Conversation + ?Sized>(
    conv: &mut C,
    user: &User,
    path: &str,
) -> Result<(), ChannelError> {
    let rel = match path::validate(path, true) {
        Ok(rel) => rel,
        Err(e) => return conv.send(&e.to_message()),
    };
    let job_user = user.clone();
    let answer = spawn("list", path, move || ops::list(&job_user, &rel))
        .and_then(|worker| finish(worker, "list", path));
    conv.send(&match answer {
        Ok((entries, truncated)) => GuestMessage::Listing { entries, truncated },
        Err(e) => e.to_message(),
    })
}
