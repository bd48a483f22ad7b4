//! Compiles the per-VM network process (`sbx-net`, from the `net` crate) as a static
//! executable, which `net_helper.rs` embeds, and exports its content hash so the installed
//! copy can be named after it.

use sha2::{Digest, Sha256};

fn main() {
    let bins = static_build::StaticBuild {
        crates: &["net", "protocol"],
        packages: &["net"],
        features: Some("net/stack"),
        bins: &[("sbx-net", "SBX_NET_HELPER_PATH")],
    }
    .run();
    let bytes = bins
        .first()
        .and_then(|p| std::fs::read(p).ok())
        .expect("the nested build reported sbx-net but it cannot be read");
    let hash = hex::encode(&Sha256::digest(&bytes)[..8]);
    println!("cargo:rustc-env=SBX_NET_HELPER_HASH={hash}");
}
