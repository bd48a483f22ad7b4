//! The guest agent: the one process inside the VM that talks to the host.
//!
//! It owns the guest end of the virtio-serial channel ([`channel`]), the per-request guest
//! state the host hands over (clock, entropy, the code file: [`host_state`], [`code`]) and
//! the execution engine ([`engine`]) that runs code as an unprivileged user, streams its
//! output, enforces caps and timeouts and makes sure nothing the code started survives, and
//! the persistent REPLs ([`repl`]) that session calls run in.
//!
//! It must not touch mounts, modules, devices or the network (that is `guest-init`'s job),
//! and it must not know about QEMU or anything else on the host: it only speaks `protocol`.
//! The engine and the REPLs take every environment-specific value (uid, interpreter, paths)
//! as data so they can be tested on an ordinary Linux host as root.

pub mod channel;
pub mod code;
pub mod engine;
pub mod files;
pub mod host_state;
pub mod kill;
mod pump;
pub mod repl;
mod spawn;
mod watch;
