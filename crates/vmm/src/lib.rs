//! Host-side VM management for exec-sandbox: everything about running one QEMU microVM.
//!
//! This crate owns:
//! - finding QEMU and detecting its version and features ([`find_qemu`]);
//! - building the QEMU command line and guest kernel command line (`command`);
//! - the accelerator probe with its on-disk verdict cache ([`probe_accelerator`]) and
//!   other host probes ([`probe_cgroup`], [`host_tsc_khz`]);
//! - spawning QEMU so it cannot outlive its owner, the on-disk process [`Registry`] that
//!   reaps VMs left by a crashed host, and teardown;
//! - a fresh, unnamed ext4 image per boot for the guest's home directory (`scratch`);
//! - booting to the agent's `Ready` with retries ([`Vm::boot`], [`boot_with_retry`]) and
//!   the framed agent channel with frozen-VM detection ([`Vm::send`], [`Vm::recv`]).
//!
//! It must not know about languages, how images are built, or request validation: callers
//! hand it paths to a kernel, initramfs and root filesystem, and `protocol` messages that
//! they have already validated. It speaks `protocol` only to wait for `Ready` and to move
//! frames.
//!
//! Threading note: QEMU is spawned with `PR_SET_PDEATHSIG(SIGKILL)`, which Linux ties to
//! the *thread* that forked. Boot VMs from a long-lived runtime (tokio's worker threads),
//! not from short-lived threads, or the VM dies when that thread exits.

mod channel;
mod command;
mod error;
mod host;
mod instance;
mod probe;
mod process;
mod procstat;
mod qemu;
mod registry;
mod retry;
mod scratch;
mod vm;

pub use command::{kernel_cmdline, Accelerator, BASE_CMDLINE, TCG_CPU};
pub use error::{BootError, ChannelError, VmmError};
pub use host::{host_tsc_khz, probe_cgroup, CgroupInfo};
pub use probe::{probe_accelerator, AccelChoice, AccelVerdict, KVM_PROBE_DEADLINE};
pub use qemu::{find_qemu, QemuInfo, QEMU_BINARY};
pub use registry::{Entry as RegistryEntry, Registry};
pub use retry::{boot_with_retry, RetryPolicy};
pub use scratch::{find_mke2fs, scratch_on_tmpfs, HomeDiskSpec};
pub use vm::{boot_to_poweroff, Vm, VmSpec};
