//! The policy: which names the guest may resolve and which destinations it may reach.
//!
//! Built once from the [`Config`]; every decision the process makes about guest traffic asks
//! this module, so the rules live in one place.

use crate::addr::{host_addresses, is_this_host, restricted_kind, translate_loopback, untranslate};
use crate::contract::{Config, Mode};
use ipnet::Ipv4Net;
use std::net::Ipv4Addr;
use thiserror::Error;

/// The only TCP port the allowlist mode lets through (TLS, so the SNI can be checked).
pub const HTTPS_PORT: u16 = 443;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("allow_ranges: {0:?} is not an IPv4 CIDR (e.g. 127.0.0.0/8)")]
    BadRange(String),
    #[error("allow_domains: {0:?} is not a domain name")]
    BadDomain(String),
}

/// The decision rules, from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    domains: Vec<String>,
    ranges: Vec<Ipv4Net>,
    /// The host's own addresses, refused like loopback unless opted in.
    host: Vec<Ipv4Addr>,
    /// Also ask the kernel, per destination, whether it is this host (see
    /// [`crate::addr::is_this_host`]); off for policies built in tests and fuzzing.
    route_check: bool,
}

impl Policy {
    pub fn new(mode: Mode, domains: &[String], ranges: &[String]) -> Result<Policy, PolicyError> {
        let domains = domains
            .iter()
            .map(|domain| {
                let normal = normalize_name(domain);
                if normal.is_empty() || normal.contains(|c: char| c.is_whitespace() || c == '/') {
                    Err(PolicyError::BadDomain(domain.clone()))
                } else {
                    Ok(normal)
                }
            })
            .collect::<Result<_, _>>()?;
        let ranges = ranges
            .iter()
            .map(|range| {
                range
                    .trim()
                    .parse::<Ipv4Net>()
                    .map_err(|_| PolicyError::BadRange(range.clone()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            mode,
            domains,
            ranges,
            host: Vec::new(),
            route_check: false,
        })
    }

    /// The policy for the process: the config's rules, with this host's own addresses.
    pub fn from_config(config: &Config) -> Result<Policy, PolicyError> {
        let mut policy = Policy::new(config.mode, &config.allow_domains, &config.allow_ranges)?
            .with_host_addresses(host_addresses());
        policy.route_check = true;
        Ok(policy)
    }

    /// Refuses these addresses as the host's own (besides its loopback, which is refused
    /// by class).
    pub fn with_host_addresses(mut self, host: Vec<Ipv4Addr>) -> Policy {
        self.host = host;
        self
    }

    /// Why `ip` is not reachable unless opted in: its class, or being this host's.
    fn restricted(&self, ip: Ipv4Addr) -> Option<&'static str> {
        restricted_kind(ip).or_else(|| {
            let own = self.host.contains(&ip) || (self.route_check && is_this_host(ip));
            own.then_some("this host's own address")
        })
    }

    /// Whether `name` equals, or is a subdomain of, a listed domain.
    pub fn domain_allowed(&self, name: &str) -> bool {
        let name = normalize_name(name);
        self.domains.iter().any(|domain| {
            name == *domain
                || (name.len() > domain.len()
                    && name.ends_with(domain.as_str())
                    && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
        })
    }

    /// Whether `ip` (a host address) is inside an opted-in destination range.
    pub fn in_ranges(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|range| range.contains(&ip))
    }

    /// The host address to connect to for guest destination `dst`, or why it is refused.
    pub fn destination(&self, dst: Ipv4Addr) -> Result<Ipv4Addr, String> {
        let host = untranslate(dst);
        match self.restricted(host) {
            Some(kind) if !self.in_ranges(host) => Err(format!(
                "destination {dst} is {kind} (opt in with a destination range)"
            )),
            _ => Ok(host),
        }
    }

    /// The address to hand the guest for an upstream A record `ip`, or why it is removed.
    pub fn answer_address(&self, ip: Ipv4Addr) -> Result<Ipv4Addr, String> {
        if ip.octets()[0] == 127 {
            if !self.in_ranges(ip) {
                return Err(format!("{ip} is loopback"));
            }
            return translate_loopback(ip).ok_or_else(|| {
                format!("{ip} is loopback outside 127.0.0.0/15 (cannot be translated)")
            });
        }
        match self.restricted(ip) {
            // Includes 198.18.0.0/15: the translated block must stay unambiguous in every mode.
            Some(kind @ "reserved") => Err(format!("{ip} is {kind}")),
            Some(kind) if self.mode == Mode::Allowlist && !self.in_ranges(ip) => {
                Err(format!("{ip} is {kind}"))
            }
            _ => Ok(ip),
        }
    }
}

/// Lower case, no trailing dot: the form names are compared and reported in.
pub fn normalize_name(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(mode: Mode) -> Policy {
        Policy::new(mode, &["allowed.test".into()], &["127.0.0.0/8".into()]).expect("valid")
    }

    #[test]
    fn suffix_rule() {
        let policy = policy(Mode::Allowlist);
        assert!(policy.domain_allowed("allowed.test"));
        assert!(policy.domain_allowed("www.Allowed.Test."));
        assert!(!policy.domain_allowed("notallowed.test"));
        assert!(!policy.domain_allowed("test"));
    }

    #[test]
    fn destinations() {
        let policy = policy(Mode::Full);
        assert_eq!(
            policy.destination(Ipv4Addr::new(198, 18, 0, 7)),
            Ok(Ipv4Addr::new(127, 0, 0, 7))
        );
        assert_eq!(
            policy.destination(Ipv4Addr::new(10, 1, 2, 3)),
            Err("destination 10.1.2.3 is private (opt in with a destination range)".into())
        );
        assert!(policy
            .destination(Ipv4Addr::new(169, 254, 169, 254))
            .is_err());
        assert!(policy.destination(Ipv4Addr::new(1, 1, 1, 1)).is_ok());
        let closed = Policy::new(Mode::Full, &[], &[]).expect("valid");
        assert!(closed.destination(Ipv4Addr::new(198, 18, 0, 1)).is_err());
        // The host's own public address is the host, like its loopback.
        let own = Ipv4Addr::new(192, 0, 2, 2);
        let hosted = Policy::new(Mode::Full, &[], &[])
            .expect("valid")
            .with_host_addresses(vec![own]);
        assert_eq!(
            hosted.destination(own),
            Err("destination 192.0.2.2 is this host's own address (opt in with a destination range)".into())
        );
        let allowlisted = Policy::new(Mode::Allowlist, &["a.test".into()], &[])
            .expect("valid")
            .with_host_addresses(vec![own]);
        assert!(allowlisted.answer_address(own).is_err());
        let opted = Policy::new(Mode::Full, &[], &["192.0.2.2/32".into()])
            .expect("valid")
            .with_host_addresses(vec![own]);
        assert_eq!(opted.destination(own), Ok(own));
    }

    #[test]
    fn answers() {
        let policy = policy(Mode::Allowlist);
        assert_eq!(
            policy.answer_address(Ipv4Addr::new(127, 0, 0, 1)),
            Ok(Ipv4Addr::new(198, 18, 0, 1))
        );
        assert!(policy
            .answer_address(Ipv4Addr::new(192, 168, 1, 1))
            .is_err());
        assert!(policy.answer_address(Ipv4Addr::new(198, 18, 1, 1)).is_err());
        assert_eq!(
            policy.answer_address(Ipv4Addr::new(1, 2, 3, 4)),
            Ok(Ipv4Addr::new(1, 2, 3, 4))
        );
        let full = Policy::new(Mode::Full, &[], &[]).expect("valid");
        assert!(full.answer_address(Ipv4Addr::new(192, 168, 1, 1)).is_ok());
        assert!(full.answer_address(Ipv4Addr::new(127, 0, 0, 1)).is_err());
    }

    #[test]
    fn bad_config() {
        assert!(Policy::new(Mode::Full, &[], &["nope".into()]).is_err());
        assert!(Policy::new(Mode::Full, &[".".into()], &[]).is_err());
    }
}
