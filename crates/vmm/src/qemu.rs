//! Finding the QEMU binary and learning, once, what it supports.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::VmmError;

/// The binary name looked up on `$PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// QEMU ≥ 8 defaults `microvm` to SeaBIOS, which resets right after "Booting from ROM" on a
/// PVH boot most of the time; qboot does not (PLATFORM-NOTES).
const QBOOT_ROM: &str = "/usr/share/qemu/qboot.rom";

/// What we know about one QEMU binary. Detected once by [`find_qemu`]; cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QemuInfo {
    pub path: PathBuf,
    pub version: (u32, u32, u32),
    /// The first line of `-version`, e.g. `QEMU emulator version 7.2.22 (Debian ...)`.
    pub version_string: String,
    /// Whether this build accepts `-sandbox on,...` (built with seccomp).
    pub supports_sandbox: bool,
    /// Firmware to pass with `-bios` for `microvm` (qboot on QEMU ≥ 8 when installed).
    pub microvm_bios: Option<PathBuf>,
}

impl QemuInfo {
    /// Whether this QEMU has `-netdev stream`, which backs the guest NIC with the network
    /// process's unix socket (added in QEMU 7.2).
    pub fn supports_netdev_stream(&self) -> bool {
        self.version >= (7, 2, 0)
    }
}

/// Locates QEMU (`explicit` or `$PATH`), runs `-version` once and probes `-sandbox` support.
pub fn find_qemu(explicit: Option<&Path>) -> Result<QemuInfo, VmmError> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => which::which(QEMU_BINARY).map_err(|source| VmmError::QemuNotFound {
            name: QEMU_BINARY.into(),
            source,
        })?,
    };
    let out = Command::new(&path)
        .arg("-version")
        .output()
        .map_err(|e| VmmError::io("running", &path, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(VmmError::QemuUnusable {
            path,
            reason: format!(
                "`-version` exited with {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    let version_string = stdout.lines().next().unwrap_or_default().trim().to_string();
    let version = parse_version(&stdout).ok_or_else(|| VmmError::VersionUnparsable {
        path: path.clone(),
        output: version_string.clone(),
    })?;
    let supports_sandbox = probe_sandbox(&path);
    let qboot = Path::new(QBOOT_ROM);
    let microvm_bios = (version.0 >= 8 && qboot.is_file()).then(|| qboot.to_path_buf());
    Ok(QemuInfo {
        path,
        version,
        version_string,
        supports_sandbox,
        microvm_bios,
    })
}

/// The option set passed to `-sandbox` when supported: seccomp on, and deny the syscall
/// groups a compromised QEMU would want (obsolete syscalls, setuid, fork/exec, setpriority
/// and friends).
pub const SANDBOX_OPTS: &str =
    "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// QEMU parses `-sandbox` when it meets it on the command line and fails with
/// "-sandbox is not supported by this QEMU binary" when built without seccomp; `-version`
/// placed after it exits before anything is started. So this costs one ~20 ms exec and
/// checks the exact option string we will use.
fn probe_sandbox(path: &Path) -> bool {
    Command::new(path)
        .args(["-sandbox", SANDBOX_OPTS, "-version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Parses `QEMU emulator version X.Y.Z` (also `X.Y` and suffixes like `(v8.2.0-rc1)`).
pub fn parse_version(output: &str) -> Option<(u32, u32, u32)> {
    let line = output.lines().find(|l| l.contains("version"))?;
    let after = line.split("version").nth(1)?.trim_start();
    let token: String = after
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let mut parts = token
        .split('.')
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<u32>());
    let major = parts.next()?.ok()?;
    let minor = parts.next()?.ok()?;
    let micro = match parts.next() {
        Some(p) => p.ok()?,
        None => 0,
    };
    Some((major, minor, micro))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netdev_stream_needs_7_2() {
        let info = |version| QemuInfo {
            path: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            version,
            version_string: String::new(),
            supports_sandbox: true,
            microvm_bios: None,
        };
        assert!(!info((7, 1, 9)).supports_netdev_stream());
        assert!(info((7, 2, 0)).supports_netdev_stream());
        assert!(info((10, 0, 2)).supports_netdev_stream());
    }

    #[test]
    fn parses_debian_versions() {
        let v72 = "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard\n";
        assert_eq!(parse_version(v72), Some((7, 2, 22)));
        let v10 = "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\n";
        assert_eq!(parse_version(v10), Some((10, 0, 2)));
        assert_eq!(
            parse_version("QEMU emulator version 9.1\n"),
            Some((9, 1, 0))
        );
    }

    #[test]
    fn rejects_garbage_versions() {
        assert_eq!(parse_version(""), None);
        assert_eq!(parse_version("QEMU emulator version unknown"), None);
        assert_eq!(parse_version("hello world"), None);
        assert_eq!(parse_version("QEMU emulator version 99999999999.1.1"), None);
    }

    #[test]
    fn finds_installed_qemu_if_any() {
        match find_qemu(None) {
            Ok(info) => {
                assert!(info.version.0 >= 6, "{info:?}");
                assert!(info.version_string.contains("QEMU"));
            }
            Err(VmmError::QemuNotFound { .. }) => eprintln!("skipped: no QEMU on $PATH"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn explicit_missing_path_is_an_io_error() {
        let err = find_qemu(Some(Path::new("/nonexistent/qemu"))).unwrap_err();
        assert!(matches!(err, VmmError::Io { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/qemu"));
    }
}
