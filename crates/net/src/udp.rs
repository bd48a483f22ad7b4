//! UDP in the engine: the guest's resolver on 10.0.2.2:53, guest UDP flows NATed to host
//! sockets (full mode), and UDP port forwards. The guest's datagrams never reach smoltcp;
//! replies are built as frames by [`crate::wire::udp_frame`].

use crate::contract::{ConnEvent, InboundEvent, Mode, Protocol};
use crate::dns::{self, PendingQuery, QueryDecision};
use crate::engine::Engine;
use crate::host;
use crate::wire::{udp_frames, GATEWAY, GUEST};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub const DNS_PORT: u16 = 53;
/// Most upstream DNS queries in flight; more get SERVFAIL at once.
pub const MAX_DNS_OUTSTANDING: usize = 64;
/// Most guest UDP flows (full mode) and, separately, inbound UDP peers.
pub const MAX_UDP_FLOWS: usize = 256;
/// A UDP flow without traffic for this long is forgotten.
pub const UDP_IDLE: Duration = Duration::from_secs(60);

pub(crate) struct UdpFlow {
    socket: Arc<UdpSocket>,
    task: JoinHandle<()>,
    last: Instant,
    event: ConnEvent,
}

pub(crate) struct InboundUdp {
    forward: usize,
    peer: SocketAddr,
    last: Instant,
    event: InboundEvent,
}

impl Engine {
    /// One datagram from the guest.
    pub(crate) fn guest_udp(&mut self, src: SocketAddrV4, dst: SocketAddrV4, payload: Vec<u8>) {
        if *dst.ip() == GATEWAY {
            if dst.port() == DNS_PORT {
                self.guest_dns(src, &payload);
            } else {
                self.inbound_udp_reply(dst.port(), &payload);
            }
            return;
        }
        let key = (src.port(), dst);
        if let Some(flow) = self.udp_flows.get_mut(&key) {
            flow.last = Instant::now();
            if flow.socket.try_send(&payload).is_ok() {
                flow.event.bytes_out += payload.len() as u64;
            }
            return;
        }
        let mut event = self.new_conn_event(Protocol::Udp, dst);
        let verdict = match self.settings.policy.mode {
            Mode::PortsOnly => Err("no network (ports only)".to_string()),
            Mode::Allowlist => Err("UDP other than DNS is not allowed (allowlist)".to_string()),
            Mode::Full if self.udp_flows.len() >= MAX_UDP_FLOWS => {
                Err(format!("too many UDP flows (at most {MAX_UDP_FLOWS})"))
            }
            Mode::Full => self.settings.policy.destination(*dst.ip()),
        };
        let host = match verdict
            .and_then(|host| open_flow_socket(SocketAddrV4::new(host, dst.port()), &payload))
        {
            Ok(socket) => socket,
            Err(reason) => {
                event.reason = Some(reason);
                self.recorder.conn(event);
                return;
            }
        };
        let socket = Arc::new(host);
        event.allowed = true;
        event.bytes_out += payload.len() as u64;
        let task = tokio::spawn(host::udp_flow_loop(
            key,
            socket.clone(),
            self.ctrl_tx.clone(),
        ));
        self.udp_flows.insert(
            key,
            UdpFlow {
                socket,
                task,
                last: Instant::now(),
                event,
            },
        );
    }

    fn guest_dns(&mut self, guest: SocketAddrV4, query: &[u8]) {
        match dns::handle_query(&self.settings.policy, query) {
            QueryDecision::Drop => {}
            QueryDecision::Reply { response, event } => {
                self.recorder.dns(event);
                self.dns_to_guest(guest, &response);
            }
            QueryDecision::Forward(pending) => {
                let upstream = match self.settings.upstream_dns {
                    Some(upstream) if self.dns_outstanding < MAX_DNS_OUTSTANDING => upstream,
                    Some(_) => {
                        return self.dns_failed(guest, &pending, "too many queries outstanding")
                    }
                    None => return self.dns_failed(guest, &pending, "no upstream resolver"),
                };
                self.dns_outstanding += 1;
                tokio::spawn(host::dns_query(
                    upstream,
                    guest,
                    Box::new(pending),
                    self.ctrl_tx.clone(),
                ));
            }
        }
    }

    fn dns_failed(&mut self, guest: SocketAddrV4, pending: &PendingQuery, reason: &str) {
        let failed = dns::failure(pending, reason);
        self.recorder.dns(failed.event);
        self.dns_to_guest(guest, &failed.response);
    }

    pub(crate) fn dns_answer(
        &mut self,
        guest: SocketAddrV4,
        pending: PendingQuery,
        answer: Option<Vec<u8>>,
    ) {
        self.dns_outstanding = self.dns_outstanding.saturating_sub(1);
        let filtered = match answer {
            Some(answer) => dns::filter_answer(&self.settings.policy, &pending, &answer),
            None => dns::failure(&pending, "upstream timeout"),
        };
        for (ip, names) in &filtered.names {
            self.dns_map.insert(*ip, names);
        }
        self.recorder.dns(filtered.event);
        self.dns_to_guest(guest, &filtered.response);
    }

    fn dns_to_guest(&mut self, guest: SocketAddrV4, response: &[u8]) {
        for frame in udp_frames(SocketAddrV4::new(GATEWAY, DNS_PORT), guest, response) {
            self.send_frame(frame);
        }
    }

    pub(crate) fn udp_reply(&mut self, key: (u16, SocketAddrV4), data: Vec<u8>) {
        let Some(flow) = self.udp_flows.get_mut(&key) else {
            return;
        };
        flow.last = Instant::now();
        // The guest sees the reply come from the address it sent to (translated or not).
        let frames = udp_frames(key.1, SocketAddrV4::new(GUEST, key.0), &data);
        if !frames.is_empty() {
            flow.event.bytes_in += data.len() as u64;
        }
        for frame in frames {
            self.send_frame(frame);
        }
    }

    /// A host peer's datagram on UDP forward `forward`: send it to the guest from a gateway
    /// port of its own, so the guest's replies can be routed back to that peer.
    pub(crate) fn inbound_udp_datagram(&mut self, forward: usize, peer: SocketAddr, data: Vec<u8>) {
        let Some(bound) = self.settings.forwards.get(forward).copied() else {
            return;
        };
        let port = match self.inbound_udp_peers.get(&(forward, peer)) {
            Some(port) => *port,
            None => {
                if self.inbound_udp.len() >= MAX_UDP_FLOWS {
                    let mut event = Engine::new_inbound_event(bound, Protocol::Udp, peer);
                    event.reason = Some(format!(
                        "too many UDP peers at once (at most {MAX_UDP_FLOWS}); dropped"
                    ));
                    self.recorder.inbound(event);
                    return;
                }
                let Some(port) = self.ports.take() else {
                    return;
                };
                let event = InboundEvent {
                    open: true,
                    ..Engine::new_inbound_event(bound, Protocol::Udp, peer)
                };
                self.inbound_udp_peers.insert((forward, peer), port);
                self.inbound_udp.insert(
                    port,
                    InboundUdp {
                        forward,
                        peer,
                        last: Instant::now(),
                        event,
                    },
                );
                port
            }
        };
        let frames = udp_frames(
            SocketAddrV4::new(GATEWAY, port),
            SocketAddrV4::new(GUEST, bound.internal),
            &data,
        );
        if frames.is_empty() {
            return;
        }
        if let Some(entry) = self.inbound_udp.get_mut(&port) {
            entry.last = Instant::now();
            entry.event.bytes_in += data.len() as u64;
        }
        for frame in frames {
            self.send_frame(frame);
        }
    }

    fn inbound_udp_reply(&mut self, port: u16, data: &[u8]) {
        let Some(entry) = self.inbound_udp.get_mut(&port) else {
            return;
        };
        let Some(socket) = self.settings.udp_sockets.get(&entry.forward) else {
            return;
        };
        if socket.try_send_to(data, entry.peer).is_ok() {
            entry.last = Instant::now();
            entry.event.bytes_out += data.len() as u64;
        }
    }

    /// Forgets UDP flows and peers idle for [`UDP_IDLE`].
    pub(crate) fn expire_udp(&mut self) {
        let now = Instant::now();
        let idle: Vec<_> = self
            .udp_flows
            .iter()
            .filter(|(_, f)| now - f.last >= UDP_IDLE)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            if let Some(flow) = self.udp_flows.remove(&key) {
                flow.task.abort();
                self.recorder.conn(ConnEvent {
                    open: false,
                    ..flow.event
                });
            }
        }
        let idle: Vec<_> = self
            .inbound_udp
            .iter()
            .filter(|(_, p)| now - p.last >= UDP_IDLE)
            .map(|(k, _)| *k)
            .collect();
        for port in idle {
            if let Some(entry) = self.inbound_udp.remove(&port) {
                self.inbound_udp_peers.remove(&(entry.forward, entry.peer));
                self.ports.release(port);
                self.recorder.inbound(InboundEvent {
                    open: false,
                    ..entry.event
                });
            }
        }
    }

    pub(crate) fn open_udp_events(&self) -> (Vec<ConnEvent>, Vec<InboundEvent>) {
        (
            self.udp_flows
                .values()
                .map(|flow| flow.event.clone())
                .map(|e| ConnEvent { open: true, ..e })
                .collect(),
            self.inbound_udp
                .values()
                .map(|entry| InboundEvent {
                    open: true,
                    ..entry.event.clone()
                })
                .collect(),
        )
    }
}

/// A host socket connected to `target` for one guest flow, after sending it `first`.
///
/// The first datagram goes out through the std socket: a freshly registered tokio socket
/// reports "would block" until the reactor has seen it writable once.
fn open_flow_socket(target: SocketAddrV4, first: &[u8]) -> Result<UdpSocket, String> {
    let socket = std::net::UdpSocket::bind(SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0))
        .and_then(|socket| socket.connect(target).map(|()| socket))
        .and_then(|socket| socket.set_nonblocking(true).map(|()| socket))
        .and_then(|socket| socket.send(first).map(|_| socket))
        .map_err(|error| format!("upstream refused: {error}"))?;
    UdpSocket::from_std(socket).map_err(|error| format!("upstream refused: {error}"))
}
