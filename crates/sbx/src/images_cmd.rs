//! `sbx images build|list|prune`.

use std::sync::Arc;

use sandbox::images::ImageStore;
use sandbox::Language;

use crate::cli::ImagesCommand;
use crate::exit;
use crate::progress::BuildProgress;

pub async fn images(command: ImagesCommand) -> i32 {
    let config = match crate::config() {
        Ok(c) => c,
        Err(code) => return code,
    };
    let store = ImageStore::new(config.cache_dir.clone());
    match command {
        ImagesCommand::Build { language, quiet } => {
            let langs = if language.is_empty() {
                Language::ALL.to_vec()
            } else {
                language
            };
            let progress = Arc::new(BuildProgress::new(quiet));
            let offline = config.offline;
            let result = tokio::task::spawn_blocking(move || {
                store.ensure(&langs, offline, progress.as_ref())
            })
            .await;
            match result {
                Ok(Ok(built)) => {
                    for g in built {
                        println!("{:<11} {}", g.language.name(), g.key);
                    }
                    0
                }
                Ok(Err(e)) => {
                    eprintln!("sbx: {e}");
                    exit::INFRA
                }
                Err(e) => {
                    eprintln!("sbx: image build task failed: {e}");
                    exit::INFRA
                }
            }
        }
        ImagesCommand::List { json } => match store.list() {
            Ok(entries) if json => match serde_json::to_string_pretty(&entries) {
                Ok(t) => {
                    println!("{t}");
                    0
                }
                Err(e) => {
                    eprintln!("sbx: {e}");
                    exit::INFRA
                }
            },
            Ok(entries) => {
                if entries.is_empty() {
                    println!("no images in {}", store.root().display());
                }
                println!(
                    "{:<18} {:<18} {:>10}  {:<7} path",
                    "kind", "key", "size", "in use"
                );
                for e in entries {
                    println!(
                        "{:<18} {:<18} {:>10}  {:<7} {}",
                        e.kind,
                        e.key.get(..16).unwrap_or(&e.key),
                        human_size(e.size_bytes),
                        if e.in_use { "yes" } else { "no" },
                        e.path.display()
                    );
                }
                0
            }
            Err(e) => {
                eprintln!("sbx: {e}");
                exit::INFRA
            }
        },
        ImagesCommand::Prune => match store.prune() {
            Ok(report) => {
                for e in &report.removed {
                    println!("removed {} {}", e.kind, e.path.display());
                }
                println!("freed {}", human_size(report.bytes_freed));
                0
            }
            Err(e) => {
                eprintln!("sbx: {e}");
                exit::INFRA
            }
        },
    }
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
