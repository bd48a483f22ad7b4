#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit tests and the VM tests (real QEMU
# guests; under TCG when KVM is unusable). Installs missing host packages first and builds
# the guest images into the user cache dir (reused on later runs).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh --deps-only
cargo fmt --all -- --check
# --all-features: the network process (`net`'s `stack` feature) is only a nested static
# build otherwise, and its own lints and tests would not run.
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings
cargo build --workspace --locked
./target/debug/sbx images build --quiet
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --locked --no-fail-fast
else
  cargo test --workspace --all-features --locked --no-fail-fast
fi
