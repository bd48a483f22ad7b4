#!/usr/bin/env bash
# Sets up exec-sandbox on a Debian/Ubuntu machine: installs the host tools it needs
# (QEMU, image tools), builds `sbx`, builds the guest images and runs real code in a VM.
#
#   sudo scripts/setup.sh              # everything
#   sudo scripts/setup.sh --deps-only  # only install missing packages
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
have() { command -v "$1" >/dev/null 2>&1; }
have qemu-system-x86_64 || missing+=(qemu-system-x86)
have mmdebstrap || missing+=(mmdebstrap)
have mkfs.erofs || missing+=(erofs-utils)
have dpkg-deb || missing+=(dpkg)
have cpio || missing+=(cpio)
# mke2fs formats each VM's home disk; it lives in /sbin, off a normal user's PATH.
{ have mke2fs || [ -x /usr/sbin/mke2fs ] || [ -x /sbin/mke2fs ]; } || missing+=(e2fsprogs)
have python3 || missing+=(python3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
have npm || missing+=(npm)
have tmux || missing+=(tmux)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
[ "${1:-}" = "--deps-only" ] && exit 0

if ! have cargo; then
  echo "setup: Rust (cargo) is required; install a stable toolchain and run this again" >&2
  exit 1
fi
cargo build --release -p sbx
as_root ./target/release/sbx images build
as_root ./target/release/sbx run 'import platform; print("hello from a microVM running", platform.python_version())'
