//! Guest state the host hands over with each request: wall clock and entropy. Both matter
//! most after a snapshot restore, when every clone would otherwise share the saved clock and
//! the saved RNG state.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `_IOW('R', 0x03, int[2])` from `<linux/random.h>`: add entropy and credit it.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;

/// Sets CLOCK_REALTIME to `unix_ms`. Zero means "the host did not say" and is skipped.
pub fn set_clock(unix_ms: u64) -> io::Result<()> {
    if unix_ms == 0 {
        return Ok(());
    }
    let ts = libc::timespec {
        tv_sec: (unix_ms / 1000) as libc::time_t,
        tv_nsec: ((unix_ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: valid clock id and a pointer to an initialised timespec.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mixes `bytes` into the kernel pool and credits them, so the CRNG is reseeded with
/// randomness this clone does not share with its siblings.
pub fn add_entropy(bytes: &[u8]) -> io::Result<()> {
    if bytes.is_empty() {
        return Ok(());
    }
    let len =
        i32::try_from(bytes.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }, built in a
    // u32 buffer so the header is correctly aligned.
    let mut info = vec![0u32; 2 + bytes.len().div_ceil(4)];
    info[0] = len.saturating_mul(8) as u32;
    info[1] = len as u32;
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let mut word = [0u8; 4];
        word[..chunk.len()].copy_from_slice(chunk);
        info[2 + i] = u32::from_ne_bytes(word);
    }
    let random = OpenOptions::new().write(true).open("/dev/random")?;
    // SAFETY: `info` is a valid rand_pool_info whose buf holds `buf_size` bytes.
    if unsafe { libc::ioctl(random.as_raw_fd(), RNDADDENTROPY as _, info.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Time since boot (CLOCK_BOOTTIME, which includes time suspended).
pub fn uptime() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid clock id and a pointer to a timespec we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
