//! The file service: writes, reads and lists files under the user's home directory on the
//! host's behalf, streaming in chunks, with the user's own filesystem permissions.
//!
//! (Skeleton: the helper implementing this replaces the bodies.)

use crate::channel::{Channel, ChannelError};
use protocol::{FileErrorKind, GuestMessage};
use std::path::PathBuf;

/// Whose files these are: every access is checked by the kernel as this user, and no path
/// may resolve outside `home`.
#[derive(Debug, Clone)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

fn unsupported(chan: &mut Channel) -> Result<(), ChannelError> {
    chan.send(&GuestMessage::FileFailed {
        kind: FileErrorKind::Other,
        message: "not implemented".into(),
    })
}

/// Handles `WriteFile`: receives `FileData`… `FileEnd` from `chan`, answers once.
pub fn write(
    chan: &mut Channel,
    _user: &User,
    _path: &str,
    _executable: bool,
) -> Result<(), ChannelError> {
    unsupported(chan)
}

/// Handles `ReadFile`: sends `FileData`… then `FileDone`, or `FileFailed`.
pub fn read(chan: &mut Channel, _user: &User, _path: &str) -> Result<(), ChannelError> {
    unsupported(chan)
}

/// Handles `ListFiles`: sends `Listing` or `FileFailed`.
pub fn list(chan: &mut Channel, _user: &User, _path: &str) -> Result<(), ChannelError> {
    unsupported(chan)
}
