//! Real image build into a temporary cache. Slow (minutes), needs root and the package
//! registries, so it is `#[ignore]`d: run it with `cargo test -p images -- --ignored`.

use std::time::Instant;

use images::{BuildProgress, ImageStore};
use protocol::Language;

struct Log;

impl BuildProgress for Log {
    fn stage(&self, image: &str, message: &str) {
        eprintln!("{image}: {message}");
    }
    fn done(&self, image: &str) {
        eprintln!("{image}: done");
    }
}

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

// The CI run builds the real images once through `sbx images build` (the same code); this
// test builds a second, throwaway set and is run by hand when the build logic changes.
#[test]
#[ignore = "builds all images into a temp cache: needs root and minutes; run with --ignored"]
fn builds_all_languages_into_a_temp_cache() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let store = ImageStore::new(tmp.path().to_path_buf());
    let started = Instant::now();
    let built = store
        .ensure(&Language::ALL, false, &Log)
        .expect("build images");
    eprintln!("first ensure: {:.1}s", started.elapsed().as_secs_f64());
    assert_eq!(built.len(), 3);
    for g in &built {
        let (k, i, r) = (size(&g.kernel), size(&g.initramfs), size(&g.rootfs));
        eprintln!(
            "{}: vmlinuz {k} B, initramfs {i} B, rootfs {r} B",
            g.language
        );
        assert!(k > 4 << 20, "vmlinuz too small: {k}");
        assert!(i > 2 << 20, "initramfs too small: {i}");
        assert!(r > 20 << 20, "rootfs too small: {r}");
        assert_eq!(store.lookup(g.language).expect("lookup").as_ref(), Some(g));
    }
    // All three languages share one kernel and one initramfs.
    assert_eq!(built[0].kernel, built[2].kernel);
    assert_eq!(built[0].initramfs, built[1].initramfs);

    let again = Instant::now();
    let second = store
        .ensure(&Language::ALL, false, &Log)
        .expect("second ensure");
    assert_eq!(second, built);
    assert!(
        again.elapsed().as_secs() < 2,
        "second ensure must be a no-op"
    );

    let list = store.list().expect("list");
    assert_eq!(list.len(), 5, "{list:#?}");
    assert!(list.iter().all(|e| e.in_use));
    assert!(store.prune().expect("prune").removed.is_empty());
    // No temp dirs left behind.
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path().join("images"))
        .expect("read images dir")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
