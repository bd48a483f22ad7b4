//! The network flags shared by `sbx run` and `sbx session`: `--expose`, `--network`,
//! `--allow-domain`, `--allow-range`, turned into the library's policy and port mappings,
//! and the line that tells the user where a forwarded port is reachable.

use sandbox::{ExposedPort, NetworkPolicy, Outbound, PortMapping, PortProtocol};

use crate::cli::NetArgs;
use crate::run::InputError;

/// The policy and the forwards the flags ask for. Values the library checks itself
/// (ranges of ports, domain syntax, limits) are left to its validation, so the messages
/// are the same whichever way a request comes in.
pub fn from_args(args: &NetArgs) -> Result<(NetworkPolicy, Vec<PortMapping>), InputError> {
    let ports = args
        .expose
        .iter()
        .map(|spec| parse_expose(spec))
        .collect::<Result<Vec<_>, _>>()?;
    let outbound = if args.network {
        Outbound::Full
    } else if !args.allow_domain.is_empty() {
        Outbound::Allowlist {
            domains: args.allow_domain.clone(),
        }
    } else {
        Outbound::None
    };
    if outbound == Outbound::None && !args.allow_range.is_empty() {
        return Err(InputError::Usage(
            "--allow-range opens a destination range for outbound traffic: use it with --network or --allow-domain".into(),
        ));
    }
    let policy = NetworkPolicy {
        outbound,
        allow_ranges: args.allow_range.clone(),
    };
    Ok((policy, ports))
}

/// `INTERNAL[:EXTERNAL][/tcp|/udp]`, e.g. `8000`, `8000:9000`, `5353/udp`.
pub fn parse_expose(spec: &str) -> Result<PortMapping, InputError> {
    let bad = |why: &str| {
        InputError::Usage(format!(
            "--expose {spec:?}: {why} (expected INTERNAL[:EXTERNAL][/tcp|/udp], e.g. 8000 or 8000:9000/tcp)"
        ))
    };
    let (ports, protocol) = match spec.split_once('/') {
        None => (spec, PortProtocol::Tcp),
        Some((ports, proto)) => match proto.to_ascii_lowercase().as_str() {
            "tcp" => (ports, PortProtocol::Tcp),
            "udp" => (ports, PortProtocol::Udp),
            _ => return Err(bad("the protocol must be tcp or udp")),
        },
    };
    let port = |s: &str, which: &str| {
        s.parse::<u16>().map_err(|_| {
            bad(&format!(
                "the {which} port {s:?} is not a number from 1 to 65535"
            ))
        })
    };
    let (internal, external) = match ports.split_once(':') {
        None => (port(ports, "guest")?, None),
        Some((i, e)) => (port(i, "guest")?, Some(port(e, "host")?)),
    };
    Ok(PortMapping {
        internal,
        external,
        protocol,
    })
}

/// The line that tells where a forwarded port is, e.g.
/// `sbx: guest port 8000/tcp is at http://127.0.0.1:40311`.
pub fn describe(port: &ExposedPort) -> String {
    let protocol = match port.protocol {
        PortProtocol::Tcp => "tcp",
        PortProtocol::Udp => "udp",
    };
    match &port.url {
        Some(url) => format!("guest port {}/{protocol} is at {url}", port.internal),
        None => format!(
            "guest port {}/{protocol} is at {}:{}",
            port.internal, port.host, port.external
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expose_specs_parse() {
        let p = parse_expose("8000").unwrap();
        assert_eq!(
            (p.internal, p.external, p.protocol),
            (8000, None, PortProtocol::Tcp)
        );
        let p = parse_expose("8000:9000/UDP").unwrap();
        assert_eq!(
            (p.internal, p.external, p.protocol),
            (8000, Some(9000), PortProtocol::Udp)
        );
        for bad in [
            "",
            "x",
            "8000/sctp",
            "70000",
            "8000:",
            ":9000",
            "-1",
            "8000:9000:1",
            "8000/",
        ] {
            assert!(parse_expose(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_range_alone_is_a_usage_error() {
        let args = NetArgs {
            allow_range: vec!["127.0.0.0/8".into()],
            ..NetArgs::default()
        };
        assert!(from_args(&args).is_err());
        let args = NetArgs {
            network: true,
            allow_range: vec!["127.0.0.0/8".into()],
            ..NetArgs::default()
        };
        let (policy, _) = from_args(&args).unwrap();
        assert_eq!(policy.outbound, Outbound::Full);
    }
}
