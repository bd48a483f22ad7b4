//! The initramfs: the static guest binaries and the kernel entry's modules in an
//! uncompressed newc cpio, laid out as docs/CONTRACTS.md specifies.

use std::fs;
use std::io::BufWriter;
use std::path::Path;

use crate::cpio::CpioWriter;
use crate::elf::{check_binary, Linking};
use crate::error::ImageError;
use crate::kernel::{LOAD_ORDER_FILE, NET_LOAD_ORDER_FILE};

/// Writes `out` from the guest binaries and `modules_dir` (a kernel entry's `modules/`).
/// Returns the module file names in load order (those every boot loads, then the network's).
pub(crate) fn build_initramfs(
    init: &[u8],
    agent: &[u8],
    modules_dir: &Path,
    out: &Path,
) -> Result<Vec<String>, ImageError> {
    // Checked before packing: a dynamic or foreign binary would only show up as a guest panic.
    check_binary("guest-init", init, Linking::Static)?;
    check_binary("guest-agent", agent, Linking::Static)?;

    let read_list = |file: &str| -> Result<(String, Vec<String>), ImageError> {
        let path = modules_dir.join(file);
        let text = fs::read_to_string(&path).map_err(ImageError::io("read", &path))?;
        let names = text
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        Ok((text, names))
    };
    let lists = [read_list(LOAD_ORDER_FILE)?, read_list(NET_LOAD_ORDER_FILE)?];

    let file = fs::File::create(out).map_err(ImageError::io("create", out))?;
    let write_err = ImageError::io("write", out);
    let mut w = CpioWriter::new(BufWriter::new(file));
    let result = (|| -> std::io::Result<()> {
        // Parents before children: the kernel's unpacker does not create missing parents.
        for dir in [
            "dev",
            "proc",
            "sys",
            "newroot",
            "tmp",
            "sbin",
            "lib",
            "lib/modules",
            "lib/modules/sbx",
        ] {
            w.dir(dir, if dir == "tmp" { 0o1777 } else { 0o755 })?;
        }
        w.file("init", 0o755, init)?;
        w.file("sbin/sbx-agent", 0o755, agent)?;
        for ((text, names), file) in lists.iter().zip([LOAD_ORDER_FILE, NET_LOAD_ORDER_FILE]) {
            for name in names {
                let data = fs::read(modules_dir.join(name))?;
                w.file(&format!("lib/modules/sbx/{name}"), 0o644, &data)?;
            }
            w.file(&format!("lib/modules/sbx/{file}"), 0o644, text.as_bytes())?;
        }
        Ok(())
    })();
    result.map_err(write_err)?;
    w.finish().map_err(ImageError::io("write", out))?;
    let [(_, base), (_, net)] = lists;
    Ok(base.into_iter().chain(net).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::decode;

    #[test]
    fn layout_matches_contract() {
        let tmp = tempfile::tempdir().unwrap();
        let mods = tmp.path().join("modules");
        fs::create_dir_all(&mods).unwrap();
        fs::write(mods.join("virtio_ring.ko"), b"ring").unwrap();
        fs::write(mods.join("virtio.ko"), b"virtio").unwrap();
        fs::write(mods.join("virtio_net.ko"), b"net").unwrap();
        fs::write(mods.join(LOAD_ORDER_FILE), "virtio_ring.ko\nvirtio.ko\n").unwrap();
        fs::write(mods.join(NET_LOAD_ORDER_FILE), "virtio_net.ko\n").unwrap();
        let (init, agent) = crate::guest_binaries();
        let out = tmp.path().join("initramfs.cpio");
        let order = build_initramfs(init, agent, &mods, &out).unwrap();
        assert_eq!(order, ["virtio_ring.ko", "virtio.ko", "virtio_net.ko"]);
        let bytes = fs::read(&out).unwrap();
        let entries = decode(&bytes).unwrap();
        let find = |n: &str| {
            entries
                .iter()
                .find(|e| e.name == n)
                .unwrap_or_else(|| panic!("{n} missing"))
        };
        assert_eq!(find("init").data, init);
        assert_eq!(find("init").mode, 0o100755);
        assert_eq!(find("sbin/sbx-agent").data, agent);
        assert_eq!(find("lib/modules/sbx/virtio.ko").data, b"virtio");
        assert_eq!(
            find("lib/modules/sbx/load-order").data,
            b"virtio_ring.ko\nvirtio.ko\n"
        );
        assert_eq!(
            find("lib/modules/sbx/load-order-net").data,
            b"virtio_net.ko\n"
        );
        for d in ["dev", "proc", "sys", "newroot", "tmp"] {
            assert_eq!(find(d).mode & 0o170000, 0o040000, "{d} is a dir");
        }
        // Every entry's parent precedes it.
        for (i, e) in entries.iter().enumerate() {
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                assert!(
                    entries[..i].iter().any(|p| p.name == parent),
                    "{} before its parent",
                    e.name
                );
            }
        }
    }

    #[test]
    fn rejects_non_static_guest_binary() {
        let tmp = tempfile::tempdir().unwrap();
        let err = build_initramfs(b"not elf", b"x", tmp.path(), &tmp.path().join("o")).unwrap_err();
        assert!(matches!(err, ImageError::InvalidBinary { .. }), "{err}");
    }
}
