//! The guest resolver: `dns::handle_query` and, for forwarded queries, `dns::filter_answer`.
//!
//! Input layout: a big-endian u16 `n`, then the query (`n` bytes, clamped to what is left),
//! then the upstream answer (the rest).
//!
//! Each of the three modes is tried with one fixed policy (allow `allowed.test`, range
//! 127.0.0.0/8). Checks: no panic; replies and filtered answers fit one UDP datagram
//! (`MAX_UDP_ANSWER`), as their callers rely on; `filter_answer` only ever gives the guest
//! translated/opted-in addresses: never 127/8, a 198.18/15 address only for an opted-in host
//! loopback, and in allowlist mode only addresses `Policy::destination` accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::addr::{is_translated, untranslate};
use net::contract::Mode;
use net::dns::{filter_answer, handle_query, QueryDecision, MAX_UDP_ANSWER};
use net::policy::Policy;
use std::sync::OnceLock;

fn policies() -> &'static [Policy; 3] {
    static POLICIES: OnceLock<[Policy; 3]> = OnceLock::new();
    POLICIES.get_or_init(|| {
        let make = |mode| {
            Policy::new(mode, &["allowed.test".to_string()], &["127.0.0.0/8".to_string()])
                .expect("valid policy")
        };
        [make(Mode::PortsOnly), make(Mode::Allowlist), make(Mode::Full)]
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let n = usize::from(u16::from_be_bytes([data[0], data[1]]));
    let rest = &data[2..];
    let (query, answer) = rest.split_at(n.min(rest.len()));

    for policy in policies() {
        match handle_query(policy, query) {
            QueryDecision::Reply { response, .. } => {
                assert!(response.len() <= MAX_UDP_ANSWER, "local reply too big");
            }
            QueryDecision::Forward(pending) => {
                assert!(policy.mode != Mode::PortsOnly, "ports-only forwarded a query");
                if policy.mode == Mode::Allowlist {
                    assert!(policy.domain_allowed(&pending.name), "forwarded a name off the list");
                }
                let filtered = filter_answer(policy, &pending, answer);
                assert!(filtered.response.len() <= MAX_UDP_ANSWER || filtered.response.is_empty());
                for (ip, names) in &filtered.names {
                    assert_eq!(names.first(), Some(&pending.name));
                    assert_ne!(ip.octets()[0], 127, "gave the guest a loopback address");
                    if is_translated(*ip) {
                        assert!(policy.in_ranges(untranslate(*ip)), "translated {ip} not opted in");
                    }
                    if policy.mode == Mode::Allowlist {
                        assert!(policy.destination(*ip).is_ok(), "allowlist gave unreachable {ip}");
                    }
                }
            }
            QueryDecision::Drop => {}
        }
    }
});
