//! `net`: the per-VM user-mode network process `sbx-net` and its stdin/stdout contract.
//!
//! Without features only [`contract`] is built (serde types, for the `sandbox` crate). The
//! `stack` feature adds the process: a smoltcp stack that is the guest's gateway (10.0.2.2),
//! terminates guest TCP, re-originates it from the host under the [`policy`], and serves the
//! guest's DNS.

pub mod contract;

#[cfg(feature = "stack")]
pub mod addr;
#[cfg(feature = "stack")]
pub mod dns;
#[cfg(feature = "stack")]
pub mod frame;
#[cfg(feature = "stack")]
pub mod policy;
#[cfg(feature = "stack")]
pub mod reassembly;
#[cfg(feature = "stack")]
pub mod tls;

#[cfg(feature = "stack")]
mod device;
#[cfg(feature = "stack")]
pub mod engine;
#[cfg(feature = "stack")]
mod events;
#[cfg(feature = "stack")]
mod host;
#[cfg(feature = "stack")]
pub mod process;
#[cfg(feature = "stack")]
mod tcp;
#[cfg(feature = "stack")]
pub use tcp::GUEST_NOT_LISTENING;
#[cfg(feature = "stack")]
mod udp;
#[cfg(feature = "stack")]
pub mod wire;
