//! Extracting the uncompressed kernel (`vmlinux`) from a bzImage so QEMU can boot it
//! directly through its PVH entry point.
//!
//! Why: booting the bzImage makes the guest decompress the kernel itself, which under
//! software emulation costs most of a second here; a PVH boot of the ELF skips that. No
//! crate unpacks a bzImage, so the setup header is read by hand (a few fixed offsets of the
//! Linux x86 boot protocol); the LZ4 blocks themselves are decoded by `lz4_flex`.

/// Offsets in the x86 boot protocol setup header.
const SETUP_SECTS: usize = 0x1f1;
const PAYLOAD_OFFSET: usize = 0x248;
const PAYLOAD_LENGTH: usize = 0x24c;
/// Magic number of the LZ4 "legacy" frame format the kernel uses.
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// Every legacy block decompresses to at most 8 MiB.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// ELF note type of the PVH entry point, under the note name "Xen".
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at + 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Returns the ELF kernel inside a bzImage whose payload is LZ4-compressed.
pub(crate) fn extract(bz: &[u8]) -> Result<Vec<u8>, String> {
    let setup_sects = match *bz.get(SETUP_SECTS).ok_or("truncated setup header")? {
        0 => 4, // the boot protocol's historical meaning of 0
        n => n as usize,
    };
    let offset = u32_at(bz, PAYLOAD_OFFSET).ok_or("truncated setup header")? as usize;
    let length = u32_at(bz, PAYLOAD_LENGTH).ok_or("truncated setup header")? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    let payload = bz.get(start..start + length).ok_or_else(|| {
        format!(
            "payload {start}+{length} lies outside the {}-byte image",
            bz.len()
        )
    })?;
    if u32_at(payload, 0) != Some(LZ4_LEGACY_MAGIC) {
        return Err("kernel payload is not LZ4 (legacy frame); cannot extract vmlinux".into());
    }
    // The kernel build appends the uncompressed size after the compressed stream.
    let expected =
        u32_at(payload, payload.len().saturating_sub(4)).ok_or("payload too short")? as usize;
    let stream = &payload[4..payload.len() - 4];
    let mut out = Vec::with_capacity(expected);
    let mut at = 0;
    while at + 4 <= stream.len() {
        let size = u32_at(stream, at).ok_or("truncated block header")?;
        at += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue; // concatenated legacy frames
        }
        let block = stream
            .get(at..at + size as usize)
            .ok_or("LZ4 block runs past the payload")?;
        at += size as usize;
        let mut chunk = lz4_flex::block::decompress(block, LZ4_LEGACY_BLOCK)
            .map_err(|e| format!("LZ4 block at {}: {e}", at - size as usize))?;
        out.append(&mut chunk);
    }
    if out.len() != expected {
        return Err(format!(
            "decompressed {} bytes, the image says {expected}",
            out.len()
        ));
    }
    if !has_pvh_entry(&out)? {
        return Err("the kernel has no PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)".into());
    }
    Ok(out)
}

/// True when the ELF carries the PVH entry-point note QEMU needs to boot it directly.
pub(crate) fn has_pvh_entry(elf: &[u8]) -> Result<bool, String> {
    use object::read::elf::{ElfFile64, ProgramHeader};
    let file = ElfFile64::<object::Endianness>::parse(elf)
        .map_err(|e| format!("not an ELF kernel: {e}"))?;
    let endian = file.endian();
    for ph in file.elf_program_headers() {
        let Ok(Some(mut notes)) = ph.notes(endian, elf) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bzImage-shaped buffer around an LZ4 legacy payload of `body`.
    fn fake_bzimage(body: &[u8], block: usize) -> Vec<u8> {
        let mut payload = LZ4_LEGACY_MAGIC.to_le_bytes().to_vec();
        for chunk in body.chunks(block) {
            let c = lz4_flex::block::compress(chunk);
            payload.extend((c.len() as u32).to_le_bytes());
            payload.extend(c);
        }
        payload.extend((body.len() as u32).to_le_bytes());
        let mut bz = vec![0u8; 0x400];
        bz[SETUP_SECTS] = 1; // protected-mode code starts at 1024
        bz[PAYLOAD_OFFSET..PAYLOAD_OFFSET + 4].copy_from_slice(&16u32.to_le_bytes());
        bz[PAYLOAD_LENGTH..PAYLOAD_LENGTH + 4]
            .copy_from_slice(&(payload.len() as u32).to_le_bytes());
        bz.extend(vec![0u8; 16]);
        bz.extend(payload);
        bz.extend(b"trailing setup data");
        bz
    }

    #[test]
    fn decodes_multi_block_payload_then_checks_elf() {
        let body: Vec<u8> = (0..100_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        let bz = fake_bzimage(&body, 65_536);
        // Not an ELF: decoding worked, the PVH check is what refuses it.
        let err = extract(&bz).unwrap_err();
        assert!(err.contains("not an ELF"), "{err}");
    }

    #[test]
    fn refuses_other_compressions_and_truncation() {
        let mut bz = fake_bzimage(b"hello", 16);
        let start = 1024 + 16;
        bz[start] ^= 0xff;
        assert!(extract(&bz).unwrap_err().contains("not LZ4"));
        assert!(extract(&[0u8; 16]).is_err());
        let good = fake_bzimage(b"hello", 16);
        assert!(extract(&good[..good.len() - 30]).is_err());
    }

    #[test]
    fn pvh_note_is_required() {
        assert!(has_pvh_entry(b"\x7fELF").is_err());
        // The test binary itself is an ELF without a PVH note.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert_eq!(has_pvh_entry(&me), Ok(false));
    }
}
