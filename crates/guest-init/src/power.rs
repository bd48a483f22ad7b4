//! Ending the VM. QEMU runs with `-no-reboot`, so a reset ends it too.

use nix::sys::reboot::{reboot, RebootMode};

/// Flushes and powers off; never returns.
pub fn off() -> ! {
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
    // Power-off unavailable (no ACPI): a reset also makes QEMU exit under -no-reboot.
    let _ = reboot(RebootMode::RB_AUTOBOOT);
    // Exiting PID 1 panics the kernel, and `panic=-1` resets: the last way out.
    std::process::exit(1)
}
