//! Build-script helper shared by the crates that embed workspace binaries: `images` (the
//! guest's init and agent) and `sandbox` (the per-VM network process). It runs a nested
//! `cargo build --release` of those binaries as static executables and tells cargo when to
//! run the build script again. It owns nothing else and must not be a normal dependency.
//!
//! A nested build with its own target directory is used (the same pattern as substrate's
//! wasm-builder): the binaries need different `RUSTFLAGS` (`+crt-static`) from the host
//! build, and sharing the outer target dir would both deadlock on its lock and thrash its
//! fingerprints. The guest and the network process share one nested target dir, so their
//! common dependencies are compiled once; two build scripts using it at once simply take
//! turns on its lock.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target the binaries are built for: the static-pie they produce runs in the guest
/// (which has no libc to load) and on any x86_64 Linux host alike.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// What to build: workspace packages, their features, and the binaries wanted.
pub struct StaticBuild<'a> {
    /// Workspace crates (directory names under `crates/`) whose sources the binaries are
    /// built from; a change in any of them reruns the build script.
    pub crates: &'a [&'a str],
    /// `-p` arguments.
    pub packages: &'a [&'a str],
    /// `--features` argument, e.g. `net/stack`.
    pub features: Option<&'a str>,
    /// Binary names expected in the output, each paired with the `rustc-env` variable that
    /// receives its path.
    pub bins: &'a [(&'a str, &'a str)],
}

impl StaticBuild<'_> {
    /// Runs the nested build, exports each binary's path and returns the paths in the order
    /// of [`StaticBuild::bins`]. Panics (failing the build with the nested cargo's stderr)
    /// when it fails: a build script has no other way to report.
    pub fn run(&self) -> Vec<PathBuf> {
        let manifest_dir = PathBuf::from(
            env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"),
        );
        let workspace = manifest_dir
            .parent()
            .and_then(Path::parent)
            .expect("workspace crates live two levels below the workspace root")
            .to_path_buf();
        let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));

        for krate in self.crates {
            watch_sources(&workspace.join("crates").join(krate));
        }
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join("Cargo.lock").display()
        );
        println!("cargo:rerun-if-env-changed=SBX_GUEST_TARGET_DIR");

        // OUT_DIR is <target>/<profile>/build/<crate>-<hash>/out: keep the nested target dir
        // next to <profile> so it survives rebuilds and is shared by debug and release builds.
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
            .arg(TARGET)
            .arg("--target-dir")
            .arg(&target_dir);
        for package in self.packages {
            cmd.arg("-p").arg(package);
        }
        if let Some(features) = self.features {
            cmd.arg("--features").arg(features);
        }
        for (bin, _) in self.bins {
            cmd.arg("--bin").arg(bin);
        }
        scrub_outer_build_env(&mut cmd);
        // crt-static on the gnu target yields a static-pie. Stripping keeps the binaries (and
        // the initramfs read on every boot) small.
        cmd.env(
            "CARGO_ENCODED_RUSTFLAGS",
            ["-C", "target-feature=+crt-static", "-C", "strip=symbols"].join("\x1f"),
        );

        let what = format!(
            "`cargo build --release -p {} --target {TARGET}`",
            self.packages.join(" -p ")
        );
        let output = match cmd.output() {
            Ok(o) => o,
            Err(e) => panic!("could not run the nested {what}: {e}"),
        };
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            panic!(
                "nested {what} failed ({}); target dir {}.\n--- stderr (tail) ---\n{}",
                output.status,
                target_dir.display(),
                tail.join("\n")
            );
        }

        let bin_dir = target_dir.join(TARGET).join("release");
        let mut paths = Vec::new();
        for (bin, var) in self.bins {
            let path = bin_dir.join(bin);
            if !path.is_file() {
                panic!("nested build succeeded but {} is missing", path.display());
            }
            println!("cargo:rustc-env={var}={}", path.display());
            paths.push(path);
        }
        paths
    }
}

/// Reruns the build script when anything the crate is built from changes: its manifest,
/// `src`, and other inputs beside them (the guest agent embeds its REPL drivers from
/// `drivers/`). Tests, fuzzing and build output are left out: they are not inputs, and a
/// fuzz corpus changes all the time.
fn watch_sources(dir: &Path) {
    const NOT_INPUTS: [&str; 5] = ["target", "fuzz", "tests", "benches", "examples"];
    let Ok(entries) = std::fs::read_dir(dir) else {
        println!("cargo:rerun-if-changed={}", dir.display());
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if NOT_INPUTS.iter().any(|n| name == *n) {
            continue;
        }
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
}

/// The outer cargo exports variables describing *this* build script (CARGO_PKG_*,
/// CARGO_CFG_*, CARGO_ENCODED_RUSTFLAGS, ...). Passed through, they would leak host flags and
/// wrappers into the nested build and change its fingerprint on every host build.
fn scrub_outer_build_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let drop = (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || matches!(
                key,
                "RUSTFLAGS"
                    | "RUSTC_WRAPPER"
                    | "RUSTC_WORKSPACE_WRAPPER"
                    | "RUSTDOCFLAGS"
                    | "CARGO"
                    | "RUSTC"
                    | "TARGET"
                    | "HOST"
                    | "OUT_DIR"
                    | "OPT_LEVEL"
                    | "PROFILE"
                    | "DEBUG"
                    | "NUM_JOBS"
            );
        if drop {
            cmd.env_remove(key);
        }
    }
}
