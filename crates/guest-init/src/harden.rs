//! Kernel settings that shrink what the unprivileged code can reach in the guest kernel.
//!
//! The code runs as an ordinary user, but every kernel interface it can open is attack
//! surface between it and root in the guest (the VM boundary stays the real one). Each
//! setting is best effort: a kernel without the knob simply does not have that surface.

use crate::console;

/// `/proc/sys` paths and the values written to them.
const SETTINGS: &[(&str, &str)] = &[
    // User namespaces give the code a "root" with access to many more kernel paths.
    ("/proc/sys/user/max_user_namespaces", "0"),
    ("/proc/sys/vm/unprivileged_userfaultfd", "0"),
    ("/proc/sys/kernel/unprivileged_bpf_disabled", "1"),
    ("/proc/sys/kernel/perf_event_paranoid", "3"),
    ("/proc/sys/kernel/kptr_restrict", "2"),
    ("/proc/sys/kernel/dmesg_restrict", "1"),
];

pub fn apply() {
    for (path, value) in SETTINGS {
        if let Err(e) = std::fs::write(path, value) {
            if e.kind() != std::io::ErrorKind::NotFound {
                console::line(&format!("sbx-init: {path}: {e}"));
            }
        }
    }
}
