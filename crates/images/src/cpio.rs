//! A writer for the "newc" cpio format the kernel unpacks as an initramfs.
//!
//! Written by hand rather than with a crate: the format is a 110-byte ASCII header plus
//! 4-byte padding, and we need full control over every field (fixed mtime and inode numbers
//! so the same inputs give byte-identical archives, explicit modes, directories) which is
//! about as much code as adapting a crate's builder.

use std::io::{self, Write};

const MAGIC: &[u8; 6] = b"070701";
const TRAILER: &str = "TRAILER!!!";

/// File type bits as stored in the cpio `mode` field.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;

/// Streams a newc archive. Entries are written in the order they are added; a parent
/// directory must be added before its children (the kernel creates them in order).
pub(crate) struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
}

impl<W: Write> CpioWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        CpioWriter { out, next_ino: 1 }
    }

    /// Adds an empty directory (`path` without a leading `/`).
    pub(crate) fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, &[])
    }

    /// Adds a regular file owned by root.
    pub(crate) fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, data)
    }

    /// Writes the trailer and returns the underlying writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.next_ino = 0;
        self.entry_raw(TRAILER, 0, 0, 1, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path == TRAILER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad cpio path {path:?}"),
            ));
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.entry_raw(path, ino, mode, nlink, data)
    }

    fn entry_raw(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: file over 4 GiB"),
            )
        })?;
        let namesize = name.len() as u32 + 1;
        let fields: [u32; 13] = [
            ino, mode, 0, // uid
            0, // gid
            nlink, 0, // mtime: fixed for reproducible archives
            size, 0, 0, 0, 0, namesize, 0, // check (unused by newc)
        ];
        let mut header = Vec::with_capacity(110 + name.len() + 4);
        header.extend_from_slice(MAGIC);
        for f in fields {
            header.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        header.extend_from_slice(name.as_bytes());
        header.push(0);
        pad4(&mut header, 0);
        self.out.write_all(&header)?;
        self.out.write_all(data)?;
        let pad = (4 - data.len() % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad])?;
        Ok(())
    }
}

/// Pads `buf` (whose first byte is at archive offset `base`) to a multiple of 4.
fn pad4(buf: &mut Vec<u8>, base: usize) {
    let pad = (4 - (base + buf.len()) % 4) % 4;
    buf.resize(buf.len() + pad, 0);
}

/// One decoded entry, for tests and for verifying an archive we wrote.
#[cfg(test)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub name: String,
    pub mode: u32,
    pub data: Vec<u8>,
}

/// Decodes a newc archive up to its trailer.
#[cfg(test)]
pub(crate) fn decode(mut bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let mut entries = Vec::new();
    let mut offset = 0usize;
    loop {
        if bytes.len() < 110 || &bytes[..6] != MAGIC {
            return Err(format!("bad header at offset {offset}"));
        }
        let field = |i: usize| -> Result<u32, String> {
            let s =
                std::str::from_utf8(&bytes[6 + 8 * i..14 + 8 * i]).map_err(|e| e.to_string())?;
            u32::from_str_radix(s, 16).map_err(|e| e.to_string())
        };
        let mode = field(1)?;
        let size = field(6)? as usize;
        let namesize = field(11)? as usize;
        let name_end = 110 + namesize;
        let name = std::str::from_utf8(&bytes[110..name_end - 1])
            .map_err(|e| e.to_string())?
            .to_string();
        if bytes[name_end - 1] != 0 {
            return Err(format!("name of {name} not NUL-terminated"));
        }
        let data_start = name_end.next_multiple_of(4);
        let data_end = data_start + size;
        if name == TRAILER {
            return Ok(entries);
        }
        let data = bytes
            .get(data_start..data_end)
            .ok_or("truncated data")?
            .to_vec();
        entries.push(Entry { name, mode, data });
        let next = data_end.next_multiple_of(4);
        offset += next;
        bytes = &bytes[next..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("dev", 0o755).unwrap();
        w.file("/init", 0o755, b"#!binary").unwrap();
        w.dir("lib/modules", 0o755).unwrap();
        w.file("lib/modules/sbx/load-order", 0o644, b"a.ko\nbb.ko\n")
            .unwrap();
        w.file("empty", 0o600, b"").unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let entries = decode(&bytes).unwrap();
        let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "dev",
                "init",
                "lib/modules",
                "lib/modules/sbx/load-order",
                "empty"
            ]
        );
        assert_eq!(entries[0].mode, 0o040755);
        assert_eq!(entries[1].mode, 0o100755);
        assert_eq!(entries[1].data, b"#!binary");
        assert_eq!(entries[3].data, b"a.ko\nbb.ko\n");
        assert!(entries[4].data.is_empty());
    }

    #[test]
    fn deterministic() {
        let build = || {
            let mut w = CpioWriter::new(Vec::new());
            w.file("x", 0o644, b"abc").unwrap();
            w.finish().unwrap()
        };
        assert_eq!(build(), build());
    }

    #[test]
    fn rejects_empty_and_trailer_names() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("TRAILER!!!", 0o644, b"").is_err());
    }
}
