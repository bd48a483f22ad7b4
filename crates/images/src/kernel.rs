//! The kernel entry: Debian's cloud kernel package, unpacked to `vmlinuz` plus the few
//! modules the guest loads (virtio-mmio transport, console, block, EROFS, overlay, net),
//! with their dependency-first load order computed from each module's `.modinfo`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use object::{Object, ObjectSection};

use crate::error::ImageError;
use crate::host::{self, run};
use crate::recipe::{GUEST_MODULES, KERNEL_PACKAGE, NET_MODULES};

/// File name of the load-order list inside the kernel entry's `modules/` dir and the initramfs.
pub(crate) const LOAD_ORDER_FILE: &str = "load-order";
/// The image name in progress and error messages.
const IMAGE: &str = "kernel";
/// The same for the modules only a VM with a network loads.
pub(crate) const NET_LOAD_ORDER_FILE: &str = "load-order-net";

/// What a kernel build resolved, for the manifest.
#[derive(Debug, Clone)]
pub(crate) struct KernelBuild {
    pub package_version: String,
    pub kernel_release: String,
    pub load_order: Vec<String>,
    /// Loaded after `load_order` only when the VM has a network.
    pub net_load_order: Vec<String>,
}

/// The uncompressed ELF kernel QEMU boots through its PVH entry (see `vmlinux`).
pub(crate) const VMLINUX: &str = "vmlinux";

/// Downloads and unpacks the kernel package into `out` (`vmlinuz`, `modules/*.ko`,
/// `modules/load-order`), using `work` for scratch files.
pub(crate) fn build_kernel(
    work: &Path,
    out: &Path,
    progress: &dyn crate::BuildProgress,
) -> Result<KernelBuild, ImageError> {
    progress.stage(IMAGE, &format!("downloading {KERNEL_PACKAGE}"));
    let deb = download_deb(work, KERNEL_PACKAGE)?;
    let package_version = deb_version(&deb)?;

    progress.stage(IMAGE, "unpacking");
    let tree = work.join("pkg");
    run(
        IMAGE,
        "dpkg-deb -x",
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree),
    )?;

    let boot = tree.join("boot");
    let vmlinuz = host::find_one(&boot, "vmlinuz-", "")?.ok_or_else(|| {
        ImageError::step(
            IMAGE,
            "find vmlinuz",
            format!("no vmlinuz-* in {}", boot.display()),
        )
    })?;
    let kernel_release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .unwrap_or_default()
        .to_string();
    let bz = fs::read(&vmlinuz).map_err(ImageError::io("read", &vmlinuz))?;
    check_bzimage(&bz).map_err(|reason| ImageError::InvalidBinary {
        what: vmlinuz.display().to_string(),
        reason,
    })?;
    fs::write(out.join("vmlinuz"), &bz).map_err(ImageError::io("write", out.join("vmlinuz")))?;
    progress.stage(IMAGE, "extracting vmlinux for a PVH boot");
    let elf = crate::vmlinux::extract(&bz).map_err(|reason| ImageError::InvalidBinary {
        what: format!("{} (payload)", vmlinuz.display()),
        reason,
    })?;
    fs::write(out.join(VMLINUX), &elf).map_err(ImageError::io("write", out.join(VMLINUX)))?;

    progress.stage(IMAGE, "selecting modules");
    let mod_root = tree.join("lib/modules").join(&kernel_release);
    let index = index_modules(&mod_root.join("kernel"))?;
    let base = module_closure(&index, GUEST_MODULES)?;
    let net = module_closure(&index, NET_MODULES)?;
    let order = ordered(GUEST_MODULES, &base)?;
    // The network's modules, less those every boot loads anyway.
    let net_order: Vec<String> = ordered(NET_MODULES, &net)?
        .into_iter()
        .filter(|m| !base.contains_key(m))
        .collect();

    let mod_out = out.join("modules");
    fs::create_dir_all(&mod_out).map_err(ImageError::io("create dir", &mod_out))?;
    for name in order.iter().chain(&net_order) {
        let (raw, _) = base.get(name).or_else(|| net.get(name)).ok_or_else(|| {
            ImageError::step(IMAGE, "module load order", format!("{name} was not read"))
        })?;
        let path = mod_out.join(format!("{name}.ko"));
        fs::write(&path, raw).map_err(ImageError::io("write", &path))?;
    }
    for (file, names) in [(LOAD_ORDER_FILE, &order), (NET_LOAD_ORDER_FILE, &net_order)] {
        let list: String = names.iter().map(|n| format!("{n}.ko\n")).collect();
        let path = mod_out.join(file);
        fs::write(&path, list).map_err(ImageError::io("write", &path))?;
    }

    Ok(KernelBuild {
        package_version,
        kernel_release,
        load_order: order,
        net_load_order: net_order,
    })
}

/// A module's raw bytes and the modules it depends on.
type ModuleInfo = (Vec<u8>, Vec<String>);

/// `roots` and everything they depend on (read from each module's `depends=`), which may
/// name modules not in our lists (e.g. erofs -> libcrc32c) that must be shipped and loaded
/// first.
fn module_closure(
    index: &BTreeMap<String, PathBuf>,
    roots: &[&str],
) -> Result<BTreeMap<String, ModuleInfo>, ImageError> {
    let mut infos = BTreeMap::new();
    let mut queue: Vec<String> = roots.iter().map(|m| m.to_string()).collect();
    while let Some(name) = queue.pop() {
        if infos.contains_key(&name) {
            continue;
        }
        let path = index.get(&name).ok_or_else(|| {
            ImageError::step(
                IMAGE,
                "find module",
                format!("module {name} is not in {KERNEL_PACKAGE}"),
            )
        })?;
        let raw = read_module(path)?;
        let deps = module_depends(&raw).map_err(|reason| {
            ImageError::step(
                IMAGE,
                "read .modinfo",
                format!("{}: {reason}", path.display()),
            )
        })?;
        queue.extend(deps.iter().cloned());
        infos.insert(name, (raw, deps));
    }
    Ok(infos)
}

/// The load order of a closure, `roots` preferred in their given order.
fn ordered(
    roots: &[&str],
    closure: &BTreeMap<String, ModuleInfo>,
) -> Result<Vec<String>, ImageError> {
    let deps: BTreeMap<String, Vec<String>> = closure
        .iter()
        .map(|(n, (_, d))| (n.clone(), d.clone()))
        .collect();
    let wanted: Vec<String> = roots.iter().map(|m| m.to_string()).collect();
    load_order(&wanted, &deps).map_err(|e| ImageError::step(IMAGE, "module load order", e))
}

/// `apt-get download`s `package` into `dir` and returns the .deb path. Runs `apt-get update`
/// once and retries if the first attempt fails (typically: empty package lists).
pub(crate) fn download_deb(dir: &Path, package: &str) -> Result<PathBuf, ImageError> {
    let attempt = || {
        run(
            "kernel",
            "apt-get download",
            Command::new("apt-get")
                .arg("download")
                .arg(package)
                .current_dir(dir),
        )
    };
    if let Err(first) = attempt() {
        let _ = run(
            "kernel",
            "apt-get update",
            Command::new("apt-get").arg("update"),
        );
        if let Err(second) = attempt() {
            return Err(ImageError::Download {
                package: package.to_string(),
                version: "(apt candidate)".into(),
                how: "apt-get download".into(),
                detail: format!("{second} (before apt-get update: {first})"),
            });
        }
    }
    host::find_one(dir, &format!("{package}_"), ".deb")?.ok_or_else(|| ImageError::Download {
        package: package.to_string(),
        version: "(apt candidate)".into(),
        how: "apt-get download".into(),
        detail: format!(
            "apt-get succeeded but no {package}_*.deb appeared in {}",
            dir.display()
        ),
    })
}

/// The version field of a .deb, from its file name (`name_version_arch.deb`, with `:` encoded as `%3a`).
fn deb_version(deb: &Path) -> Result<String, ImageError> {
    let name = deb.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let mut parts = name.trim_end_matches(".deb").split('_');
    match (parts.next(), parts.next()) {
        (Some(_), Some(v)) => Ok(v.replace("%3a", ":")),
        _ => Err(ImageError::step(
            "kernel",
            "parse .deb name",
            format!("unexpected file name {name}"),
        )),
    }
}

/// Checks the Linux boot protocol magic "HdrS" at offset 0x202 of a bzImage.
pub(crate) fn check_bzimage(bytes: &[u8]) -> Result<(), String> {
    match bytes.get(0x202..0x206) {
        Some(b"HdrS") => Ok(()),
        Some(_) => Err("no \"HdrS\" boot header at 0x202: not a bzImage".into()),
        None => Err(format!("{} bytes: too small for a bzImage", bytes.len())),
    }
}

/// Maps module name (file stem, `-` normalised to `_` as the kernel does) to its path.
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ImageError> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).map_err(ImageError::io("read dir", &d))? {
            let entry = entry.map_err(ImageError::io("read dir", &d))?;
            let path = entry.path();
            let ft = entry.file_type().map_err(ImageError::io("stat", &path))?;
            if ft.is_dir() {
                stack.push(path);
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let stem = [".ko", ".ko.xz", ".ko.zst"]
                .iter()
                .find_map(|ext| name.strip_suffix(ext));
            if let Some(stem) = stem {
                index.insert(stem.replace('-', "_"), path);
            }
        }
    }
    Ok(index)
}

/// Reads a module file, decompressing `.ko.xz` / `.ko.zst` (the guest's init loads plain `.ko`).
fn read_module(path: &Path) -> Result<Vec<u8>, ImageError> {
    let raw = fs::read(path).map_err(ImageError::io("read", path))?;
    let name = path.to_string_lossy();
    let bad = |e: String| ImageError::step("kernel", "decompress module", format!("{name}: {e}"));
    if name.ends_with(".xz") {
        let mut out = Vec::new();
        lzma_rs::xz_decompress(&mut &raw[..], &mut out).map_err(|e| bad(format!("{e:?}")))?;
        Ok(out)
    } else if name.ends_with(".zst") {
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(&raw[..])
            .map_err(|e| bad(e.to_string()))?
            .read_to_end(&mut out)
            .map_err(|e| bad(e.to_string()))?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

/// The `depends=` list of a module's `.modinfo` section (NUL-separated `key=value` strings).
pub(crate) fn module_depends(elf_bytes: &[u8]) -> Result<Vec<String>, String> {
    let file = object::File::parse(elf_bytes).map_err(|e| format!("not an ELF object: {e}"))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or("no .modinfo section")?;
    let data = section.data().map_err(|e| e.to_string())?;
    Ok(parse_depends(data))
}

pub(crate) fn parse_depends(modinfo: &[u8]) -> Vec<String> {
    modinfo
        .split(|b| *b == 0)
        .filter_map(|kv| kv.strip_prefix(b"depends="))
        .flat_map(|v| {
            String::from_utf8_lossy(v)
                .split(',')
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .map(|d| d.trim().replace('-', "_"))
        .filter(|d| !d.is_empty())
        .collect()
}

/// Dependency-first order over `deps`' keys: each module after everything it depends on.
/// Ties keep the order of `wanted` (then name order for pulled-in dependencies), so the
/// result is stable. Fails on a cycle or a dependency missing from `deps`.
pub(crate) fn load_order(
    wanted: &[String],
    deps: &BTreeMap<String, Vec<String>>,
) -> Result<Vec<String>, String> {
    fn visit(
        name: &str,
        deps: &BTreeMap<String, Vec<String>>,
        done: &mut BTreeSet<String>,
        on_path: &mut Vec<String>,
        order: &mut Vec<String>,
    ) -> Result<(), String> {
        if done.contains(name) {
            return Ok(());
        }
        if on_path.iter().any(|n| n == name) {
            return Err(format!(
                "module dependency cycle: {} -> {name}",
                on_path.join(" -> ")
            ));
        }
        let ds = deps
            .get(name)
            .ok_or_else(|| format!("module {name} is needed but unknown"))?;
        on_path.push(name.to_string());
        for d in ds {
            visit(d, deps, done, on_path, order)?;
        }
        on_path.pop();
        done.insert(name.to_string());
        order.push(name.to_string());
        Ok(())
    }
    let mut done = BTreeSet::new();
    let mut order = Vec::new();
    let roots = wanted
        .iter()
        .cloned()
        .chain(deps.keys().cloned())
        .collect::<Vec<_>>();
    for name in &roots {
        visit(name, deps, &mut done, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deps(pairs: &[(&str, &[&str])]) -> BTreeMap<String, Vec<String>> {
        pairs
            .iter()
            .map(|(n, ds)| (n.to_string(), ds.iter().map(|d| d.to_string()).collect()))
            .collect()
    }

    fn wanted(names: &[&str]) -> Vec<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn parses_depends_from_modinfo() {
        let modinfo = b"license=GPL\0depends=virtio,virtio_ring\0intree=Y\0name=virtio_blk\0";
        assert_eq!(parse_depends(modinfo), ["virtio", "virtio_ring"]);
        assert!(parse_depends(b"depends=\0name=x\0").is_empty());
        assert_eq!(
            parse_depends(b"depends=crc32c-generic\0"),
            ["crc32c_generic"]
        );
    }

    #[test]
    fn dependencies_come_first() {
        let d = deps(&[
            ("virtio_blk", &["virtio", "virtio_ring"]),
            ("virtio", &["virtio_ring"]),
            ("virtio_ring", &[]),
            ("erofs", &["libcrc32c"]),
            ("libcrc32c", &[]),
            ("virtio_net", &["virtio_ring", "virtio", "net_failover"]),
            ("net_failover", &["failover"]),
            ("failover", &[]),
        ]);
        let order = load_order(&wanted(&["virtio_blk", "erofs", "virtio_net"]), &d).unwrap();
        let pos = |n: &str| order.iter().position(|x| x == n).unwrap();
        assert_eq!(order.len(), d.len());
        for (name, ds) in &d {
            for dep in ds {
                assert!(pos(dep) < pos(name), "{dep} must precede {name}: {order:?}");
            }
        }
        assert_eq!(
            order,
            [
                "virtio_ring",
                "virtio",
                "virtio_blk",
                "libcrc32c",
                "erofs",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
    }

    #[test]
    fn cycle_and_unknown_are_errors() {
        let d = deps(&[("a", &["b"]), ("b", &["a"])]);
        assert!(load_order(&wanted(&["a"]), &d)
            .unwrap_err()
            .contains("cycle"));
        let d = deps(&[("a", &["zzz"])]);
        assert!(load_order(&wanted(&["a"]), &d).unwrap_err().contains("zzz"));
    }

    #[test]
    fn module_depends_needs_an_elf_with_modinfo() {
        assert!(module_depends(b"not an elf").unwrap_err().contains("ELF"));
        // A host executable is ELF but has no .modinfo.
        if let Ok(ls) = fs::read("/bin/ls") {
            assert!(module_depends(&ls).unwrap_err().contains(".modinfo"));
        }
    }

    #[test]
    fn bzimage_magic() {
        let mut img = vec![0u8; 0x300];
        assert!(check_bzimage(&img).is_err());
        img[0x202..0x206].copy_from_slice(b"HdrS");
        check_bzimage(&img).unwrap();
        assert!(check_bzimage(b"short").is_err());
    }
}
