//! Checks that a binary headed for the guest can run there: a 64-bit little-endian x86_64
//! ELF executable, and for the initramfs binaries also static (no program interpreter,
//! no shared library dependencies), since the initramfs has no libc to load.

use object::elf;
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::Endianness;

use crate::error::ImageError;

/// What the guest needs from a binary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Linking {
    /// Must be self-contained: no `PT_INTERP`, no `DT_NEEDED`.
    Static,
    /// May use the root filesystem's dynamic loader.
    Any,
}

/// Fails with [`ImageError::InvalidBinary`] unless `bytes` is an x86_64 ELF executable
/// (and static, if asked).
pub(crate) fn check_binary(what: &str, bytes: &[u8], linking: Linking) -> Result<(), ImageError> {
    let invalid = |reason: String| ImageError::InvalidBinary {
        what: what.to_string(),
        reason,
    };
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err(invalid("not an ELF file (bad magic)".into()));
    }
    if bytes.get(4) // EI_CLASS
        != Some(&elf::ELFCLASS64)
    {
        return Err(invalid("not a 64-bit ELF".into()));
    }
    let header = elf::FileHeader64::<Endianness>::parse(bytes)
        .map_err(|e| invalid(format!("unparsable ELF header: {e}")))?;
    let endian = header
        .endian()
        .map_err(|e| invalid(format!("bad ELF byte order: {e}")))?;
    if endian != Endianness::Little {
        return Err(invalid("big-endian ELF".into()));
    }
    let machine = header.e_machine(endian);
    if machine != elf::EM_X86_64 {
        return Err(invalid(format!(
            "architecture e_machine={machine}, expected x86_64 ({})",
            elf::EM_X86_64
        )));
    }
    let kind = header.e_type(endian);
    if kind != elf::ET_EXEC && kind != elf::ET_DYN {
        return Err(invalid(format!("ELF type {kind} is not an executable")));
    }
    if linking == Linking::Any {
        return Ok(());
    }
    let phdrs = header
        .program_headers(endian, bytes)
        .map_err(|e| invalid(format!("unparsable program headers: {e}")))?;
    for ph in phdrs {
        match ph.p_type(endian) {
            elf::PT_INTERP => {
                return Err(invalid(
                    "dynamically linked (has PT_INTERP); build with RUSTFLAGS='-C target-feature=+crt-static'".into(),
                ))
            }
            elf::PT_DYNAMIC => {
                if let Ok(Some(dyns)) = ph.dynamic(endian, bytes) {
                    if dyns.iter().any(|d| d.tag32(endian) == Some(elf::DT_NEEDED)) {
                        return Err(invalid("needs shared libraries (DT_NEEDED)".into()));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header (no program headers) for the given machine.
    fn elf_header(machine: u16) -> Vec<u8> {
        let mut h = vec![0u8; 64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = elf::ELFCLASS64;
        h[5] = elf::ELFDATA2LSB;
        h[6] = elf::EV_CURRENT;
        h[16..18].copy_from_slice(&elf::ET_EXEC.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
        h[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
        h
    }

    #[test]
    fn rejects_non_elf() {
        let err = check_binary("blob", b"#!/bin/sh\necho hi\n", Linking::Any).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidBinary { ref reason, .. } if reason.contains("not an ELF")),
            "{err}"
        );
    }

    #[test]
    fn rejects_aarch64() {
        let err = check_binary("arm", &elf_header(elf::EM_AARCH64), Linking::Any).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidBinary { ref reason, .. } if reason.contains("architecture")),
            "{err}"
        );
    }

    #[test]
    fn accepts_minimal_x86_64() {
        check_binary("x86", &elf_header(elf::EM_X86_64), Linking::Static).unwrap();
    }

    #[test]
    fn rejects_dynamic_when_static_required() {
        // A real dynamically linked x86_64 executable from the host.
        let Ok(ls) = std::fs::read("/bin/ls") else {
            return;
        };
        check_binary("/bin/ls", &ls, Linking::Any).unwrap();
        let err = check_binary("/bin/ls", &ls, Linking::Static).unwrap_err();
        assert!(
            matches!(err, ImageError::InvalidBinary { ref reason, .. } if reason.contains("PT_INTERP")),
            "{err}"
        );
    }

    #[test]
    fn embedded_guest_binaries_are_static_x86_64() {
        let (init, agent) = crate::guest_binaries();
        check_binary("guest-init", init, Linking::Static).unwrap();
        check_binary("guest-agent", agent, Linking::Static).unwrap();
    }
}
