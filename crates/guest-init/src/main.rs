//! `guest-init`: PID 1 of every guest, `/init` in the initramfs.
//!
//! It owns bringing the machine up to the point where the agent can run: mounting the
//! pseudo filesystems, loading the kernel modules, mounting the language root filesystem
//! with its writable tmpfs areas, switching into it, bringing up `lo`, starting the agent,
//! reaping every orphan and powering off when the agent exits. In probe mode
//! (`protocol::PROBE_CMDLINE_FLAG`) it only prints `protocol::PROBE_MARKER` and powers off.
//!
//! It must not talk to the host (that is the agent's channel), run user code, or shell out
//! to anything: under software emulation every process start costs milliseconds.
//!
//! Any failure before the agent starts prints one `sbx-init:` line on the console and
//! powers off, so the host sees QEMU exit before `Ready` and can retry.

mod console;
mod error;
mod harden;
mod modules;
mod mounts;
mod net;
mod power;
mod rootfs;
mod supervise;

use error::InitError;
use nix::mount::MsFlags;
use std::path::Path;

/// The agent binary inside the initramfs (see docs/CONTRACTS.md).
const AGENT_IN_INITRAMFS: &str = "/sbin/sbx-agent";
const HOSTNAME: &str = protocol::GUEST_HOSTNAME;
/// Kernel command-line flag that makes init trace boot stages with timestamps on the console.
const DEBUG_CMDLINE_FLAG: &str = "sbx.debug=1";

fn main() {
    if let Err(e) = boot() {
        console::line(&format!("sbx-init: {e}"));
    }
    power::off()
}

/// Everything up to and including running the agent. Returns when the agent has exited.
fn boot() -> Result<(), InitError> {
    mounts::mount_fs("proc", "/proc", "proc", mounts::PSEUDO, None)?;
    let cmdline =
        std::fs::read_to_string("/proc/cmdline").map_err(InitError::io("read /proc/cmdline"))?;
    let has_flag = |flag: &str| cmdline.split_whitespace().any(|arg| arg == flag);
    if has_flag(DEBUG_CMDLINE_FLAG) {
        console::enable_trace();
    }
    if has_flag(protocol::PROBE_CMDLINE_FLAG) {
        mounts::ensure_console()?;
        console::line(protocol::PROBE_MARKER);
        return Ok(());
    }
    // The kernel's built-in initramfs only has a static /dev/console; devices need devtmpfs.
    mounts::mount_fs(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    console::attach_stdio();
    console::trace("init started");
    mounts::mount_fs("sysfs", "/sys", "sysfs", mounts::PSEUDO, None)?;
    let networked = has_flag(protocol::guest_net::CMDLINE_FLAG);
    modules::load_all(Path::new(modules::MODULE_DIR), modules::BASE_LIST);
    if networked {
        modules::load_all(Path::new(modules::MODULE_DIR), modules::NET_LIST);
    }
    console::trace("modules loaded");
    rootfs::prepare(
        Path::new(AGENT_IN_INITRAMFS),
        has_flag(protocol::HOME_DISK_CMDLINE_FLAG),
    )?;
    rootfs::switch()?;
    console::trace("root switched");
    // Neither is fatal: code that needs 127.0.0.1 or the hostname fails visibly, the rest runs.
    if let Err(e) = net::loopback_up() {
        console::line(&format!("sbx-init: {e}"));
    }
    // Fatal: a VM asked to have a network must not run code without the one it was given.
    if networked {
        net::nic_up(Path::new(protocol::guest_net::RESOLV_CONF))?;
        console::trace("network up");
    }
    harden::apply();
    if let Err(e) = nix::unistd::sethostname(HOSTNAME) {
        console::line(&format!("sbx-init: sethostname: {e}"));
    }
    console::trace("starting agent");
    supervise::run_agent(Path::new(rootfs::AGENT_PATH))
}
