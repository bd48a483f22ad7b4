//! The engine: one loop that owns the smoltcp interface and every flow's state. It reads
//! guest frames, lets the policy decide on new flows before the interface sees them, polls
//! the interface, moves bytes between smoltcp sockets and host tasks, and answers reports.
//!
//! TCP flows live in [`crate::tcp`], UDP and DNS in [`crate::udp`]; both extend [`Engine`].

use crate::contract::{BoundForward, ConnEvent, InboundEvent, Protocol, Report};
use crate::device::QueueDevice;
use crate::dns::DnsMap;
use crate::events::Recorder;
use crate::frame::FrameError;
use crate::host::Ctrl;
use crate::policy::Policy;
use crate::tcp::TcpConn;
use crate::udp::{InboundUdp, UdpFlow};
use crate::wire::{self, Inspected, GATEWAY};
use protocol::guest_net::{GATEWAY_MAC, PREFIX_LEN};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, Notify};

/// How often idle UDP flows and ClientHello deadlines are checked.
const HOUSEKEEPING: Duration = Duration::from_millis(500);

/// What the engine needs from the start-up.
pub struct Settings {
    pub policy: Policy,
    pub upstream_dns: Option<SocketAddr>,
    pub connect_timeout: Duration,
    pub forwards: Vec<BoundForward>,
    /// The host socket of each UDP forward, by forward index (replies go out through it).
    pub udp_sockets: HashMap<usize, Arc<UdpSocket>>,
}

/// Why the engine stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Exit {
    /// stdin reached EOF: the caller is done with us.
    StdinClosed,
    /// QEMU closed the socket: the VM is gone.
    QemuClosed,
    /// The QEMU stream is corrupt.
    Protocol(String),
}

/// Ports this side uses as 10.0.2.2:<port> towards the guest (inbound forwards).
#[derive(Debug, Default)]
pub struct Ports {
    used: HashSet<u16>,
    next: u16,
}

impl Ports {
    const FIRST: u16 = 49152;

    /// A free port, or `None` when all 16k are taken (bounded far below that elsewhere).
    pub fn take(&mut self) -> Option<u16> {
        for _ in 0..=(u16::MAX - Self::FIRST) {
            let port = if self.next < Self::FIRST {
                Self::FIRST
            } else {
                self.next
            };
            self.next = port.checked_add(1).unwrap_or(Self::FIRST);
            if self.used.insert(port) {
                return Some(port);
            }
        }
        None
    }

    pub fn release(&mut self, port: u16) {
        self.used.remove(&port);
    }
}

pub struct Engine {
    pub(crate) iface: Interface,
    pub(crate) sockets: SocketSet<'static>,
    pub(crate) device: QueueDevice,
    start: std::time::Instant,
    pub(crate) settings: Settings,
    pub(crate) dns_map: DnsMap,
    pub(crate) recorder: Recorder,
    /// The guest's fragmented UDP datagrams being put back together.
    reassembler: crate::reassembly::Reassembler,
    pub(crate) conns: HashMap<u64, TcpConn>,
    /// Outbound TCP flows by (guest port, destination), to recognise SYN retransmits.
    pub(crate) flows: HashMap<(u16, SocketAddrV4), u64>,
    pub(crate) next_id: u64,
    /// Sockets to remove after the next poll (so an abort's RST goes out first).
    pub(crate) graveyard: Vec<SocketHandle>,
    pub(crate) udp_flows: HashMap<(u16, SocketAddrV4), UdpFlow>,
    /// Inbound UDP peers by the gateway port they use towards the guest.
    pub(crate) inbound_udp: HashMap<u16, InboundUdp>,
    pub(crate) inbound_udp_peers: HashMap<(usize, SocketAddr), u16>,
    pub(crate) ports: Ports,
    pub(crate) dns_outstanding: usize,
    pub(crate) ctrl_tx: mpsc::Sender<Ctrl>,
    pub(crate) notify: Arc<Notify>,
    egress: mpsc::Sender<Vec<u8>>,
}

impl Engine {
    pub fn new(
        settings: Settings,
        ctrl_tx: mpsc::Sender<Ctrl>,
        egress: mpsc::Sender<Vec<u8>>,
    ) -> Engine {
        let mut device = QueueDevice::default();
        let mut config = IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(GATEWAY_MAC)));
        config.random_seed = rand::random();
        let start = std::time::Instant::now();
        let mut iface = Interface::new(config, &mut device, smoltcp::time::Instant::from_millis(0));
        iface.update_ip_addrs(|addrs| {
            // One address on a fresh interface always fits.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(GATEWAY), PREFIX_LEN));
        });
        // Any-IP: the interface accepts packets for every destination (it is the gateway of
        // the whole internet, as far as the guest knows); the default route via our own
        // address is what smoltcp requires for that.
        iface.set_any_ip(true);
        let _ = iface.routes_mut().add_default_ipv4_route(GATEWAY);
        // Forwarded connections go to the guest's loopback address, through the guest.
        iface.routes_mut().update(|routes| {
            let _ = routes.push(smoltcp::iface::Route {
                cidr: smoltcp::wire::IpCidr::new(IpAddress::Ipv4(crate::wire::GUEST_LOOPBACK), 32),
                via_router: IpAddress::Ipv4(crate::wire::GUEST),
                preferred_until: None,
                expires_at: None,
            });
        });
        Engine {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            start,
            settings,
            dns_map: DnsMap::new(),
            recorder: Recorder::default(),
            reassembler: Default::default(),
            conns: HashMap::new(),
            flows: HashMap::new(),
            next_id: 0,
            graveyard: Vec::new(),
            udp_flows: HashMap::new(),
            inbound_udp: HashMap::new(),
            inbound_udp_peers: HashMap::new(),
            ports: Ports::default(),
            dns_outstanding: 0,
            ctrl_tx,
            notify: Arc::new(Notify::new()),
            egress,
        }
    }

    pub(crate) fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_millis(self.start.elapsed().as_millis() as i64)
    }

    /// Runs until stdin closes, QEMU goes away, or the stream is corrupt.
    pub async fn run(
        mut self,
        mut frames: mpsc::Receiver<Result<Vec<u8>, FrameError>>,
        mut ctrl: mpsc::Receiver<Ctrl>,
        mut reports: mpsc::Receiver<()>,
        answer: impl Fn(Report),
    ) -> Exit {
        let notify = self.notify.clone();
        let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
        housekeeping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.step();
            let now = self.now();
            let delay = self
                .iface
                .poll_delay(now, &self.sockets)
                .map_or(Duration::from_secs(1), |delay| {
                    Duration::from_millis(delay.total_millis())
                });
            tokio::select! {
                frame = frames.recv() => match frame {
                    Some(Ok(frame)) => self.ingress(frame),
                    Some(Err(error)) => return Exit::Protocol(error.to_string()),
                    None => return Exit::QemuClosed,
                },
                message = ctrl.recv() => {
                    if let Some(message) = message {
                        self.control(message);
                    }
                }
                request = reports.recv() => match request {
                    Some(()) => answer(self.report()),
                    None => return Exit::StdinClosed,
                },
                _ = notify.notified() => {}
                _ = housekeeping.tick() => self.housekeeping(),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// The event for a guest connection or flow to `dst`, refused until decided otherwise,
    /// named after what DNS told the guest about `dst`.
    pub(crate) fn new_conn_event(
        &self,
        protocol: Protocol,
        dst: std::net::SocketAddrV4,
    ) -> ConnEvent {
        ConnEvent {
            protocol,
            dst: *dst.ip(),
            port: dst.port(),
            name: self.dns_map.name_for(*dst.ip()).map(str::to_string),
            allowed: false,
            reason: None,
            bytes_out: 0,
            bytes_in: 0,
            open: false,
        }
    }

    /// The event for a host client `peer` on forward `bound`, still to be decided.
    pub(crate) fn new_inbound_event(
        bound: BoundForward,
        protocol: Protocol,
        peer: std::net::SocketAddr,
    ) -> InboundEvent {
        InboundEvent {
            protocol,
            internal: bound.internal,
            external: bound.external,
            peer,
            bytes_in: 0,
            bytes_out: 0,
            reason: None,
            open: false,
        }
    }

    /// One guest frame: policy first, then the interface.
    fn ingress(&mut self, frame: Vec<u8>) {
        match wire::inspect(&frame) {
            Inspected::Drop => {}
            Inspected::UdpFragment => {
                if let Some(d) = self.reassembler.push(&frame, std::time::Instant::now()) {
                    self.guest_udp(d.src, d.dst, d.payload);
                }
            }
            Inspected::Udp { src, dst, payload } => {
                let payload = payload.to_vec();
                self.guest_udp(src, dst, payload);
            }
            Inspected::TcpSyn { src, dst } => {
                self.guest_syn(src, dst);
                self.feed(frame);
            }
            Inspected::Stack => self.feed(frame),
        }
    }

    fn feed(&mut self, frame: Vec<u8>) {
        self.device.rx = Some(frame);
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        // A frame the interface did not take (it always does) must not leak into the next poll.
        self.device.rx = None;
    }

    /// Polls the interface, services every flow, polls again to send what servicing queued,
    /// and hands the emitted frames to the QEMU writer.
    fn step(&mut self) {
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        for handle in std::mem::take(&mut self.graveyard) {
            self.sockets.remove(handle);
        }
        self.service_tcp();
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        self.flush();
    }

    /// Sends queued egress frames; drops them when QEMU is not keeping up (TCP retransmits).
    pub(crate) fn flush(&mut self) {
        for frame in self.device.tx.drain(..) {
            let _ = self.egress.try_send(frame);
        }
    }

    pub(crate) fn send_frame(&mut self, frame: Vec<u8>) {
        let _ = self.egress.try_send(frame);
    }

    fn control(&mut self, message: Ctrl) {
        match message {
            Ctrl::Upstream { id, result } => self.upstream_result(id, result),
            Ctrl::Inbound {
                forward,
                stream,
                peer,
            } => self.inbound_tcp(forward, stream, peer),
            Ctrl::InboundUdp {
                forward,
                peer,
                data,
            } => self.inbound_udp_datagram(forward, peer, data),
            Ctrl::Dns {
                guest,
                pending,
                answer,
            } => self.dns_answer(guest, *pending, answer),
            Ctrl::UdpReply { flow, data } => self.udp_reply(flow, data),
        }
    }

    fn housekeeping(&mut self) {
        self.expire_tcp();
        self.expire_udp();
    }

    fn report(&mut self) -> Report {
        let (mut conns, mut inbound) = self.open_tcp_events();
        let (udp_conns, udp_inbound) = self.open_udp_events();
        conns.extend(udp_conns);
        inbound.extend(udp_inbound);
        self.recorder.take(conns.into_iter(), inbound.into_iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_unique_and_reused() {
        let mut ports = Ports::default();
        let a = ports.take().expect("port");
        let b = ports.take().expect("port");
        assert_ne!(a, b);
        ports.release(a);
        let all: HashSet<u16> = (0..16400).filter_map(|_| ports.take()).collect();
        assert!(all.contains(&a));
        assert!(!all.contains(&b));
    }
}
