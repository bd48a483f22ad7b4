//! Building the QEMU argument list and the guest kernel command line. Pure functions: no
//! I/O, so every flag can be asserted in unit tests.

use std::ffi::OsString;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::qemu::{QemuInfo, SANDBOX_OPTS};
use protocol::{HOME_DISK_SERIAL, ROOT_DISK_SERIAL};

/// Which accelerator QEMU runs the guest with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accelerator {
    Kvm,
    Tcg,
}

impl Accelerator {
    pub fn name(self) -> &'static str {
        match self {
            Accelerator::Kvm => "kvm",
            Accelerator::Tcg => "tcg",
        }
    }
}

impl std::fmt::Display for Accelerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Guest CPU model under TCG. `qemu64` is the cheapest model to emulate (faster boot than
/// `max`); `+rdrand` avoids the guest entropy stall; SSSE3/SSE4.x/POPCNT are what Bun's
/// baseline build requires (plain `qemu64` makes it die with SIGILL).
pub const TCG_CPU: &str = "qemu64,+rdrand,+ssse3,+sse4.1,+sse4.2,+popcnt";

/// The machine: `microvm` with virtio-mmio devices. `x-option-roms=off`: no firmware ROM
/// scanning; `isa-serial` for the console; `rtc=on` because `rtc=off` costs 2 s of boot;
/// `pit=off,pic=off`: the legacy timer and interrupt controller are not needed by a kernel
/// with the TSC deadline timer and IOAPIC, and dropping them measured ~0.6 s faster to
/// init under TCG on 7.2 (3.0 s vs 3.6 s on a loaded 2-core host, 3 interleaved pairs).
pub const MACHINE: &str = "microvm,x-option-roms=off,isa-serial=on,rtc=on,pit=off,pic=off";

/// Kernel parameters for a fast, quiet, deterministic boot (measured in PLATFORM-NOTES):
/// no crypto self-tests, no TSC recalibration, no mitigations (the VM is the boundary),
/// capability LSM only, expedited RCU, reboot = power off via triple fault, never wait on
/// panic.
pub const BASE_CMDLINE: &[&str] = &[
    "console=ttyS0",
    "panic=-1",
    "reboot=t",
    "quiet",
    "cryptomgr.notests",
    "tsc=reliable",
    "no_timer_check",
    "mitigations=off",
    "lsm=capability",
    "audit=0",
    "rcupdate.rcu_expedited=1",
];

/// What the guest is booted for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// Normal boot: init starts the agent, which talks on a virtio-serial port backed by
    /// this unix socket.
    Agent { socket: PathBuf },
    /// `sbx.probe=1`: init prints the probe marker and powers off. No devices needed.
    Probe,
}

/// Everything the command line depends on.
#[derive(Clone, Debug)]
pub struct CommandSpec<'a> {
    pub qemu: &'a QemuInfo,
    pub accelerator: Accelerator,
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub rootfs: Option<&'a Path>,
    pub memory_mb: u32,
    pub vcpus: u32,
    pub console_log: &'a Path,
    pub tsc_khz: Option<u64>,
    pub extra_cmdline: &'a [String],
    pub mode: BootMode,
    /// The home disk image as inherited descriptors (read-write, read-only), agent mode only.
    pub home_fds: Option<[RawFd; 2]>,
    /// A virtio-net NIC whose frames go through this unix socket (QEMU listens; the host's
    /// network process connects), agent mode only.
    pub nic_socket: Option<&'a Path>,
}

/// The fd set QEMU finds the home disk's descriptors in.
const HOME_FDSET: u32 = 1;

/// The guest kernel command line. `home_disk`: a home disk is attached.
pub fn kernel_cmdline(
    tsc_khz: Option<u64>,
    mode: &BootMode,
    home_disk: bool,
    extra: &[String],
) -> String {
    let mut parts: Vec<String> = BASE_CMDLINE.iter().map(|s| s.to_string()).collect();
    if let Some(khz) = tsc_khz {
        // Without it TSC calibration under TCG sometimes stalls boot for 90 s.
        parts.push(format!("tsc_early_khz={khz}"));
    }
    if *mode == BootMode::Probe {
        parts.push(protocol::PROBE_CMDLINE_FLAG.to_string());
    }
    if home_disk {
        parts.push(protocol::HOME_DISK_CMDLINE_FLAG.to_string());
    }
    parts.extend(extra.iter().cloned());
    parts.join(" ")
}

/// The full QEMU argument list (without the binary itself).
pub fn qemu_args(spec: &CommandSpec<'_>) -> Vec<OsString> {
    let mut a = Args::default();
    a.push("-M").push(MACHINE);
    if let Some(bios) = &spec.qemu.microvm_bios {
        a.push("-bios").push(bios);
    }
    match spec.accelerator {
        Accelerator::Kvm => a.push("-accel").push("kvm").push("-cpu").push("host"),
        Accelerator::Tcg => a.push("-accel").push("tcg").push("-cpu").push(TCG_CPU),
    };
    a.push("-m").push(spec.memory_mb.to_string());
    a.push("-smp").push(spec.vcpus.max(1).to_string());
    a.push("-nodefaults")
        .push("-no-user-config")
        .push("-nographic")
        .push("-no-reboot");
    a.push("-kernel").push(spec.kernel);
    a.push("-initrd").push(spec.initramfs);
    let agent = matches!(spec.mode, BootMode::Agent { .. });
    let mut extra = spec.extra_cmdline.to_vec();
    if agent && spec.nic_socket.is_some() {
        extra.push(protocol::guest_net::CMDLINE_FLAG.to_string());
    }
    a.push("-append").push(kernel_cmdline(
        spec.tsc_khz,
        &spec.mode,
        agent && spec.home_fds.is_some(),
        &extra,
    ));
    if let BootMode::Agent { socket } = &spec.mode {
        if let Some(rootfs) = spec.rootfs {
            a.push("-drive").push(drive_arg(rootfs));
            a.push("-device").push(format!(
                "virtio-blk-device,drive=root,serial={ROOT_DISK_SERIAL}"
            ));
        }
        if let Some([rw, ro]) = spec.home_fds {
            a.push("-add-fd").push(format!("fd={rw},set={HOME_FDSET}"));
            a.push("-add-fd").push(format!("fd={ro},set={HOME_FDSET}"));
            // A throwaway disk: no flushes to honour (`cache=unsafe`); deleted files give
            // their host space back (`discard=unmap`); a full host disk is an I/O error
            // in the guest rather than a paused VM (`werror=report`, the default being
            // to stop the VM on ENOSPC).
            a.push("-drive").push(format!(
                "id=home,file=/dev/fdset/{HOME_FDSET},format=raw,if=none,cache=unsafe,\
                 discard=unmap,werror=report,rerror=report"
            ));
            a.push("-device").push(format!(
                "virtio-blk-device,drive=home,serial={HOME_DISK_SERIAL}"
            ));
        }
        if let Some(socket) = spec.nic_socket {
            // QEMU listens, so a network process that dies can be replaced: QEMU accepts
            // the next connection (7.2 and later).
            let mut netdev = OsString::from("stream,id=net,server=on,addr.type=unix,addr.path=");
            netdev.push(escape_commas(socket));
            a.push("-netdev").push(netdev);
            let mac = protocol::guest_net::GUEST_MAC
                .map(|b| format!("{b:02x}"))
                .join(":");
            a.push("-device")
                .push(format!("virtio-net-device,netdev=net,mac={mac}"));
        }
        a.push("-device").push("virtio-serial-device");
        a.push("-chardev").push(socket_chardev_arg(socket));
        a.push("-device").push(format!(
            "virtserialport,chardev=agent,name={}",
            protocol::AGENT_PORT_NAME
        ));
    }
    a.push("-serial").push(file_arg("file:", spec.console_log));
    if spec.qemu.supports_sandbox {
        a.push("-sandbox").push(SANDBOX_OPTS);
    }
    a.0
}

fn drive_arg(rootfs: &Path) -> OsString {
    let mut s = OsString::from("id=root,file=");
    s.push(escape_commas(rootfs));
    s.push(",format=raw,if=none,readonly=on");
    s
}

fn socket_chardev_arg(socket: &Path) -> OsString {
    let mut s = OsString::from("socket,id=agent,path=");
    s.push(escape_commas(socket));
    s.push(",server=on,wait=off");
    s
}

fn file_arg(prefix: &str, path: &Path) -> OsString {
    let mut s = OsString::from(prefix);
    s.push(path);
    s
}

/// QEMU option values separate keys with commas; a literal comma is written `,,`.
fn escape_commas(p: &Path) -> OsString {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let mut out = Vec::with_capacity(p.as_os_str().len());
    for &b in p.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    OsString::from_vec(out)
}

#[derive(Default)]
struct Args(Vec<OsString>);

impl Args {
    fn push(&mut self, s: impl Into<OsString>) -> &mut Self {
        self.0.push(s.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qemu(version: (u32, u32, u32), bios: bool, sandbox: bool) -> QemuInfo {
        QemuInfo {
            path: "/usr/bin/qemu-system-x86_64".into(),
            version,
            version_string: format!(
                "QEMU emulator version {}.{}.{}",
                version.0, version.1, version.2
            ),
            supports_sandbox: sandbox,
            microvm_bios: bios.then(|| "/usr/share/qemu/qboot.rom".into()),
        }
    }

    fn args(
        q: &QemuInfo,
        accel: Accelerator,
        mode: BootMode,
        rootfs: Option<&Path>,
    ) -> Vec<String> {
        let extra = vec!["sbx.lang=python".to_string()];
        let spec = CommandSpec {
            qemu: q,
            accelerator: accel,
            kernel: Path::new("/img/vmlinuz"),
            initramfs: Path::new("/img/initramfs.cpio"),
            rootfs,
            memory_mb: 256,
            vcpus: 1,
            console_log: Path::new("/run/sbx/vm-1/console.log"),
            tsc_khz: Some(2_300_000),
            extra_cmdline: &extra,
            mode,
            home_fds: None,
            nic_socket: None,
        };
        qemu_args(&spec)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect()
    }

    fn value_of<'a>(args: &'a [String], flag: &str) -> Vec<&'a str> {
        args.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    fn agent() -> BootMode {
        BootMode::Agent {
            socket: "/run/sbx/vm-1/agent.sock".into(),
        }
    }

    #[test]
    fn tcg_on_72() {
        let q = qemu((7, 2, 22), false, true);
        let a = args(
            &q,
            Accelerator::Tcg,
            agent(),
            Some(Path::new("/img/root.erofs")),
        );
        assert_eq!(value_of(&a, "-M"), [MACHINE]);
        assert_eq!(value_of(&a, "-accel"), ["tcg"]);
        assert_eq!(value_of(&a, "-cpu"), [TCG_CPU]);
        assert!(value_of(&a, "-bios").is_empty());
        assert_eq!(value_of(&a, "-m"), ["256"]);
        assert_eq!(value_of(&a, "-smp"), ["1"]);
        for f in ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"] {
            assert!(a.iter().any(|x| x == f), "{f} missing");
        }
        assert_eq!(
            value_of(&a, "-drive"),
            ["id=root,file=/img/root.erofs,format=raw,if=none,readonly=on"]
        );
        assert_eq!(
            value_of(&a, "-chardev"),
            ["socket,id=agent,path=/run/sbx/vm-1/agent.sock,server=on,wait=off"]
        );
        assert_eq!(
            value_of(&a, "-device"),
            [
                "virtio-blk-device,drive=root,serial=sbx-root",
                "virtio-serial-device",
                "virtserialport,chardev=agent,name=org.exec-sandbox.agent"
            ]
        );
        assert_eq!(value_of(&a, "-serial"), ["file:/run/sbx/vm-1/console.log"]);
        assert_eq!(value_of(&a, "-sandbox"), [SANDBOX_OPTS]);
        let append = value_of(&a, "-append")[0];
        assert!(append.starts_with("console=ttyS0 panic=-1 reboot=t quiet cryptomgr.notests"));
        assert!(append.contains(" tsc_early_khz=2300000"));
        assert!(append.ends_with(" sbx.lang=python"));
        assert!(!append.contains(protocol::PROBE_CMDLINE_FLAG));
    }

    #[test]
    fn kvm_on_10_uses_qboot_and_host_cpu() {
        let q = qemu((10, 0, 2), true, false);
        let a = args(&q, Accelerator::Kvm, agent(), None);
        assert_eq!(value_of(&a, "-accel"), ["kvm"]);
        assert_eq!(value_of(&a, "-cpu"), ["host"]);
        assert_eq!(value_of(&a, "-bios"), ["/usr/share/qemu/qboot.rom"]);
        assert!(value_of(&a, "-drive").is_empty(), "no rootfs, no drive");
        assert!(
            value_of(&a, "-sandbox").is_empty(),
            "unsupported sandbox is not passed"
        );
    }

    #[test]
    fn probe_mode_has_flag_and_no_devices() {
        let q = qemu((7, 2, 22), false, true);
        let a = args(
            &q,
            Accelerator::Kvm,
            BootMode::Probe,
            Some(Path::new("/img/root.erofs")),
        );
        assert!(value_of(&a, "-append")[0].contains(protocol::PROBE_CMDLINE_FLAG));
        assert!(value_of(&a, "-device").is_empty());
        assert!(value_of(&a, "-chardev").is_empty());
        assert!(value_of(&a, "-drive").is_empty());
    }

    #[test]
    fn home_disk_comes_as_an_fd_set_that_reports_errors() {
        let q = qemu((7, 2, 22), false, true);
        let extra = Vec::new();
        let a: Vec<String> = qemu_args(&CommandSpec {
            qemu: &q,
            accelerator: Accelerator::Tcg,
            kernel: Path::new("/img/vmlinux"),
            initramfs: Path::new("/img/initramfs.cpio"),
            rootfs: Some(Path::new("/img/root.erofs")),
            memory_mb: 256,
            vcpus: 1,
            console_log: Path::new("/run/sbx/vm-1/console.log"),
            tsc_khz: None,
            extra_cmdline: &extra,
            mode: agent(),
            home_fds: Some([7, 9]),
            nic_socket: Some(Path::new("/run/sbx/vm-1/net.sock")),
        })
        .into_iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
        assert_eq!(value_of(&a, "-add-fd"), ["fd=7,set=1", "fd=9,set=1"]);
        let drives = value_of(&a, "-drive");
        assert_eq!(drives.len(), 2);
        assert_eq!(
            drives[1],
            "id=home,file=/dev/fdset/1,format=raw,if=none,cache=unsafe,discard=unmap,werror=report,rerror=report"
        );
        assert!(value_of(&a, "-device").contains(&"virtio-blk-device,drive=home,serial=sbx-home"));
        assert!(value_of(&a, "-append")[0].contains(" sbx.home=disk"));
        assert_eq!(
            value_of(&a, "-netdev"),
            ["stream,id=net,server=on,addr.type=unix,addr.path=/run/sbx/vm-1/net.sock"]
        );
        assert!(
            value_of(&a, "-device").contains(&"virtio-net-device,netdev=net,mac=52:54:00:12:34:56")
        );
        assert!(value_of(&a, "-append")[0].contains(" sbx.net=1"));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        assert_eq!(
            escape_commas(Path::new("/a,b/c")),
            OsString::from("/a,,b/c")
        );
    }

    #[test]
    fn cmdline_without_tsc() {
        let c = kernel_cmdline(None, &BootMode::Probe, false, &[]);
        assert!(!c.contains("tsc_early_khz"));
        assert!(c.ends_with(protocol::PROBE_CMDLINE_FLAG));
    }
}
