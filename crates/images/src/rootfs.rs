//! Per-language root filesystems: a Debian bookworm root made by `mmdebstrap`, plus the
//! language runtime from its registry (uv wheel from PyPI, Bun from npm), the unprivileged
//! `user`, trimmed of docs and apt state, packed into an uncompressed EROFS image.
//!
//! Uncompressed EROFS: under TCG the guest's decompression is emulated code, while reads
//! of an uncompressed image come from the host page cache almost for free; PLATFORM-NOTES
//! found disk reads are not what makes Python start slowly. lz4hc would roughly halve the
//! file (57 → 33 MiB for Python) but adds in-guest CPU on every cold page, so we keep size
//! second to start-up latency.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use protocol::Language;

use crate::elf::{check_binary, Linking};
use crate::error::ImageError;
use crate::host::{self, run};
use crate::recipe::{
    rootfs_packages, Kind, BUN_PACKAGE, BUN_VERSION, MKFS_EROFS_ARGS, SUITE, UV_VERSION,
};

/// What a rootfs build resolved, for the manifest.
#[derive(Debug, Clone, Default)]
pub(crate) struct RootfsBuild {
    pub resolved: Vec<(String, String)>,
    pub tree_bytes: u64,
    pub mkfs_seconds: f64,
}

/// Builds `out/rootfs.erofs` for `lang`, using `work` (removed by the caller) for the tree.
pub(crate) fn build_rootfs(
    lang: Language,
    work: &Path,
    out: &Path,
    progress: &dyn crate::BuildProgress,
) -> Result<RootfsBuild, ImageError> {
    let image = Kind::Rootfs(lang).name();
    let image = image.as_str();
    let mut build = RootfsBuild::default();
    let root = work.join("root");
    let pkgs = rootfs_packages(lang);

    progress.stage(image, &format!("mmdebstrap {SUITE} + {}", pkgs.join(",")));
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg("--quiet")
        .arg("--variant=essential")
        .arg("--mode=root")
        .arg(format!("--include={}", pkgs.join(",")))
        // Do not unpack docs in the first place (they are also deleted below, for
        // anything dpkg's filters miss); saves I/O during the build.
        .arg("--dpkgopt=path-exclude=/usr/share/man/*")
        .arg("--dpkgopt=path-exclude=/usr/share/doc/*")
        .arg("--dpkgopt=path-exclude=/usr/share/info/*")
        .arg(SUITE)
        .arg(&root);
    run(image, "mmdebstrap", &mut cmd)?;
    build.resolved.extend(debian_versions(&root, &pkgs));

    match lang {
        Language::Python => {
            progress.stage(image, &format!("downloading uv {UV_VERSION} wheel"));
            install_uv(work, &root)?;
            build.resolved.push(("uv".into(), UV_VERSION.into()));
            let python = resolve_in_root(&root, "usr/bin/python3")?;
            let bytes = fs::read(&python).map_err(ImageError::io("read", &python))?;
            check_binary("/usr/bin/python3", &bytes, Linking::Any)?;
            progress.stage(image, "precompiling the standard library (.pyc)");
            // erofs-utils drops timestamps, so timestamp-checked .pyc would all look stale.
            // `-f`: Debian's postinst already wrote timestamp-based .pyc, which compileall
            // would otherwise consider up to date and keep.
            run(
                image,
                "compileall",
                Command::new("chroot").arg(&root).args([
                    "python3",
                    "-m",
                    "compileall",
                    "-q",
                    "-f",
                    "--invalidation-mode",
                    "unchecked-hash",
                    "/usr/lib/python3.11",
                ]),
            )?;
            check_pyc_unchecked_hash(&root.join("usr/lib/python3.11/__pycache__"))?;
        }
        Language::Javascript => {
            progress.stage(image, &format!("downloading {BUN_PACKAGE}@{BUN_VERSION}"));
            install_bun(work, &root)?;
            build
                .resolved
                .push((BUN_PACKAGE.into(), BUN_VERSION.into()));
        }
        Language::Raw => {}
    }

    progress.stage(image, "adding user, trimming");
    add_user(&root)?;
    name_the_host(&root)?;
    point_resolver(&root)?;
    trim(&root)?;
    build.tree_bytes = host::disk_size(&root)?;

    progress.stage(
        image,
        &format!("mkfs.erofs ({} MiB tree)", build.tree_bytes >> 20),
    );
    let started = std::time::Instant::now();
    let target = out.join("rootfs.erofs");
    run(
        image,
        "mkfs.erofs",
        Command::new("mkfs.erofs")
            .arg("--quiet")
            .args(MKFS_EROFS_ARGS)
            .arg(&target)
            .arg(&root),
    )?;
    build.mkfs_seconds = started.elapsed().as_secs_f64();
    // The tree is ~200 MB: free it now rather than when the whole temp dir goes.
    fs::remove_dir_all(&root).map_err(ImageError::io("remove", &root))?;
    Ok(build)
}

/// Fails unless the stdlib's `.pyc` in `dir` are unchecked-hash based (PEP 552 flags == 1):
/// timestamp-based ones would be recompiled (and fail to write) on every guest start.
fn check_pyc_unchecked_hash(dir: &Path) -> Result<(), ImageError> {
    let path = dir.join("os.cpython-311.pyc");
    let bytes = fs::read(&path).map_err(ImageError::io("read", &path))?;
    match bytes.get(4..8) {
        Some([1, 0, 0, 0]) => Ok(()),
        other => Err(ImageError::step(
            "rootfs-python",
            "check .pyc invalidation mode",
            format!(
                "{}: flags {other:?}, expected unchecked-hash [1, 0, 0, 0]",
                path.display()
            ),
        )),
    }
}

/// `Package=version` for the packages we asked for, read from the root's dpkg status file.
fn debian_versions(root: &Path, pkgs: &[&str]) -> Vec<(String, String)> {
    let Ok(status) = fs::read_to_string(root.join("var/lib/dpkg/status")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for para in status.split("\n\n") {
        let field = |name: &str| {
            para.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        if let (Some(p), Some(v)) = (field("Package:"), field("Version:")) {
            if pkgs.contains(&p.as_str()) || p.starts_with("python3.") || p == "libc6" {
                out.push((p, v));
            }
        }
    }
    out.sort();
    out
}

/// Resolves `rel` inside `root`, following symlinks as the guest would (absolute targets
/// are relative to `root`), so we never read a host file.
fn resolve_in_root(root: &Path, rel: &str) -> Result<PathBuf, ImageError> {
    let mut current = PathBuf::from(rel);
    for _ in 0..16 {
        let full = root.join(&current);
        let meta = fs::symlink_metadata(&full).map_err(ImageError::io("stat", &full))?;
        if !meta.file_type().is_symlink() {
            return Ok(full);
        }
        let target = fs::read_link(&full).map_err(ImageError::io("readlink", &full))?;
        current = if target.is_absolute() {
            target.strip_prefix("/").unwrap_or(&target).to_path_buf()
        } else {
            current.parent().map(|p| p.join(&target)).unwrap_or(target)
        };
    }
    Err(ImageError::step(
        "rootfs",
        "resolve symlink",
        format!("too many symlinks at {rel}"),
    ))
}

fn install_uv(work: &Path, root: &Path) -> Result<(), ImageError> {
    let dl = work.join("uv-wheel");
    fs::create_dir_all(&dl).map_err(ImageError::io("create dir", &dl))?;
    run(
        "rootfs-python",
        "pip download uv",
        Command::new("python3")
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .args([
                "--only-binary=:all:",
                "--platform",
                "manylinux_2_17_x86_64",
                "--python-version",
                "3.11",
            ])
            .arg(format!("uv=={UV_VERSION}"))
            .arg("-d")
            .arg(&dl),
    )
    .map_err(|e| download_error("uv", UV_VERSION, "pip download (PyPI wheel)", e))?;
    let wheel = host::find_one(&dl, &format!("uv-{UV_VERSION}-"), ".whl")?.ok_or_else(|| {
        ImageError::Download {
            package: "uv".into(),
            version: UV_VERSION.into(),
            how: "pip download (PyPI wheel)".into(),
            detail: format!("no uv-{UV_VERSION}-*.whl in {}", dl.display()),
        }
    })?;
    let file = fs::File::open(&wheel).map_err(ImageError::io("open", &wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| {
        ImageError::step(
            "rootfs-python",
            "open uv wheel",
            format!("{}: {e}", wheel.display()),
        )
    })?;
    let member = format!("uv-{UV_VERSION}.data/scripts/uv");
    let mut bytes = Vec::new();
    zip.by_name(&member)
        .map_err(|e| {
            ImageError::step(
                "rootfs-python",
                "find uv in wheel",
                format!("{member}: {e}"),
            )
        })?
        .read_to_end(&mut bytes)
        .map_err(ImageError::io("unzip", &wheel))?;
    check_binary("uv (from wheel)", &bytes, Linking::Any)?;
    host::write_file(&root.join("usr/local/bin/uv"), &bytes, 0o755)
}

fn install_bun(work: &Path, root: &Path) -> Result<(), ImageError> {
    let dl = work.join("bun-npm");
    fs::create_dir_all(&dl).map_err(ImageError::io("create dir", &dl))?;
    let spec = format!("{BUN_PACKAGE}@{BUN_VERSION}");
    // `npm pack` only fetches the tarball: no install scripts run.
    run(
        "rootfs-javascript",
        "npm pack bun",
        Command::new("npm")
            .args(["pack", "--silent", &spec])
            .current_dir(&dl),
    )
    .map_err(|e| download_error(BUN_PACKAGE, BUN_VERSION, "npm pack", e))?;
    let tgz = host::find_one(&dl, "", ".tgz")?.ok_or_else(|| ImageError::Download {
        package: BUN_PACKAGE.into(),
        version: BUN_VERSION.into(),
        how: "npm pack".into(),
        detail: format!("no .tgz in {}", dl.display()),
    })?;
    // Guard against a silently different package: the tarball is named after the baseline build.
    let tgz_name = tgz
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !tgz_name.contains("baseline") {
        return Err(ImageError::step(
            "rootfs-javascript",
            "check bun build",
            format!("{tgz_name} is not the -baseline build; the guest CPU lacks AVX2"),
        ));
    }
    let file = fs::File::open(&tgz).map_err(ImageError::io("open", &tgz))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let mut bytes = None;
    for entry in archive
        .entries()
        .map_err(ImageError::io("read tar", &tgz))?
    {
        let mut entry = entry.map_err(ImageError::io("read tar", &tgz))?;
        let path = entry.path().map_err(ImageError::io("read tar", &tgz))?;
        if path == Path::new("package/bin/bun") {
            let mut buf = Vec::new();
            entry
                .read_to_end(&mut buf)
                .map_err(ImageError::io("read tar", &tgz))?;
            bytes = Some(buf);
            break;
        }
    }
    let bytes = bytes.ok_or_else(|| {
        ImageError::step(
            "rootfs-javascript",
            "find bun",
            format!("no package/bin/bun in {}", tgz.display()),
        )
    })?;
    check_binary("bun (from npm)", &bytes, Linking::Any)?;
    host::write_file(&root.join("usr/local/bin/bun"), &bytes, 0o755)
}

fn download_error(package: &str, version: &str, how: &str, e: ImageError) -> ImageError {
    ImageError::Download {
        package: package.into(),
        version: version.into(),
        how: how.into(),
        detail: e.to_string(),
    }
}

/// The image's `/etc/hosts` (an image key input: see `recipe::inputs`).
pub(crate) fn hosts_file() -> String {
    let name = protocol::GUEST_HOSTNAME;
    format!("127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n::1\tip6-localhost ip6-loopback\n")
}

/// Writes `/etc/hostname` and `/etc/hosts`. Without a hosts file `localhost` does not
/// resolve at all (there is no DNS in the guest), and mmdebstrap copies the build host's
/// name into `/etc/hostname`, which must not leak into the image.
///
/// `localhost` is 127.0.0.1 only: the guest network is IPv4, and forwarded ports arrive at
/// 127.0.0.1, so a dev server listening on `localhost` must not pick `::1`.
pub(crate) fn name_the_host(root: &Path) -> Result<(), ImageError> {
    let name = protocol::GUEST_HOSTNAME;
    for (rel, text) in [
        ("etc/hostname", format!("{name}\n")),
        ("etc/hosts", hosts_file()),
    ] {
        let path = root.join(rel);
        fs::write(&path, text).map_err(ImageError::io("write", &path))?;
    }
    Ok(())
}

/// Makes `/etc/resolv.conf` a link to [`protocol::guest_net::RESOLV_CONF`], which the init
/// writes only when the VM has a network. mmdebstrap leaves the build host's resolver
/// there, which must neither leak into the image nor be what a networked guest asks.
pub(crate) fn point_resolver(root: &Path) -> Result<(), ImageError> {
    let link = root.join("etc/resolv.conf");
    match fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ImageError::io("remove", &link)(e)),
    }
    std::os::unix::fs::symlink(protocol::guest_net::RESOLV_CONF, &link)
        .map_err(ImageError::io("symlink", &link))
}

/// Adds `user` (uid/gid 1000, home /home/user, shell /bin/bash) and the mount-point dirs.
pub(crate) fn add_user(root: &Path) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let append = |rel: &str, line: &str, prefix: &str| -> Result<(), ImageError> {
        let path = root.join(rel);
        let mut text = fs::read_to_string(&path).unwrap_or_default();
        if text.lines().any(|l| l.starts_with(prefix)) {
            return Ok(());
        }
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(line);
        text.push('\n');
        fs::write(&path, text).map_err(ImageError::io("write", &path))
    };
    append(
        "etc/passwd",
        "user:x:1000:1000:sandbox user:/home/user:/bin/bash",
        "user:",
    )?;
    append("etc/group", "user:x:1000:", "user:")?;
    append("etc/shadow", "user:!:19000:0:99999:7:::", "user:")?;
    // Debian's own mode for the password database: root and group shadow (42) only.
    let shadow = root.join("etc/shadow");
    fs::set_permissions(&shadow, fs::Permissions::from_mode(0o640))
        .map_err(ImageError::io("chmod", &shadow))?;
    std::os::unix::fs::chown(&shadow, Some(0), Some(42))
        .map_err(ImageError::io("chown", &shadow))?;
    let home = root.join("home/user");
    fs::create_dir_all(&home).map_err(ImageError::io("create dir", &home))?;
    fs::set_permissions(&home, fs::Permissions::from_mode(0o755))
        .map_err(ImageError::io("chmod", &home))?;
    std::os::unix::fs::chown(&home, Some(1000), Some(1000))
        .map_err(ImageError::io("chown", &home))?;
    for (dir, mode) in [
        ("tmp", 0o1777),
        ("run", 0o755),
        ("dev", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
    ] {
        let path = root.join(dir);
        fs::create_dir_all(&path).map_err(ImageError::io("create dir", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(ImageError::io("chmod", &path))?;
    }
    Ok(())
}

/// Deletes docs, translations (keeping C.UTF-8) and apt caches.
pub(crate) fn trim(root: &Path) -> Result<(), ImageError> {
    for rel in [
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
        "var/cache/apt",
        "var/lib/apt/lists",
    ] {
        let path = root.join(rel);
        if path.exists() {
            fs::remove_dir_all(&path).map_err(ImageError::io("remove", &path))?;
        }
    }
    let locale = root.join("usr/share/locale");
    if locale.is_dir() {
        for entry in fs::read_dir(&locale).map_err(ImageError::io("read dir", &locale))? {
            let entry = entry.map_err(ImageError::io("read dir", &locale))?;
            let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
            if name == "c.utf-8" || name == "c.utf8" {
                continue;
            }
            let path = entry.path();
            let ft = entry.file_type().map_err(ImageError::io("stat", &path))?;
            let result = if ft.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(ImageError::io("remove", &path))?;
        }
    }
    // apt's lists dir is expected to exist by apt itself; keep it empty, not missing.
    let lists = root.join("var/lib/apt/lists");
    if root.join("var/lib/apt").is_dir() {
        fs::create_dir_all(&lists).map_err(ImageError::io("create dir", &lists))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_and_trim_on_fake_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        fs::write(root.join("etc/shadow"), "root:*:1::::::\n").unwrap();
        for d in [
            "usr/share/doc/bash",
            "usr/share/locale/de/LC_MESSAGES",
            "usr/share/locale/C.utf8",
            "var/lib/apt/lists",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("var/lib/apt/lists/x_Packages"), "x").unwrap();
        add_user(root).unwrap();
        add_user(root).unwrap(); // idempotent
        trim(root).unwrap();
        let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
        assert_eq!(
            passwd,
            "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000:sandbox user:/home/user:/bin/bash\n"
        );
        assert!(fs::read_to_string(root.join("etc/group"))
            .unwrap()
            .contains("user:x:1000:\n"));
        assert!(fs::read_to_string(root.join("etc/shadow"))
            .unwrap()
            .contains("user:!:"));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(root.join("etc/shadow"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(root.join("etc/hostname"), "buildhost\n").unwrap();
        name_the_host(root).unwrap();
        fs::write(root.join("etc/resolv.conf"), "nameserver 10.255.255.53\n").unwrap();
        point_resolver(root).unwrap();
        point_resolver(root).unwrap(); // idempotent
        assert_eq!(
            fs::read_link(root.join("etc/resolv.conf")).unwrap(),
            Path::new(protocol::guest_net::RESOLV_CONF)
        );
        assert_eq!(
            fs::read_to_string(root.join("etc/hostname")).unwrap(),
            "sandbox\n"
        );
        let hosts = fs::read_to_string(root.join("etc/hosts")).unwrap();
        assert!(hosts.contains("127.0.0.1\tlocalhost\n") && hosts.contains("\tsandbox\n"));
        assert!(root.join("home/user").is_dir());
        for d in [
            "tmp",
            "run",
            "dev",
            "proc",
            "sys",
            "usr/share/locale/C.utf8",
        ] {
            assert!(root.join(d).is_dir(), "{d}");
        }
        assert!(!root.join("usr/share/doc").exists());
        assert!(!root.join("usr/share/locale/de").exists());
        assert_eq!(
            fs::read_dir(root.join("var/lib/apt/lists"))
                .unwrap()
                .count(),
            0
        );
    }

    #[test]
    fn resolves_symlinks_inside_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::write(root.join("usr/bin/python3.11"), "x").unwrap();
        std::os::unix::fs::symlink("python3.11", root.join("usr/bin/python3")).unwrap();
        std::os::unix::fs::symlink("/usr/bin/python3", root.join("usr/bin/py")).unwrap();
        assert_eq!(
            resolve_in_root(root, "usr/bin/py").unwrap(),
            root.join("usr/bin/python3.11")
        );
    }
}
