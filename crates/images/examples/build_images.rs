//! Builds every language's guest images into the default cache and prints what it did.
//!
//! `sudo cargo run --example build_images -p images [-- --prune]` (building needs root;
//! `--prune` then removes cache entries the current recipe no longer uses).

use std::sync::Mutex;
use std::time::Instant;

use images::{BuildProgress, ImageStore};
use protocol::Language;

/// Prints each stage with the time since the image's first stage.
struct Printer {
    started: Mutex<Vec<(String, Instant)>>,
}

impl Printer {
    fn elapsed(&self, image: &str) -> f64 {
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, t)) = started.iter().find(|(n, _)| n == image) {
            return t.elapsed().as_secs_f64();
        }
        started.push((image.to_string(), Instant::now()));
        0.0
    }
}

impl BuildProgress for Printer {
    fn stage(&self, image: &str, message: &str) {
        eprintln!("[{:>6.1}s] {image}: {message}", self.elapsed(image));
    }
    fn done(&self, image: &str) {
        eprintln!("[{:>6.1}s] {image}: done", self.elapsed(image));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let store = ImageStore::open_default()?;
    eprintln!("cache: {}", store.root().display());
    let printer = Printer {
        started: Mutex::new(Vec::new()),
    };
    let started = Instant::now();
    let built = store.ensure(&Language::ALL, false, &printer)?;
    eprintln!("ensure took {:.1}s", started.elapsed().as_secs_f64());
    for g in &built {
        println!(
            "{}: key {}\n  kernel    {}\n  initramfs {}\n  rootfs    {}",
            g.language,
            g.key,
            g.kernel.display(),
            g.initramfs.display(),
            g.rootfs.display()
        );
    }
    for e in store.list()? {
        println!(
            "{:<18} {:>10} bytes  in_use={}  {}",
            e.kind,
            e.size_bytes,
            e.in_use,
            e.path.display()
        );
    }
    if std::env::args().any(|a| a == "--prune") {
        let report = store.prune()?;
        for e in &report.removed {
            println!("pruned {} ({} bytes)", e.path.display(), e.size_bytes);
        }
        println!("freed {} bytes", report.bytes_freed);
    }
    Ok(())
}
