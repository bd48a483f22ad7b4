//! The recipe: every pinned input of the images, and the content keys derived from them.
//!
//! Keys are computed from constants and the embedded guest binaries only, so `lookup` needs
//! neither network nor subprocesses. Bump [`RECIPE_VERSION`] whenever build logic changes
//! in a way that changes an artifact without changing any listed input.

use protocol::Language;
use sha2::{Digest, Sha256};

/// Bumped whenever build logic changes what an artifact contains.
pub const RECIPE_VERSION: u32 = 2;

/// Debian's cloud kernel, pinned by ABI package name (the revision apt offers for it is
/// recorded in the manifest). The 6.1 series is the one PLATFORM-NOTES measured boots with.
pub const KERNEL_PACKAGE: &str = "linux-image-6.1.0-57-cloud-amd64";

/// Modules the guest loads, in the order we prefer when dependencies allow. Their
/// dependencies (read from `.modinfo`) are added automatically. Only what every boot needs:
/// each module costs boot time under software emulation (the networking ones come with
/// the network, loaded only when the VM has a NIC).
pub const GUEST_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_mmio",
    "virtio_console",
    "virtio_blk",
    "erofs",
];

/// Modules loaded only when the VM has a NIC (the init sees `protocol::guest_net::CMDLINE_FLAG`).
pub const NET_MODULES: &[&str] = &["virtio_net"];

/// Debian suite of every root filesystem.
pub const SUITE: &str = "bookworm";

/// uv from its PyPI wheel.
pub const UV_VERSION: &str = "0.13.9";
/// Bun from npm: the baseline build (needs SSE4.2/POPCNT, not AVX2), matching the guest CPU model.
pub const BUN_PACKAGE: &str = "@oven/bun-linux-x64-baseline";
pub const BUN_VERSION: &str = "1.4.5";

/// Packages in every root filesystem.
pub const COMMON_PACKAGES: &[&str] = &["bash", "ca-certificates", "procps"];

/// Extra Debian packages per language.
pub fn language_packages(lang: Language) -> &'static [&'static str] {
    match lang {
        Language::Python => &["python3"],
        Language::Javascript => &[],
        Language::Raw => &[
            "coreutils",
            "grep",
            "sed",
            "gawk",
            "findutils",
            "diffutils",
            "patch",
            "tar",
            "gzip",
            "unzip",
            "curl",
            "jq",
            "git",
            "make",
            "file",
            "less",
            "tree",
        ],
    }
}

/// All Debian packages of a language's root filesystem, sorted and deduplicated.
pub fn rootfs_packages(lang: Language) -> Vec<&'static str> {
    let mut pkgs: Vec<&str> = COMMON_PACKAGES
        .iter()
        .chain(language_packages(lang))
        .copied()
        .collect();
    pkgs.sort_unstable();
    pkgs.dedup();
    pkgs
}

/// `mkfs.erofs` options; part of the rootfs key. Uncompressed: see `rootfs.rs` for why.
pub const MKFS_EROFS_ARGS: &[&str] = &["-T0"];

/// What kind of cache entry; also the directory name prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Kernel,
    Initramfs,
    Rootfs(Language),
}

impl Kind {
    pub fn name(self) -> String {
        match self {
            Kind::Kernel => "kernel".into(),
            Kind::Initramfs => "initramfs".into(),
            Kind::Rootfs(lang) => format!("rootfs-{}", lang.name()),
        }
    }

    pub fn from_name(name: &str) -> Option<Kind> {
        match name {
            "kernel" => Some(Kind::Kernel),
            "initramfs" => Some(Kind::Initramfs),
            _ => name
                .strip_prefix("rootfs-")
                .and_then(|l| Language::ALL.into_iter().find(|x| x.name() == l))
                .map(Kind::Rootfs),
        }
    }

    /// The artifact file(s) an entry of this kind must contain.
    pub fn artifacts(self) -> &'static [&'static str] {
        match self {
            Kind::Kernel => &[
                "vmlinuz",
                "vmlinux",
                "modules/load-order",
                "modules/load-order-net",
            ],
            Kind::Initramfs => &["initramfs.cpio"],
            Kind::Rootfs(_) => &["rootfs.erofs"],
        }
    }
}

/// The recipe inputs of one entry, as `(name, value)` pairs; hashed into the key and
/// recorded in the manifest.
pub fn inputs(kind: Kind, guest_hashes: &GuestHashes) -> Vec<(String, String)> {
    let mut v = vec![
        ("recipe_version".to_string(), RECIPE_VERSION.to_string()),
        ("kind".to_string(), kind.name()),
    ];
    match kind {
        Kind::Kernel => {
            v.push(("kernel_package".into(), KERNEL_PACKAGE.into()));
            v.push(("modules".into(), GUEST_MODULES.join(",")));
            v.push(("net_modules".into(), NET_MODULES.join(",")));
            // The entry also holds the uncompressed ELF kernel for PVH boots.
            v.push(("artifacts".into(), Kind::Kernel.artifacts().join(",")));
        }
        Kind::Initramfs => {
            // The modules come from the kernel entry: its key stands for them.
            v.push(("kernel_key".into(), key(Kind::Kernel, guest_hashes)));
            v.push(("guest_init_sha256".into(), guest_hashes.init.clone()));
            v.push(("guest_agent_sha256".into(), guest_hashes.agent.clone()));
        }
        Kind::Rootfs(lang) => {
            v.push(("suite".into(), SUITE.into()));
            v.push(("variant".into(), "essential".into()));
            v.push(("packages".into(), rootfs_packages(lang).join(",")));
            v.push(("mkfs_erofs".into(), MKFS_EROFS_ARGS.join(" ")));
            v.push((
                "resolv_conf".into(),
                protocol::guest_net::RESOLV_CONF.into(),
            ));
            v.push(("etc_hosts".into(), crate::rootfs::hosts_file()));
            match lang {
                Language::Python => v.push(("uv".into(), UV_VERSION.into())),
                Language::Javascript => {
                    v.push(("bun".into(), format!("{BUN_PACKAGE}@{BUN_VERSION}")))
                }
                Language::Raw => {}
            }
        }
    }
    v
}

/// sha256 (hex) of the embedded guest binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestHashes {
    pub init: String,
    pub agent: String,
}

impl GuestHashes {
    pub fn of(init: &[u8], agent: &[u8]) -> GuestHashes {
        GuestHashes {
            init: hex::encode(Sha256::digest(init)),
            agent: hex::encode(Sha256::digest(agent)),
        }
    }
}

/// Full hex sha256 key of an entry.
pub fn key(kind: Kind, guest_hashes: &GuestHashes) -> String {
    hash_pairs(&inputs(kind, guest_hashes))
}

fn hash_pairs(pairs: &[(String, String)]) -> String {
    let mut h = Sha256::new();
    for (k, v) in pairs {
        // Length-prefixed so that ("ab","c") and ("a","bc") hash differently.
        for part in [k, v] {
            h.update((part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
    }
    hex::encode(h.finalize())
}

/// Key of a language's full image set (kernel + initramfs + rootfs).
pub fn combined_key(lang: Language, guest_hashes: &GuestHashes) -> String {
    let parts = [Kind::Kernel, Kind::Initramfs, Kind::Rootfs(lang)]
        .map(|k| (k.name(), key(k, guest_hashes)))
        .to_vec();
    hash_pairs(&parts)
}

/// Directory name of an entry: `<kind>-<first 16 hex digits of the key>`.
pub fn entry_dir_name(kind: Kind, key: &str) -> String {
    format!("{}-{}", kind.name(), &key[..16.min(key.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hashes(init: &[u8]) -> GuestHashes {
        GuestHashes::of(init, b"agent")
    }

    #[test]
    fn keys_are_stable() {
        let a = hashes(b"init");
        for kind in [
            Kind::Kernel,
            Kind::Initramfs,
            Kind::Rootfs(Language::Python),
        ] {
            assert_eq!(key(kind, &a), key(kind, &a.clone()));
            assert_eq!(key(kind, &a).len(), 64);
        }
        assert_eq!(
            combined_key(Language::Raw, &a),
            combined_key(Language::Raw, &a)
        );
    }

    #[test]
    fn changed_agent_changes_only_initramfs() {
        let a = hashes(b"init v1");
        let b = hashes(b"init v2");
        assert_ne!(key(Kind::Initramfs, &a), key(Kind::Initramfs, &b));
        assert_eq!(key(Kind::Kernel, &a), key(Kind::Kernel, &b));
        for lang in Language::ALL {
            assert_eq!(key(Kind::Rootfs(lang), &a), key(Kind::Rootfs(lang), &b));
            assert_ne!(combined_key(lang, &a), combined_key(lang, &b));
        }
    }

    #[test]
    fn languages_and_kinds_differ() {
        let a = hashes(b"init");
        let mut all: Vec<String> = Language::ALL
            .iter()
            .map(|l| key(Kind::Rootfs(*l), &a))
            .collect();
        all.push(key(Kind::Kernel, &a));
        all.push(key(Kind::Initramfs, &a));
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn hash_is_length_prefixed() {
        let x = hash_pairs(&[("ab".into(), "c".into())]);
        let y = hash_pairs(&[("a".into(), "bc".into())]);
        assert_ne!(x, y);
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in [Kind::Kernel, Kind::Initramfs]
            .into_iter()
            .chain(Language::ALL.map(Kind::Rootfs))
        {
            assert_eq!(Kind::from_name(&kind.name()), Some(kind));
        }
        assert_eq!(Kind::from_name("rootfs-cobol"), None);
    }
}
