//! Loading the kernel modules shipped in the initramfs, in the order the image lists them.

use crate::console;
use nix::errno::Errno;
use nix::kmod::{finit_module, ModuleInitFlags};
use std::fs::File;
use std::path::Path;

/// Where `images` puts the modules and their `load-order` file (docs/CONTRACTS.md).
pub const MODULE_DIR: &str = "/lib/modules/sbx";

/// The list every boot loads, and the one loaded when the VM has a NIC.
pub const BASE_LIST: &str = "load-order";
pub const NET_LIST: &str = "load-order-net";

/// Loads every module named in `<dir>/<list>`. Failures are reported, never fatal: a
/// module that is built in or not needed should not stop the boot, and a missing one that
/// is needed shows up as a clear failure later (no disk, no port, no NIC).
pub fn load_all(dir: &Path, list: &str) {
    // No list means a kernel with everything built in: nothing to load.
    let order = match std::fs::read_to_string(dir.join(list)) {
        Ok(order) => order,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
        Err(e) => return console::line(&format!("sbx-init: reading the module list: {e}")),
    };
    for name in order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        if let Err(msg) = load(&dir.join(name)) {
            console::line(&format!("sbx-init: module {name}: {msg}"));
        }
    }
}

fn load(path: &Path) -> Result<(), String> {
    let file = File::open(path).map_err(|e| e.to_string())?;
    match finit_module(&file, c"", ModuleInitFlags::empty()) {
        // Already loaded (or built in): exactly what we wanted.
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}
