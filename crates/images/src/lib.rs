//! Guest images for exec-sandbox: builds Debian's cloud kernel (+ the modules the guest
//! loads), the initramfs (static `guest-init` and `guest-agent` + modules) and one EROFS
//! root filesystem per language into a content-addressed cache, and hands their paths to
//! the host library.
//!
//! This crate owns the cache directory (`<root>/images/`) and the recipe (pinned package
//! names and versions). It does not start VMs, choose QEMU flags or talk to the guest: that
//! is `vmm`/`sandbox`. The layout of what it produces is the contract in docs/CONTRACTS.md.
//!
//! Building a root filesystem needs root (mmdebstrap in root mode, `chroot`, file
//! ownership; kernel and initramfs do not), and building uses the host
//! tools `apt-get`, `dpkg-deb`, `mmdebstrap`, `mkfs.erofs` (erofs-utils), `python3 -m pip`
//! and `npm`; a missing one fails with [`ImageError::MissingTool`] naming the apt package.
//! Looking images up needs neither root nor network.
//!
//! Cache layout: `<root>/images/<kind>-<key16>/` holds an entry's artifacts and
//! `manifest.json`; builds happen in `<root>/images/.tmp-<kind>-<random>/` and are renamed
//! into place, under an exclusive `flock` on `<root>/images/.lock`.

mod cpio;
mod elf;
mod error;
mod host;
mod initramfs;
mod kernel;
mod recipe;
mod rootfs;
mod vmlinux;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use protocol::Language;
use serde::Serialize;

pub use error::ImageError;
pub use recipe::{BUN_PACKAGE, BUN_VERSION, KERNEL_PACKAGE, RECIPE_VERSION, UV_VERSION};

use recipe::{GuestHashes, Kind};

static GUEST_INIT: &[u8] = include_bytes!(env!("SBX_GUEST_INIT_PATH"));
static GUEST_AGENT: &[u8] = include_bytes!(env!("SBX_GUEST_AGENT_PATH"));

/// The `guest-init` and `guest-agent` binaries (static x86_64), as compiled by build.rs.
pub fn guest_binaries() -> (&'static [u8], &'static [u8]) {
    (GUEST_INIT, GUEST_AGENT)
}

fn guest_hashes() -> &'static GuestHashes {
    static HASHES: OnceLock<GuestHashes> = OnceLock::new();
    HASHES.get_or_init(|| GuestHashes::of(GUEST_INIT, GUEST_AGENT))
}

/// Receives build progress; `image` is an entry kind such as `kernel` or `rootfs-python`.
pub trait BuildProgress: Send + Sync {
    fn stage(&self, image: &str, message: &str);
    fn done(&self, image: &str) {
        let _ = image;
    }
}

/// A [`BuildProgress`] that reports nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl BuildProgress for NoProgress {
    fn stage(&self, _image: &str, _message: &str) {}
}

/// Kernel and initramfs, enough to boot the guest without a root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImages {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// Stable for a given kernel + initramfs recipe.
    pub key: String,
}

/// Everything needed to boot a guest for one language.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestImages {
    pub language: Language,
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub rootfs: PathBuf,
    /// Combined key of kernel, initramfs and rootfs; stable for a given recipe.
    pub key: String,
}

/// One directory in the cache.
#[derive(Debug, Clone, Serialize)]
pub struct CacheEntry {
    /// `kernel`, `initramfs`, `rootfs-<language>`, or `partial-build` for a leftover temp dir.
    pub kind: String,
    /// Full key from the manifest (the 16-digit prefix if the manifest is unreadable).
    pub key: String,
    pub size_bytes: u64,
    pub path: PathBuf,
    /// Whether the current recipe uses this entry.
    pub in_use: bool,
}

/// What [`ImageStore::prune`] removed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    pub removed: Vec<CacheEntry>,
    pub bytes_freed: u64,
}

/// `manifest.json` of an entry.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
struct Manifest {
    kind: String,
    key: String,
    recipe_version: u32,
    inputs: BTreeMap<String, String>,
    resolved: BTreeMap<String, String>,
    /// Artifact path (relative to the entry) → size in bytes.
    sizes: BTreeMap<String, u64>,
    build_seconds: f64,
    built_at_unix: u64,
}

const MANIFEST: &str = "manifest.json";
const TMP_PREFIX: &str = ".tmp-";
const LOCK_FILE: &str = ".lock";

/// The image cache rooted at one directory.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    /// Cache root: `$SBX_CACHE_DIR`, else `$XDG_CACHE_HOME/exec-sandbox`, else
    /// `~/.cache/exec-sandbox`.
    pub fn open_default() -> Result<ImageStore, ImageError> {
        let non_empty = |var: &str| {
            std::env::var_os(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let root = non_empty("SBX_CACHE_DIR")
            .or_else(|| {
                non_empty("XDG_CACHE_HOME")
                    .filter(|p| p.is_absolute())
                    .map(|p| p.join("exec-sandbox"))
            })
            .or_else(|| non_empty("HOME").map(|h| h.join(".cache").join("exec-sandbox")))
            .ok_or(ImageError::NoCacheDir)?;
        Ok(ImageStore::new(root))
    }

    pub fn new(root: PathBuf) -> ImageStore {
        ImageStore { root }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    fn entry_dir(&self, kind: Kind) -> PathBuf {
        let key = recipe::key(kind, guest_hashes());
        self.images_dir().join(recipe::entry_dir_name(kind, &key))
    }

    /// The entry's directory if it is complete (every artifact present).
    fn present(&self, kind: Kind) -> Option<PathBuf> {
        let dir = self.entry_dir(kind);
        let complete =
            dir.join(MANIFEST).is_file() && kind.artifacts().iter().all(|a| dir.join(a).is_file());
        complete.then_some(dir)
    }

    /// Cheap (no network, no building, no subprocess): the built images for a language if present.
    pub fn lookup(&self, lang: Language) -> Result<Option<GuestImages>, ImageError> {
        let (Some(kernel), Some(initramfs), Some(rootfs)) = (
            self.present(Kind::Kernel),
            self.present(Kind::Initramfs),
            self.present(Kind::Rootfs(lang)),
        ) else {
            return Ok(None);
        };
        Ok(Some(GuestImages {
            language: lang,
            kernel: kernel.join(kernel::VMLINUX),
            initramfs: initramfs.join("initramfs.cpio"),
            rootfs: rootfs.join("rootfs.erofs"),
            key: recipe::combined_key(lang, guest_hashes()),
        }))
    }

    /// Kernel + initramfs only (no rootfs), if present.
    pub fn lookup_boot(&self) -> Result<Option<BootImages>, ImageError> {
        let (Some(kernel), Some(initramfs)) =
            (self.present(Kind::Kernel), self.present(Kind::Initramfs))
        else {
            return Ok(None);
        };
        // The initramfs key already covers the kernel key.
        Ok(Some(BootImages {
            kernel: kernel.join(kernel::VMLINUX),
            initramfs: initramfs.join("initramfs.cpio"),
            key: recipe::key(Kind::Initramfs, guest_hashes()),
        }))
    }

    /// Builds whatever is missing for these languages; a second call is a no-op. With
    /// `offline`, anything missing is an [`ImageError::Offline`] and nothing is fetched.
    pub fn ensure(
        &self,
        langs: &[Language],
        offline: bool,
        progress: &dyn BuildProgress,
    ) -> Result<Vec<GuestImages>, ImageError> {
        let mut needed = vec![Kind::Kernel, Kind::Initramfs];
        for lang in langs {
            if !needed.contains(&Kind::Rootfs(*lang)) {
                needed.push(Kind::Rootfs(*lang));
            }
        }
        let missing: Vec<Kind> = needed
            .iter()
            .copied()
            .filter(|k| self.present(*k).is_none())
            .collect();
        if !missing.is_empty() {
            if offline {
                return Err(ImageError::Offline {
                    missing: missing.iter().map(|k| k.name()).collect(),
                });
            }
            // Only root filesystems need root (mmdebstrap, chroot, file owners); a changed
            // agent (the common case while developing) only rebuilds the initramfs.
            if missing.iter().any(|k| matches!(k, Kind::Rootfs(_))) {
                host::require_root("building a root filesystem")?;
            }
            let mut tools = vec![host::CHROOT];
            for kind in &missing {
                match kind {
                    Kind::Kernel => tools.extend([host::APT_GET, host::DPKG_DEB]),
                    Kind::Initramfs => {}
                    Kind::Rootfs(lang) => {
                        tools.extend([host::MMDEBSTRAP, host::MKFS_EROFS]);
                        match lang {
                            Language::Python => tools.push(host::PYTHON3),
                            Language::Javascript => tools.push(host::NPM),
                            Language::Raw => {}
                        }
                    }
                }
            }
            host::require_tools(&tools)?;

            let _lock = self.lock(progress)?;
            // Holding the lock, no build is in progress: any temp dir is what a killed build
            // left behind (hundreds of MiB). Clear it before adding more.
            for leftover in self.list()?.iter().filter(|e| e.kind == "partial-build") {
                host::remove_build_dir(&leftover.path)?;
            }
            // Re-check under the lock: another process may have built entries while we waited.
            for kind in needed.iter().copied() {
                if self.present(kind).is_none() {
                    self.build_entry(kind, progress)?;
                }
            }
        }
        langs
            .iter()
            .map(|lang| {
                self.lookup(*lang)?.ok_or_else(|| {
                    ImageError::step(
                        &Kind::Rootfs(*lang).name(),
                        "lookup after build",
                        "entry vanished after building",
                    )
                })
            })
            .collect()
    }

    /// Takes the cache-wide build lock (released when the file is dropped).
    fn lock(&self, progress: &dyn BuildProgress) -> Result<fs::File, ImageError> {
        use fs4::fs_std::FileExt;
        let dir = self.images_dir();
        fs::create_dir_all(&dir).map_err(ImageError::io("create dir", &dir))?;
        let path = dir.join(LOCK_FILE);
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(ImageError::io("open lock", &path))?;
        if !FileExt::try_lock_exclusive(&file).map_err(ImageError::io("lock", &path))? {
            progress.stage("cache", "waiting for another process building images");
            FileExt::lock_exclusive(&file).map_err(ImageError::io("lock", &path))?;
        }
        Ok(file)
    }

    /// Builds one entry in a temp dir and renames it into place. Caller holds the lock.
    fn build_entry(&self, kind: Kind, progress: &dyn BuildProgress) -> Result<(), ImageError> {
        let name = kind.name();
        let images = self.images_dir();
        let started = Instant::now();
        // The drop guard: any error below removes the whole temp tree.
        let tmp = host::BuildDir::new(&images, &format!("{TMP_PREFIX}{name}-"))?;
        let entry = tmp.path().join("entry");
        let work = tmp.path().join("work");
        for d in [&entry, &work] {
            fs::create_dir_all(d).map_err(ImageError::io("create dir", d))?;
        }

        let mut resolved = BTreeMap::new();
        match kind {
            Kind::Kernel => {
                let k = kernel::build_kernel(&work, &entry, progress)?;
                resolved.insert("kernel_package_version".into(), k.package_version);
                resolved.insert("kernel_release".into(), k.kernel_release);
                resolved.insert("module_load_order".into(), k.load_order.join(","));
                resolved.insert("net_module_load_order".into(), k.net_load_order.join(","));
            }
            Kind::Initramfs => {
                let kernel_dir = self.present(Kind::Kernel).ok_or_else(|| {
                    ImageError::step(
                        &name,
                        "find kernel entry",
                        "the kernel entry must be built first",
                    )
                })?;
                progress.stage(&name, "writing initramfs.cpio");
                let order = initramfs::build_initramfs(
                    GUEST_INIT,
                    GUEST_AGENT,
                    &kernel_dir.join("modules"),
                    &entry.join("initramfs.cpio"),
                )?;
                resolved.insert("module_load_order".into(), order.join(","));
            }
            Kind::Rootfs(lang) => {
                let r = rootfs::build_rootfs(lang, &work, &entry, progress)?;
                resolved.extend(r.resolved);
                resolved.insert("tree_bytes".into(), r.tree_bytes.to_string());
                resolved.insert("mkfs_seconds".into(), format!("{:.1}", r.mkfs_seconds));
            }
        }
        fs::remove_dir_all(&work).map_err(ImageError::io("remove", &work))?;

        let key = recipe::key(kind, guest_hashes());
        let mut sizes = BTreeMap::new();
        for artifact in kind.artifacts() {
            sizes.insert(
                artifact.to_string(),
                host::disk_size(&entry.join(artifact))?,
            );
        }
        if kind == Kind::Kernel {
            sizes.insert("modules".into(), host::disk_size(&entry.join("modules"))?);
        }
        let manifest = Manifest {
            kind: name.clone(),
            key: key.clone(),
            recipe_version: RECIPE_VERSION,
            inputs: recipe::inputs(kind, guest_hashes()).into_iter().collect(),
            resolved,
            sizes,
            build_seconds: started.elapsed().as_secs_f64(),
            built_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        let manifest_path = entry.join(MANIFEST);
        let json = serde_json::to_vec_pretty(&manifest).map_err(|e| ImageError::Manifest {
            path: manifest_path.clone(),
            detail: e.to_string(),
        })?;
        fs::write(&manifest_path, json).map_err(ImageError::io("write", &manifest_path))?;

        let target = images.join(recipe::entry_dir_name(kind, &key));
        if target.exists() {
            // An incomplete entry (an artifact deleted by hand): replace it.
            fs::remove_dir_all(&target)
                .map_err(ImageError::io("remove incomplete entry", &target))?;
        }
        fs::rename(&entry, &target).map_err(ImageError::io("rename into place", &target))?;
        progress.done(&name);
        Ok(())
    }

    /// Every entry in the cache, including leftover temp dirs of crashed builds.
    pub fn list(&self) -> Result<Vec<CacheEntry>, ImageError> {
        let dir = self.images_dir();
        let read = match fs::read_dir(&dir) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(ImageError::io("read dir", &dir)(e)),
        };
        let mut out = Vec::new();
        for item in read {
            let item = item.map_err(ImageError::io("read dir", &dir))?;
            let path = item.path();
            if !item
                .file_type()
                .map_err(ImageError::io("stat", &path))?
                .is_dir()
            {
                continue; // the lock file
            }
            let name = item.file_name().to_string_lossy().into_owned();
            let size_bytes = host::disk_size(&path)?;
            if name.starts_with(TMP_PREFIX) {
                out.push(CacheEntry {
                    kind: "partial-build".into(),
                    key: String::new(),
                    size_bytes,
                    path,
                    in_use: false,
                });
                continue;
            }
            let Some((kind_name, key16)) = name.rsplit_once('-') else {
                continue;
            };
            let kind = Kind::from_name(kind_name);
            let in_use = kind.is_some_and(|k| {
                recipe::entry_dir_name(k, &recipe::key(k, guest_hashes())) == name
            });
            let key = fs::read(path.join(MANIFEST))
                .ok()
                .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
                .map(|m| m.key)
                .unwrap_or_else(|| key16.to_string());
            out.push(CacheEntry {
                kind: kind_name.to_string(),
                key,
                size_bytes,
                path,
                in_use,
            });
        }
        out.sort_by(|a, b| (&a.kind, &a.path).cmp(&(&b.kind, &b.path)));
        Ok(out)
    }

    /// Removes entries the current recipe does not use and leftover temp dirs. Waits for any
    /// running build (it holds the lock), so a temp dir seen here is from a crashed build.
    pub fn prune(&self) -> Result<PruneReport, ImageError> {
        if !self.images_dir().is_dir() {
            return Ok(PruneReport::default());
        }
        let _lock = self.lock(&NoProgress)?;
        let mut report = PruneReport::default();
        for entry in self.list()? {
            if entry.in_use {
                continue;
            }
            host::remove_build_dir(&entry.path)?;
            report.bytes_freed += entry.size_bytes;
            report.removed.push(entry);
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_entry(store: &ImageStore, name: &str, key: &str, artifacts: &[&str]) -> PathBuf {
        let dir = store.images_dir().join(name);
        fs::create_dir_all(&dir).unwrap();
        for a in artifacts {
            let p = dir.join(a);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, vec![7u8; 1000]).unwrap();
        }
        let m = Manifest {
            kind: name.rsplit_once('-').unwrap().0.into(),
            key: key.into(),
            recipe_version: RECIPE_VERSION,
            inputs: BTreeMap::new(),
            resolved: BTreeMap::new(),
            sizes: BTreeMap::new(),
            build_seconds: 0.0,
            built_at_unix: 0,
        };
        fs::write(dir.join(MANIFEST), serde_json::to_vec(&m).unwrap()).unwrap();
        dir
    }

    fn fake_current(store: &ImageStore, kind: Kind) -> PathBuf {
        let key = recipe::key(kind, guest_hashes());
        fake_entry(
            store,
            &recipe::entry_dir_name(kind, &key),
            &key,
            kind.artifacts(),
        )
    }

    #[test]
    fn offline_with_empty_cache_names_what_is_missing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::new(tmp.path().to_path_buf());
        assert!(store.lookup(Language::Python).unwrap().is_none());
        assert!(store.lookup_boot().unwrap().is_none());
        let err = store
            .ensure(&[Language::Python], true, &NoProgress)
            .unwrap_err();
        match err {
            ImageError::Offline { missing } => {
                assert_eq!(missing, ["kernel", "initramfs", "rootfs-python"])
            }
            other => panic!("expected Offline, got {other}"),
        }
        // Nothing was created.
        assert!(!store.images_dir().exists());
    }

    #[test]
    fn lookup_and_offline_ensure_use_present_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::new(tmp.path().to_path_buf());
        fake_current(&store, Kind::Kernel);
        fake_current(&store, Kind::Initramfs);
        assert!(store.lookup_boot().unwrap().is_some());
        assert!(store.lookup(Language::Raw).unwrap().is_none());
        let err = store
            .ensure(&[Language::Raw, Language::Python], true, &NoProgress)
            .unwrap_err();
        assert!(
            matches!(err, ImageError::Offline { ref missing } if missing == &["rootfs-raw", "rootfs-python"]),
            "{err}"
        );
        fake_current(&store, Kind::Rootfs(Language::Raw));
        let got = store.ensure(&[Language::Raw], true, &NoProgress).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].rootfs.ends_with("rootfs.erofs") && got[0].rootfs.is_file());
        assert!(got[0].kernel.is_file() && got[0].initramfs.is_file());
        assert_eq!(
            got[0].key,
            recipe::combined_key(Language::Raw, guest_hashes())
        );
        // An entry with a missing artifact is not "present".
        let dir = store.entry_dir(Kind::Rootfs(Language::Raw));
        fs::remove_file(dir.join("rootfs.erofs")).unwrap();
        assert!(store.lookup(Language::Raw).unwrap().is_none());
    }

    #[test]
    fn list_and_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::new(tmp.path().to_path_buf());
        assert!(store.list().unwrap().is_empty());
        assert_eq!(store.prune().unwrap().removed.len(), 0);

        let kernel = fake_current(&store, Kind::Kernel);
        let rootfs = fake_current(&store, Kind::Rootfs(Language::Python));
        let old = fake_entry(
            &store,
            "initramfs-0123456789abcdef",
            &"0123456789abcdef".repeat(4),
            &["initramfs.cpio"],
        );
        let partial = store.images_dir().join(".tmp-rootfs-raw-XYZ");
        fs::create_dir_all(partial.join("work/root/usr")).unwrap();
        fs::write(partial.join("work/root/usr/big"), vec![0u8; 5000]).unwrap();
        fs::write(store.images_dir().join(LOCK_FILE), b"").unwrap();

        let list = store.list().unwrap();
        assert_eq!(list.len(), 4, "{list:#?}");
        let get = |p: &Path| list.iter().find(|e| e.path == p).unwrap();
        assert!(get(&kernel).in_use && get(&rootfs).in_use);
        assert_eq!(get(&kernel).key, recipe::key(Kind::Kernel, guest_hashes()));
        assert!(!get(&old).in_use);
        assert_eq!(get(&old).kind, "initramfs");
        assert_eq!(get(&partial).kind, "partial-build");
        assert_eq!(get(&partial).size_bytes, 5000);
        assert!(get(&kernel).size_bytes >= 2000);

        let report = store.prune().unwrap();
        let mut removed: Vec<&Path> = report.removed.iter().map(|e| e.path.as_path()).collect();
        removed.sort();
        let mut expected = vec![old.as_path(), partial.as_path()];
        expected.sort();
        assert_eq!(removed, expected);
        assert_eq!(report.bytes_freed, get(&old).size_bytes + 5000);
        assert!(kernel.is_dir() && rootfs.is_dir() && !old.exists() && !partial.exists());
        assert_eq!(store.list().unwrap().len(), 2);
    }

    #[test]
    fn prune_waits_for_a_running_build() {
        let tmp = tempfile::tempdir().unwrap();
        let store = ImageStore::new(tmp.path().to_path_buf());
        let lock = store.lock(&NoProgress).unwrap();
        // A build in progress: its temp dir must survive a concurrent prune.
        let partial = store.images_dir().join(".tmp-kernel-inprogress");
        fs::create_dir_all(&partial).unwrap();
        let store2 = store.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let pruner = std::thread::spawn(move || {
            let report = store2.prune().unwrap();
            tx.send(()).unwrap();
            report
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "prune must wait for the lock"
        );
        assert!(partial.exists());
        drop(lock); // the "build" crashed without renaming its temp dir
        let report = pruner.join().unwrap();
        assert_eq!(report.removed.len(), 1);
        assert!(!partial.exists());
    }

    #[test]
    fn default_root_prefers_sbx_cache_dir() {
        // Only reads the environment; set vars are process-wide, so check the precedence
        // logic without mutating it when SBX_CACHE_DIR is already set by the caller.
        if std::env::var_os("SBX_CACHE_DIR").is_none() && std::env::var_os("HOME").is_some() {
            let store = ImageStore::open_default().unwrap();
            assert!(store.root().ends_with("exec-sandbox"));
        }
    }
}
