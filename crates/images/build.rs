//! Compiles the two guest binaries (`guest-init`, `guest-agent`) as static x86_64 executables
//! so `images` can embed them with `include_bytes!` and put them into the initramfs.
//!
//! A nested `cargo build` with its own target directory is used (the same pattern as
//! substrate's wasm-builder): the guest needs different `RUSTFLAGS` (`+crt-static`) from the
//! host build, and sharing the outer target dir would both deadlock on its lock and thrash
//! its fingerprints.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const GUEST_TARGET: &str = "x86_64-unknown-linux-gnu";
const GUEST_CRATES: [&str; 2] = ["guest-init", "guest-agent"];

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = manifest_dir
        .parent()
        .and_then(Path::parent)
        .expect("crates/images lives two levels below the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

    for krate in GUEST_CRATES.iter().copied().chain(["protocol"]) {
        let dir = workspace.join("crates").join(krate);
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("Cargo.lock").display()
    );
    println!("cargo:rerun-if-env-changed=SBX_GUEST_TARGET_DIR");

    // OUT_DIR is <target>/<profile>/build/images-<hash>/out: keep the guest target dir next to
    // <profile> so it survives `images` rebuilds and is shared by debug and release host builds.
    let target_dir = env::var_os("SBX_GUEST_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| out_dir.ancestors().nth(4).map(|t| t.join("guest-target")))
        .unwrap_or_else(|| out_dir.join("guest-target"));

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&workspace)
        .arg("build")
        .arg("--release")
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target")
        .arg(GUEST_TARGET)
        .arg("--target-dir")
        .arg(&target_dir);
    for krate in GUEST_CRATES {
        cmd.arg("-p").arg(krate);
    }
    // The outer cargo exports variables describing *this* build script (CARGO_PKG_*, CARGO_CFG_*,
    // CARGO_ENCODED_RUSTFLAGS, ...). Passed through, they would leak host flags and wrappers into
    // the guest build and change its fingerprint on every host build, forcing rebuilds.
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let drop = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTFLAGS" | "RUSTC_WRAPPER" | "RUSTC_WORKSPACE_WRAPPER" | "RUSTDOCFLAGS"
            )
            || key == "CARGO"
            || key == "RUSTC"
            || key == "TARGET"
            || key == "HOST"
            || key == "OUT_DIR"
            || key == "OPT_LEVEL"
            || key == "PROFILE"
            || key == "DEBUG"
            || key == "NUM_JOBS";
        if drop {
            cmd.env_remove(key);
        }
    }
    // crt-static on the gnu target yields a static-pie: the guest has no libc to load from.
    // Stripping keeps the uncompressed initramfs (read on every boot) small.
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        ["-C", "target-feature=+crt-static", "-C", "strip=symbols"].join("\x1f"),
    );

    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!(
            "images/build.rs: could not run the nested cargo build of the guest binaries: {e}"
        ),
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "images/build.rs: nested `cargo build --release -p guest-init -p guest-agent --target {GUEST_TARGET}` \
             failed ({}); target dir {}.\n--- stderr (tail) ---\n{}",
            output.status,
            target_dir.display(),
            tail.join("\n")
        );
    }

    let bin_dir = target_dir.join(GUEST_TARGET).join("release");
    for (krate, var) in [
        ("guest-init", "SBX_GUEST_INIT_PATH"),
        ("guest-agent", "SBX_GUEST_AGENT_PATH"),
    ] {
        let path = bin_dir.join(krate);
        if !path.is_file() {
            panic!(
                "images/build.rs: nested build succeeded but {} is missing",
                path.display()
            );
        }
        println!("cargo:rustc-env={var}={}", path.display());
    }
}
