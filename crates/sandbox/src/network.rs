//! What a caller asks of the guest's network, and what it gets back: the policy
//! ([`NetworkPolicy`]), port forwards ([`PortMapping`] → [`ExposedPort`]) and the checks they
//! pass before a VM starts. The network itself runs in the `net` crate's per-VM process;
//! this module only describes it and translates the request into that process's config.

use std::net::IpAddr;

use serde::Serialize;

use crate::validate::ValidationError;

/// What the guest did on the network during one call, as the network process saw it.
pub use net::contract::{ConnEvent, DnsEvent, InboundEvent, Report as NetworkReport};

/// At most this many port forwards per VM.
pub const MAX_EXPOSED_PORTS: usize = 10;
/// At most this many allowlisted domains, and opted-in destination ranges.
pub const MAX_ALLOW_DOMAINS: usize = 100;
pub const MAX_ALLOW_RANGES: usize = 32;

/// Where the guest may connect to. The default is [`Outbound::None`]: no network interface
/// at all, unless ports are exposed, in which case the guest gets one that only carries
/// the forwarded connections.
///
/// ```
/// use sandbox::{NetworkPolicy, Outbound};
///
/// let policy = NetworkPolicy::allowlist(["api.example.com"]);
/// assert!(matches!(policy.outbound, Outbound::Allowlist { .. }));
/// assert!(sandbox::NetworkPolicy::default().outbound == Outbound::None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NetworkPolicy {
    pub outbound: Outbound,
    /// Destination ranges (CIDR, IPv4) the guest may reach although they are private,
    /// loopback or link-local, which are refused otherwise. Host loopback (`127.0.0.0/8`)
    /// is reached through translated addresses (see the README).
    pub allow_ranges: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum Outbound {
    /// The guest cannot resolve names or open connections.
    #[default]
    None,
    /// Names resolve only when on the list (a domain also allows its subdomains); TCP only
    /// to port 443 with a TLS SNI that is on the list and that DNS gave for that address.
    Allowlist { domains: Vec<String> },
    /// Any public destination, TCP or UDP.
    Full,
}

impl NetworkPolicy {
    pub fn allowlist<S: Into<String>>(domains: impl IntoIterator<Item = S>) -> Self {
        NetworkPolicy {
            outbound: Outbound::Allowlist {
                domains: domains.into_iter().map(Into::into).collect(),
            },
            allow_ranges: Vec::new(),
        }
    }

    pub fn full() -> Self {
        NetworkPolicy {
            outbound: Outbound::Full,
            allow_ranges: Vec::new(),
        }
    }

    /// Adds an opted-in destination range.
    pub fn allow_range(mut self, cidr: impl Into<String>) -> Self {
        self.allow_ranges.push(cidr.into());
        self
    }
}

/// The transport of a forwarded port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

/// A guest port to make reachable from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortMapping {
    /// The port a server in the guest listens on (bound to `0.0.0.0`, `::` or `127.0.0.1`).
    pub internal: u16,
    /// The host port (on 127.0.0.1); `None` lets the OS pick a free one.
    pub external: Option<u16>,
    pub protocol: PortProtocol,
}

impl PortMapping {
    pub fn tcp(internal: u16) -> Self {
        PortMapping {
            internal,
            external: None,
            protocol: PortProtocol::Tcp,
        }
    }
}

/// A forward as it was set up: where on the host the guest port is reachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExposedPort {
    pub internal: u16,
    pub external: u16,
    pub protocol: PortProtocol,
    /// Always `127.0.0.1`: forwards never listen on other interfaces.
    pub host: String,
    /// `http://127.0.0.1:<external>` (TCP only).
    pub url: Option<String>,
}

impl ExposedPort {
    pub(crate) fn new(internal: u16, external: u16, protocol: PortProtocol) -> Self {
        ExposedPort {
            internal,
            external,
            protocol,
            host: "127.0.0.1".into(),
            url: (protocol == PortProtocol::Tcp).then(|| format!("http://127.0.0.1:{external}")),
        }
    }
}

/// Checks the ports and the policy; the first problem found is returned.
pub fn validate_network(
    policy: &NetworkPolicy,
    ports: &[PortMapping],
) -> Result<(), ValidationError> {
    validate_ports(ports)?;
    if let Outbound::Allowlist { domains } = &policy.outbound {
        if domains.is_empty() {
            return Err(ValidationError::Network {
                reason: "an allowlist needs at least one domain".into(),
            });
        }
        if domains.len() > MAX_ALLOW_DOMAINS {
            return Err(ValidationError::Network {
                reason: format!(
                    "{} domains, over the limit of {MAX_ALLOW_DOMAINS}",
                    domains.len()
                ),
            });
        }
        for d in domains {
            normalize_domain(d)?;
        }
    }
    if policy.allow_ranges.len() > MAX_ALLOW_RANGES {
        return Err(ValidationError::Network {
            reason: format!(
                "{} destination ranges, over the limit of {MAX_ALLOW_RANGES}",
                policy.allow_ranges.len()
            ),
        });
    }
    for r in &policy.allow_ranges {
        parse_range(r)?;
    }
    Ok(())
}

fn validate_ports(ports: &[PortMapping]) -> Result<(), ValidationError> {
    let bad = |reason: String| Err(ValidationError::Ports { reason });
    if ports.len() > MAX_EXPOSED_PORTS {
        return bad(format!(
            "{} ports, over the limit of {MAX_EXPOSED_PORTS}",
            ports.len()
        ));
    }
    for (i, p) in ports.iter().enumerate() {
        if p.internal == 0 {
            return bad("internal port 0 is not a port".into());
        }
        if p.external == Some(0) {
            return bad(format!(
                "external port 0 for {}: leave it out to let the system pick one",
                p.internal
            ));
        }
        for q in &ports[..i] {
            if q.internal == p.internal && q.protocol == p.protocol {
                return bad(format!(
                    "guest port {}/{} is exposed twice",
                    p.internal,
                    protocol_name(p.protocol)
                ));
            }
            if p.external.is_some() && q.external == p.external && q.protocol == p.protocol {
                return bad(format!(
                    "host port {}/{} is used twice",
                    p.external.unwrap_or_default(),
                    protocol_name(p.protocol)
                ));
            }
        }
    }
    Ok(())
}

fn protocol_name(p: PortProtocol) -> &'static str {
    match p {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    }
}

/// A domain as the allowlist compares it: lowercase, without a trailing dot. Refuses what
/// is not a host name (IP literals, wildcards, empty labels, bad characters, over-long).
pub fn normalize_domain(domain: &str) -> Result<String, ValidationError> {
    let bad = |reason: &str| {
        Err(ValidationError::Domain {
            domain: domain.chars().take(300).collect(),
            reason: reason.to_string(),
        })
    };
    let name = domain
        .strip_suffix('.')
        .unwrap_or(domain)
        .to_ascii_lowercase();
    if name.is_empty() {
        return bad("is empty");
    }
    if name.parse::<IpAddr>().is_ok() {
        return bad("is an IP address; the allowlist holds names (opt in to addresses with a destination range)");
    }
    if name.contains('*') {
        return bad("has a wildcard; a listed domain already allows its subdomains");
    }
    if name.len() > 253 {
        return bad("is over 253 characters");
    }
    if !name.contains('.') {
        // `com` or `test` would allow every name under that top-level domain.
        return bad("is a single label (a top-level domain would allow every name under it): list the domain itself, e.g. example.com");
    }
    for label in name.split('.') {
        if label.is_empty() {
            return bad("has an empty label");
        }
        if label.len() > 63 {
            return bad("has a label over 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad("has a character other than letters, digits, '-' and '_' (write internationalised names in their xn-- form)");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("has a label that starts or ends with '-'");
        }
    }
    Ok(name)
}

/// An opted-in destination range: IPv4 CIDR (a bare address means just that address).
pub fn parse_range(range: &str) -> Result<ipnet::Ipv4Net, ValidationError> {
    let bad = |reason: &str| {
        Err(ValidationError::Range {
            range: range.chars().take(100).collect(),
            reason: reason.to_string(),
        })
    };
    let parsed = match range.parse::<ipnet::IpNet>() {
        Ok(net) => net,
        Err(_) => match range.parse::<IpAddr>() {
            Ok(addr) => ipnet::IpNet::from(addr),
            Err(_) => return bad("is not an address range such as 127.0.0.0/8"),
        },
    };
    match parsed {
        ipnet::IpNet::V4(net) => Ok(net.trunc()),
        ipnet::IpNet::V6(_) => bad("is IPv6; the guest network is IPv4 only"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_normalise_or_are_refused_with_a_reason() {
        assert_eq!(normalize_domain("Allowed.TEST.").unwrap(), "allowed.test");
        assert_eq!(normalize_domain("a-b_c.example").unwrap(), "a-b_c.example");
        for bad in [
            "",
            ".",
            "1.2.3.4",
            "::1",
            "*.example.com",
            "a..b",
            "-a.com",
            "a-.com",
            "a b.com",
            "ä.com",
            "http://x.com",
            "com",
            "test.",
        ] {
            let err = normalize_domain(bad).unwrap_err();
            assert_eq!(err.field(), "network", "{bad}: {err}");
        }
        assert!(normalize_domain(&format!("{}.com", "a".repeat(64))).is_err());
        assert!(normalize_domain(&format!("{}a", "a.".repeat(127))).is_err());
    }

    #[test]
    fn ranges_are_ipv4_cidrs() {
        assert_eq!(
            parse_range("127.0.0.1/8").unwrap().to_string(),
            "127.0.0.0/8"
        );
        assert_eq!(parse_range("10.1.2.3").unwrap().to_string(), "10.1.2.3/32");
        for bad in ["", "10.0.0.0/33", "fd00::/8", "example.com", "10.0.0/8"] {
            assert!(parse_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_are_checked() {
        let ok = [
            PortMapping::tcp(8000),
            PortMapping {
                internal: 8000,
                external: Some(9000),
                protocol: PortProtocol::Udp,
            },
        ];
        assert!(validate_network(&NetworkPolicy::default(), &ok).is_ok());
        let too_many: Vec<_> = (1..=11).map(PortMapping::tcp).collect();
        for bad in [
            vec![PortMapping::tcp(0)],
            vec![PortMapping::tcp(80), PortMapping::tcp(80)],
            vec![PortMapping {
                external: Some(0),
                ..PortMapping::tcp(80)
            }],
            vec![
                PortMapping {
                    external: Some(9000),
                    ..PortMapping::tcp(80)
                },
                PortMapping {
                    external: Some(9000),
                    ..PortMapping::tcp(81)
                },
            ],
            too_many,
        ] {
            let err = validate_network(&NetworkPolicy::default(), &bad).unwrap_err();
            assert_eq!(err.field(), "expose_ports", "{bad:?}: {err}");
        }
    }

    #[test]
    fn policies_are_checked() {
        assert!(validate_network(&NetworkPolicy::allowlist(Vec::<String>::new()), &[]).is_err());
        assert!(validate_network(&NetworkPolicy::allowlist(["ok.test"]), &[]).is_ok());
        assert!(validate_network(&NetworkPolicy::allowlist(["bad domain"]), &[]).is_err());
        assert!(validate_network(&NetworkPolicy::full().allow_range("127.0.0.0/8"), &[]).is_ok());
        assert!(validate_network(&NetworkPolicy::full().allow_range("nope"), &[]).is_err());
    }
}
