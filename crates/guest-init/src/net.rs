//! Bringing up the loopback interface so code can use 127.0.0.1.

use crate::error::InitError;
use std::io;
use std::os::fd::AsRawFd;
use std::os::fd::{FromRawFd, OwnedFd};

/// Sets IFF_UP on `lo` with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls (what `ip link set lo up`
/// does, without starting a process). The kernel assigns 127.0.0.1/8 and ::1 itself.
pub fn loopback_up() -> Result<(), InitError> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(InitError::io("socket for lo")(io::Error::last_os_error()));
    }
    // SAFETY: `raw` is a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: valid socket fd and a valid ifreq for these requests.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            return Err(InitError::io("SIOCGIFFLAGS lo")(io::Error::last_os_error()));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as _, &req) < 0 {
            return Err(InitError::io("SIOCSIFFLAGS lo")(io::Error::last_os_error()));
        }
    }
    Ok(())
}
