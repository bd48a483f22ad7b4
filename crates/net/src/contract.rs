//! The `sbx-net` process contract: the JSON lines on its stdin and stdout.
//!
//! This module owns only data types. It depends on serde alone so that the `sandbox` crate
//! can speak the contract without pulling in the network stack (`net` with
//! `default-features = false`).
//!
//! Protocol: stdin line 1 is a [`Config`]; the process answers one [`Response::Ready`] or
//! [`Response::Error`] line. After ready, every stdin line is a [`Request`] and gets one
//! response line. stdin EOF makes the process exit 0.

use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

/// Default upstream TCP connect timeout, also the timeout for the guest answering an inbound
/// (port-forward) connection.
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Most events of each kind in one [`Report`]; the rest are counted in `dropped_events`.
pub const MAX_EVENTS_PER_REPORT: usize = 1000;

/// What the guest may reach.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Host-to-guest port forwards only; the guest cannot initiate anything.
    PortsOnly,
    /// DNS only for listed domains; TLS on 443 only with a matching SNI.
    Allowlist,
    /// Any public destination.
    Full,
}

/// Transport protocol of a forward or a connection.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Lower-case name, as in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A requested port forward: host 127.0.0.1:`external` to guest port `internal`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward {
    pub internal: u16,
    /// `None`: the OS picks a free port (bind port 0), reported in [`Response::Ready`].
    #[serde(default)]
    pub external: Option<u16>,
    pub protocol: Protocol,
}

/// A forward as actually bound.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundForward {
    pub internal: u16,
    pub external: u16,
    pub protocol: Protocol,
}

/// stdin line 1.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Config {
    /// The unix socket QEMU listens on (`-netdev stream,server=on`).
    pub qemu_socket: PathBuf,
    pub mode: Mode,
    /// Lower-case domains without a trailing dot; a name matches itself and its subdomains.
    #[serde(default)]
    pub allow_domains: Vec<String>,
    /// IPv4 CIDRs (e.g. `127.0.0.0/8`) the guest may reach although private, loopback or
    /// link-local.
    #[serde(default)]
    pub allow_ranges: Vec<String>,
    /// Default: the first `nameserver` of `/etc/resolv.conf`, port 53.
    #[serde(default)]
    pub upstream_dns: Option<SocketAddr>,
    #[serde(default)]
    pub forwards: Vec<Forward>,
    /// Default [`DEFAULT_CONNECT_TIMEOUT_MS`].
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
}

/// A stdin line after ready.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// `{"report":null}`: the events since the previous report.
    Report(()),
}

/// Why the process could not start.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The config line is not valid.
    Config,
    /// A forward could not be bound on the host.
    Bind,
    /// QEMU's socket could not be reached.
    QemuSocket,
}

/// A stdout line.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Every forward is bound and QEMU is connected.
    Ready { forwards: Vec<BoundForward> },
    /// Start-up failed; the process exits 1 after this line.
    Error { kind: ErrorKind, message: String },
    /// Answer to [`Request::Report`].
    Report(Report),
}

/// Events since the previous report.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct Report {
    pub dns: Vec<DnsEvent>,
    pub connections: Vec<ConnEvent>,
    pub inbound: Vec<InboundEvent>,
    /// Events left out because a list reached [`MAX_EVENTS_PER_REPORT`].
    pub dropped_events: u64,
}

/// One guest DNS query.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct DnsEvent {
    /// Lower-case, no trailing dot.
    pub name: String,
    /// Record type as text: "A", "AAAA", ...
    pub qtype: String,
    pub allowed: bool,
    pub reason: Option<String>,
    /// The addresses the guest was given (after loopback translation).
    pub answers: Vec<Ipv4Addr>,
}

/// One guest-initiated connection (TCP) or flow (UDP).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ConnEvent {
    pub protocol: Protocol,
    /// The destination as the guest addressed it.
    pub dst: Ipv4Addr,
    pub port: u16,
    /// The TLS SNI, or a DNS name the guest was given for `dst`.
    pub name: Option<String>,
    pub allowed: bool,
    pub reason: Option<String>,
    /// Guest to remote.
    pub bytes_out: u64,
    /// Remote to guest.
    pub bytes_in: u64,
    /// Still open at report time; reported again, updated, until closed.
    pub open: bool,
}

/// One host connection (TCP) or peer flow (UDP) through a port forward.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct InboundEvent {
    pub protocol: Protocol,
    pub internal: u16,
    pub external: u16,
    /// The host client.
    pub peer: SocketAddr,
    /// Host to guest.
    pub bytes_in: u64,
    /// Guest to host.
    pub bytes_out: u64,
    /// Why it failed, e.g. "guest port not listening".
    pub reason: Option<String>,
    pub open: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_example_parses() {
        let line = r#"{"qemu_socket":"/tmp/x/net.sock","mode":"allowlist",
            "allow_domains":["allowed.test"],"allow_ranges":["127.0.0.0/8"],
            "upstream_dns":"127.0.0.1:53",
            "forwards":[{"internal":8000,"external":null,"protocol":"tcp"}],
            "connect_timeout_ms":10000}"#;
        let config: Config = serde_json::from_str(line).expect("parses");
        assert_eq!(config.mode, Mode::Allowlist);
        assert_eq!(config.forwards[0].external, None);
        assert_eq!(
            config.upstream_dns,
            Some("127.0.0.1:53".parse().expect("addr"))
        );
        let minimal: Config =
            serde_json::from_str(r#"{"qemu_socket":"/s","mode":"full"}"#).expect("minimal");
        assert!(minimal.forwards.is_empty());
    }

    #[test]
    fn lines_have_the_documented_shape() {
        let ready = Response::Ready {
            forwards: vec![BoundForward {
                internal: 8000,
                external: 41234,
                protocol: Protocol::Tcp,
            }],
        };
        assert_eq!(
            serde_json::to_string(&ready).expect("json"),
            r#"{"ready":{"forwards":[{"internal":8000,"external":41234,"protocol":"tcp"}]}}"#
        );
        let request: Request = serde_json::from_str(r#"{"report":null}"#).expect("request");
        assert_eq!(request, Request::Report(()));
        let error = Response::Error {
            kind: ErrorKind::QemuSocket,
            message: "x".into(),
        };
        assert_eq!(
            serde_json::to_string(&error).expect("json"),
            r#"{"error":{"kind":"qemu_socket","message":"x"}}"#
        );
        let report = Response::Report(Report::default());
        let text = serde_json::to_string(&report).expect("json");
        assert_eq!(
            serde_json::from_str::<Response>(&text).expect("back"),
            report
        );
    }
}
