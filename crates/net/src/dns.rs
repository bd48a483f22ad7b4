//! The guest's resolver (10.0.2.2:53): policy decisions on queries, filtering of upstream
//! answers, and the map from answered addresses to names that the SNI check relies on.
//!
//! Pure functions over bytes; the upstream round trip is done elsewhere.

use crate::contract::{DnsEvent, Mode};
use crate::policy::{normalize_name, Policy};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType};
use std::collections::{HashMap, VecDeque};
use std::net::Ipv4Addr;

/// Largest DNS payload sent over UDP to the guest: MTU 1500 less IPv4 and UDP headers. A larger
/// answer is sent truncated (TC) so the guest retries over TCP.
pub const MAX_UDP_ANSWER: usize = 1500 - 20 - 8;

/// What to do with one guest query.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryDecision {
    /// Answer the guest at once with `response`.
    Reply { response: Vec<u8>, event: DnsEvent },
    /// Send the query upstream; give the answer to [`filter_answer`].
    Forward(PendingQuery),
    /// Not a DNS query at all: ignore it.
    Drop,
}

/// A query sent upstream, kept to check and filter its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingQuery {
    pub id: u16,
    /// Normalized query name.
    pub name: String,
    pub qtype: RecordType,
    /// The guest's query bytes, forwarded unchanged.
    pub query: Vec<u8>,
    original: Message,
}

/// The guest-facing result of an upstream answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Filtered {
    pub response: Vec<u8>,
    pub event: DnsEvent,
    /// Each address given to the guest with the names it stands for (query name and CNAMEs).
    pub names: Vec<(Ipv4Addr, Vec<String>)>,
}

/// Decides on one guest query.
///
/// Faces untrusted guest bytes: never panics; a query that does not parse is dropped.
pub fn handle_query(policy: &Policy, query: &[u8]) -> QueryDecision {
    let Ok(message) = Message::from_vec(query) else {
        return QueryDecision::Drop;
    };
    if message.metadata.message_type != MessageType::Query {
        return QueryDecision::Drop;
    }
    let (name, qtype) = match message.queries.as_slice() {
        [question] if message.metadata.op_code == OpCode::Query => (
            normalize_name(&question.name().to_ascii()),
            question.query_type(),
        ),
        _ => {
            let event = event(
                "",
                "?",
                false,
                Some("not a standard query with one question"),
            );
            return reply(&message, ResponseCode::NotImp, event);
        }
    };
    let qtype_text = qtype.to_string();
    let decide = |code, allowed, reason: &str| {
        reply(
            &message,
            code,
            event(&name, &qtype_text, allowed, Some(reason)),
        )
    };
    match policy.mode {
        Mode::PortsOnly => decide(ResponseCode::Refused, false, "no network (ports only)"),
        Mode::Allowlist if !policy.domain_allowed(&name) => {
            decide(ResponseCode::NXDomain, false, "not on the allowlist")
        }
        _ if qtype == RecordType::AAAA => {
            decide(ResponseCode::NoError, true, "no IPv6 (empty answer)")
        }
        Mode::Allowlist if !matches!(qtype, RecordType::A | RecordType::CNAME) => decide(
            ResponseCode::NoError,
            true,
            "the allowlist answers only A records (empty answer)",
        ),
        _ => QueryDecision::Forward(PendingQuery {
            id: message.metadata.id,
            name,
            qtype,
            query: query.to_vec(),
            original: message,
        }),
    }
}

/// Filters an upstream answer to `pending` for the guest: AAAA removed, A records checked
/// with [`Policy::answer_address`] (loopback translated), other types kept only in full mode.
///
/// Faces untrusted bytes (the upstream server, and through it whoever controls the zone):
/// never panics; an answer that does not parse or match becomes SERVFAIL.
pub fn filter_answer(policy: &Policy, pending: &PendingQuery, answer: &[u8]) -> Filtered {
    let upstream = match Message::from_vec(answer) {
        Ok(message)
            if message.metadata.id == pending.id
                && message.metadata.message_type == MessageType::Response
                && message.queries == pending.original.queries =>
        {
            message
        }
        _ => return failure(pending, "upstream answer does not parse or match the query"),
    };
    let mut response = Message::response(pending.id, OpCode::Query);
    response.metadata = upstream.metadata;
    response.queries = upstream.queries.clone();
    response.edns = upstream.edns.clone();

    let mut chain = vec![pending.name.clone()];
    let mut given = Vec::new();
    let mut removed = Vec::new();
    for record in &upstream.answers {
        match &record.data {
            RData::A(a) => match policy.answer_address(a.0) {
                Ok(guest) => {
                    given.push(guest);
                    response.answers.push(Record::from_rdata(
                        record.name.clone(),
                        record.ttl,
                        RData::A(hickory_proto::rr::rdata::A(guest)),
                    ));
                }
                Err(reason) => removed.push(reason),
            },
            RData::CNAME(target) => {
                for name in [&record.name, &target.0] {
                    let name = normalize_name(&name.to_ascii());
                    if !chain.contains(&name) && chain.len() < 16 {
                        chain.push(name);
                    }
                }
                response.answers.push(record.clone());
            }
            RData::AAAA(_) => {}
            _ if policy.mode == Mode::Full => response.answers.push(record.clone()),
            _ => {}
        }
    }
    // Negative-caching data stays; address glue is dropped with the rest of the extras.
    response.authorities = upstream
        .authorities
        .iter()
        .filter(|record| !matches!(record.data, RData::A(_) | RData::AAAA(_)))
        .cloned()
        .collect();

    let qtype = pending.qtype.to_string();
    let event = if given.is_empty() && !removed.is_empty() {
        response.answers.clear();
        response.metadata.response_code = ResponseCode::NXDomain;
        event(
            &pending.name,
            &qtype,
            false,
            Some("resolves only to addresses the guest may not reach (private, loopback or this host)"),
        )
    } else if upstream.metadata.response_code != ResponseCode::NoError {
        let reason = format!("upstream answered {}", upstream.metadata.response_code);
        event(&pending.name, &qtype, true, Some(&reason))
    } else {
        event(&pending.name, &qtype, true, None)
    };
    let mut event = event;
    event.answers.clone_from(&given);
    let bytes = match encode_for_udp(&response) {
        Some(bytes) => bytes,
        None => return failure(pending, "answer could not be encoded"),
    };
    Filtered {
        response: bytes,
        event,
        names: given.into_iter().map(|ip| (ip, chain.clone())).collect(),
    }
}

/// SERVFAIL for `pending` (upstream timeout, too many queries outstanding...).
pub fn failure(pending: &PendingQuery, reason: &str) -> Filtered {
    let code = ResponseCode::ServFail;
    let event = event(
        &pending.name,
        &pending.qtype.to_string(),
        false,
        Some(reason),
    );
    let response = match reply(&pending.original, code, event.clone()) {
        QueryDecision::Reply { response, .. } => response,
        _ => Vec::new(),
    };
    Filtered {
        response,
        event,
        names: Vec::new(),
    }
}

fn event(name: &str, qtype: &str, allowed: bool, reason: Option<&str>) -> DnsEvent {
    DnsEvent {
        name: name.to_string(),
        qtype: qtype.to_string(),
        allowed,
        reason: reason.map(str::to_string),
        answers: Vec::new(),
    }
}

/// A local answer with no records, echoing the question.
fn reply(query: &Message, code: ResponseCode, event: DnsEvent) -> QueryDecision {
    let mut response = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    response.metadata.recursion_desired = query.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.queries = query.queries.clone();
    match encode_for_udp(&response) {
        Some(response) => QueryDecision::Reply { response, event },
        None => QueryDecision::Drop,
    }
}

/// Encodes `message`, truncating it (TC, question only) when too big for one UDP datagram.
fn encode_for_udp(message: &Message) -> Option<Vec<u8>> {
    let bytes = message.to_vec().ok()?;
    if bytes.len() <= MAX_UDP_ANSWER {
        return Some(bytes);
    }
    message
        .truncate()
        .to_vec()
        .ok()
        .filter(|bytes| bytes.len() <= MAX_UDP_ANSWER)
}

/// Addresses handed to the guest and the names each stood for. Bounded: the oldest address
/// is forgotten first, and each keeps a bounded number of names.
#[derive(Debug, Default)]
pub struct DnsMap {
    names: HashMap<Ipv4Addr, Vec<String>>,
    order: VecDeque<Ipv4Addr>,
}

impl DnsMap {
    pub const MAX_ADDRESSES: usize = 4096;
    pub const MAX_NAMES_PER_ADDRESS: usize = 32;

    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, ip: Ipv4Addr, names: &[String]) {
        if !self.names.contains_key(&ip) {
            while self.order.len() >= Self::MAX_ADDRESSES {
                if let Some(old) = self.order.pop_front() {
                    self.names.remove(&old);
                }
            }
            self.order.push_back(ip);
        }
        let known = self.names.entry(ip).or_default();
        for name in names {
            if !known.contains(name) {
                if known.len() >= Self::MAX_NAMES_PER_ADDRESS {
                    known.remove(0);
                }
                known.push(name.clone());
            }
        }
    }

    /// Whether the guest was told `ip` for `name`.
    pub fn answered(&self, ip: Ipv4Addr, name: &str) -> bool {
        self.names
            .get(&ip)
            .is_some_and(|names| names.iter().any(|known| known == name))
    }

    /// The first name the guest was given `ip` for.
    pub fn name_for(&self, ip: Ipv4Addr) -> Option<&str> {
        self.names
            .get(&ip)
            .and_then(|names| names.first())
            .map(String::as_str)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.names.contains_key(&ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::rdata::{A, CNAME};
    use hickory_proto::rr::Name;

    fn query(name: &str, qtype: RecordType) -> Vec<u8> {
        let mut message = Message::new(0x1234, MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = true;
        message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        message.to_vec().expect("encode")
    }

    fn policy(mode: Mode) -> Policy {
        Policy::new(mode, &["allowed.test".into()], &["127.0.0.0/8".into()]).expect("valid")
    }

    fn code(bytes: &[u8]) -> ResponseCode {
        Message::from_vec(bytes)
            .expect("parses")
            .metadata
            .response_code
    }

    fn answer_to(query: &[u8], records: Vec<Record>) -> Vec<u8> {
        let mut message = Message::from_vec(query).expect("query").into_response();
        message.answers = records;
        message.to_vec().expect("encode")
    }

    #[test]
    fn ports_only_refuses() {
        match handle_query(
            &policy(Mode::PortsOnly),
            &query("allowed.test.", RecordType::A),
        ) {
            QueryDecision::Reply { response, event } => {
                assert_eq!(code(&response), ResponseCode::Refused);
                assert!(!event.allowed);
                assert_eq!(event.name, "allowed.test");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn allowlist_decisions() {
        let policy = policy(Mode::Allowlist);
        let QueryDecision::Reply { response, event } =
            handle_query(&policy, &query("other.test.", RecordType::A))
        else {
            panic!("expected a reply")
        };
        assert_eq!(code(&response), ResponseCode::NXDomain);
        assert_eq!(event.reason.as_deref(), Some("not on the allowlist"));
        let QueryDecision::Reply { response, event } =
            handle_query(&policy, &query("www.allowed.test.", RecordType::AAAA))
        else {
            panic!("expected a reply")
        };
        assert_eq!(code(&response), ResponseCode::NoError);
        assert!(event.allowed);
        assert!(matches!(
            handle_query(&policy, &query("allowed.test.", RecordType::A)),
            QueryDecision::Forward(_)
        ));
        assert_eq!(
            handle_query(&policy, b"\x00\x01garbage"),
            QueryDecision::Drop
        );
    }

    #[test]
    fn answers_are_filtered_and_translated() {
        let policy = policy(Mode::Allowlist);
        let bytes = query("www.allowed.test.", RecordType::A);
        let QueryDecision::Forward(pending) = handle_query(&policy, &bytes) else {
            panic!("forward")
        };
        let owner = Name::from_ascii("www.allowed.test.").expect("name");
        let target = Name::from_ascii("cdn.allowed.test.").expect("name");
        let answer = answer_to(
            &bytes,
            vec![
                Record::from_rdata(owner, 60, RData::CNAME(CNAME(target.clone()))),
                Record::from_rdata(target.clone(), 60, RData::A(A::new(127, 0, 0, 9))),
                Record::from_rdata(target, 60, RData::A(A::new(192, 168, 0, 1))),
            ],
        );
        let filtered = filter_answer(&policy, &pending, &answer);
        assert_eq!(filtered.event.answers, vec![Ipv4Addr::new(198, 18, 0, 9)]);
        assert!(filtered.event.allowed);
        let (ip, names) = &filtered.names[0];
        assert_eq!(*ip, Ipv4Addr::new(198, 18, 0, 9));
        assert!(names.contains(&"www.allowed.test".to_string()));
        assert!(names.contains(&"cdn.allowed.test".to_string()));
        let message = Message::from_vec(&filtered.response).expect("parses");
        assert_eq!(message.answers.len(), 2);
    }

    #[test]
    fn only_private_is_refused() {
        let policy = Policy::new(Mode::Allowlist, &["allowed.test".into()], &[]).expect("valid");
        let bytes = query("allowed.test.", RecordType::A);
        let QueryDecision::Forward(pending) = handle_query(&policy, &bytes) else {
            panic!("forward")
        };
        let owner = Name::from_ascii("allowed.test.").expect("name");
        let answer = answer_to(
            &bytes,
            vec![Record::from_rdata(owner, 60, RData::A(A::new(10, 0, 0, 1)))],
        );
        let filtered = filter_answer(&policy, &pending, &answer);
        assert!(!filtered.event.allowed);
        assert_eq!(
            filtered.event.reason.as_deref(),
            Some("resolves only to addresses the guest may not reach (private, loopback or this host)")
        );
        assert_eq!(code(&filtered.response), ResponseCode::NXDomain);
        // A mismatched answer is a SERVFAIL, never a panic.
        let filtered = filter_answer(&policy, &pending, b"junk");
        assert_eq!(code(&filtered.response), ResponseCode::ServFail);
    }

    #[test]
    fn map_is_bounded() {
        let mut map = DnsMap::new();
        for i in 0..(DnsMap::MAX_ADDRESSES as u32 + 10) {
            map.insert(Ipv4Addr::from(i), &["a.test".to_string()]);
        }
        assert!(!map.contains(Ipv4Addr::from(0)));
        assert!(map.answered(Ipv4Addr::from(DnsMap::MAX_ADDRESSES as u32), "a.test"));
    }

    #[test]
    fn garbage_queries_never_panic() {
        let policy = policy(Mode::Full);
        let mut seed = 3u32;
        for len in 0..600 {
            let mut bytes = query("a.allowed.test.", RecordType::A);
            for _ in 0..(len % 7) {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let at = seed as usize % bytes.len();
                bytes[at] = (seed >> 24) as u8;
            }
            bytes.truncate(len % (bytes.len() + 1));
            if let QueryDecision::Forward(pending) = handle_query(&policy, &bytes) {
                let _ = filter_answer(&policy, &pending, &bytes);
            }
        }
    }
}
