//! TCP flows in the engine: the policy decision on a guest SYN, the ClientHello check of the
//! allowlist, inbound (port-forward) connections to the guest, and the splice between a
//! smoltcp socket and its host task.

use crate::contract::{ConnEvent, InboundEvent, Mode, Protocol};
use crate::engine::Engine;
use crate::host::{self, PipeEnds, CHUNK};
use crate::policy::HTTPS_PORT;
use crate::tls::{parse_sni, Sni, MAX_CLIENT_HELLO};
use crate::wire::{GATEWAY, GUEST_LOOPBACK};
use smoltcp::iface::SocketHandle;
use smoltcp::socket::tcp::{Socket, SocketBuffer, State};
use smoltcp::wire::{IpAddress, IpEndpoint, IpListenEndpoint};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio::time::Instant;

/// Why a forwarded connection found nothing at the guest port: no server yet, or one bound
/// only to the guest's eth0 address (forwards arrive at 127.0.0.1, where servers bound to
/// 127.0.0.1, 0.0.0.0 or `::` all listen).
pub const GUEST_NOT_LISTENING: &str = "guest port not listening (on 127.0.0.1, 0.0.0.0 or ::)";

/// Most guest-initiated TCP connections open at once.
pub const MAX_OUTBOUND: usize = 256;
/// Most host connections through forwards open at once.
pub const MAX_INBOUND: usize = 256;
/// smoltcp buffer per direction per connection.
pub const SOCKET_BUFFER: usize = 64 * 1024;
/// How long the allowlist waits for the guest's ClientHello.
pub const CLIENT_HELLO_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct TcpConn {
    handle: SocketHandle,
    stage: Stage,
    pipe: Option<Pipe>,
    event: Event,
    deadline: Option<Instant>,
}

enum Stage {
    /// Allowlist: collecting the ClientHello before choosing whether to connect upstream.
    Sniff { buf: Vec<u8>, host: Ipv4Addr },
    /// Inbound: waiting for the guest to answer our SYN; the host client waits meanwhile.
    GuestConnecting { stream: TcpStream, local_port: u16 },
    /// Bytes flow (outbound: possibly still waiting for the upstream connect).
    Splice { local_port: Option<u16> },
}

enum Event {
    Out {
        event: ConnEvent,
        key: (u16, SocketAddrV4),
    },
    In(InboundEvent),
}

struct Pipe {
    to_host: Option<tokio::sync::mpsc::Sender<Vec<u8>>>,
    from_host: tokio::sync::mpsc::Receiver<Vec<u8>>,
    /// One host chunk not yet fully accepted by the smoltcp send buffer.
    pending: Vec<u8>,
    sent: usize,
    host_done: bool,
}

impl Pipe {
    fn new(ends: PipeEnds) -> Pipe {
        Pipe {
            to_host: Some(ends.to_host),
            from_host: ends.from_host,
            pending: Vec::new(),
            sent: 0,
            host_done: false,
        }
    }
}

fn new_socket() -> Socket<'static> {
    let mut socket = Socket::new(
        SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        SocketBuffer::new(vec![0; SOCKET_BUFFER]),
    );
    // A proxy should not add Nagle delay on top of the host's own.
    socket.set_nagle_enabled(false);
    socket
}

impl Engine {
    /// A guest SYN to `dst`: refuse it (no socket, so the interface answers RST) or create a
    /// socket listening on exactly that endpoint for the interface to hand the SYN to.
    pub(crate) fn guest_syn(&mut self, src: SocketAddrV4, dst: SocketAddrV4) {
        let key = (src.port(), dst);
        if let Some(id) = self.flows.get(&key).copied() {
            let handle = self.conns.get(&id).map(|conn| conn.handle);
            match handle.map(|handle| self.sockets.get::<Socket>(handle).state()) {
                // A retransmitted SYN: the existing socket answers it.
                Some(State::Listen | State::SynReceived) => return,
                // The guest reuses the port of a finished connection.
                _ => self.finish(id, Some("guest reused the port".into())),
            }
        }
        let mut event = self.new_conn_event(Protocol::Tcp, dst);
        if *dst.ip() == GATEWAY {
            // Nothing listens on the gateway itself over TCP: the interface answers RST.
            event.reason = Some("the gateway 10.0.2.2 answers only DNS, over UDP".into());
            self.recorder.conn(event);
            return;
        }
        let policy = &self.settings.policy;
        let verdict = match policy.mode {
            Mode::PortsOnly => Err("no network (ports only)".to_string()),
            _ if self.outbound_count() >= MAX_OUTBOUND => {
                Err(format!("too many connections (at most {MAX_OUTBOUND})"))
            }
            _ => policy.destination(*dst.ip()),
        };
        let verdict = verdict.and_then(|host| match policy.mode {
            Mode::Allowlist if dst.port() != HTTPS_PORT => Err(format!(
                "port {}: the allowlist allows only TLS on {HTTPS_PORT}",
                dst.port()
            )),
            Mode::Allowlist if !self.dns_map.contains(*dst.ip()) && !policy.in_ranges(host) => {
                Err(format!(
                    "destination {} was not given by DNS for an allowed name",
                    dst.ip()
                ))
            }
            _ => Ok(host),
        });
        let host = match verdict {
            Ok(host) => host,
            Err(reason) => {
                event.reason = Some(reason);
                self.recorder.conn(event);
                return;
            }
        };
        event.allowed = true;
        let mut socket = new_socket();
        if socket
            .listen(IpListenEndpoint {
                addr: Some(IpAddress::Ipv4(*dst.ip())),
                port: dst.port(),
            })
            .is_err()
        {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let (stage, pipe, deadline) = if policy.mode == Mode::Allowlist {
            (
                Stage::Sniff {
                    buf: Vec::new(),
                    host,
                },
                None,
                Some(Instant::now() + CLIENT_HELLO_TIMEOUT),
            )
        } else {
            // Full: hold the SYN-ACK until the upstream answers, so a refused upstream is a
            // refused guest connection, as if there were no proxy.
            socket.pause_synack(true);
            let pipe = self.spawn_outbound(
                id,
                SocketAddr::V4(SocketAddrV4::new(host, dst.port())),
                Vec::new(),
            );
            (Stage::Splice { local_port: None }, Some(pipe), None)
        };
        let handle = self.sockets.add(socket);
        self.flows.insert(key, id);
        self.conns.insert(
            id,
            TcpConn {
                handle,
                stage,
                pipe,
                event: Event::Out { event, key },
                deadline,
            },
        );
    }

    fn spawn_outbound(&self, id: u64, target: SocketAddr, initial: Vec<u8>) -> Pipe {
        let (ends, task) = host::pipe();
        tokio::spawn(host::outbound(
            id,
            target,
            initial,
            self.settings.connect_timeout,
            task,
            self.ctrl_tx.clone(),
            self.notify.clone(),
        ));
        Pipe::new(ends)
    }

    fn outbound_count(&self) -> usize {
        self.conns
            .values()
            .filter(|conn| matches!(conn.event, Event::Out { .. }))
            .count()
    }

    pub(crate) fn upstream_result(&mut self, id: u64, result: Result<(), String>) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let handle = conn.handle;
        match result {
            Ok(()) => self.sockets.get_mut::<Socket>(handle).pause_synack(false),
            Err(reason) => {
                self.sockets.get_mut::<Socket>(handle).abort();
                if let Some(TcpConn {
                    event: Event::Out { event, .. },
                    ..
                }) = self.conns.get_mut(&id)
                {
                    event.allowed = false;
                }
                self.finish(id, Some(reason));
            }
        }
    }

    /// A host client on TCP forward `forward`: connect to the guest port for it.
    pub(crate) fn inbound_tcp(&mut self, forward: usize, stream: TcpStream, peer: SocketAddr) {
        let Some(bound) = self.settings.forwards.get(forward).copied() else {
            return;
        };
        let mut event = Engine::new_inbound_event(bound, Protocol::Tcp, peer);
        let inbound = self.conns.len() - self.outbound_count();
        let local_port = match self.ports.take() {
            Some(port) if inbound < MAX_INBOUND => port,
            taken => {
                if let Some(port) = taken {
                    self.ports.release(port);
                }
                event.reason = Some(format!(
                    "too many inbound connections (at most {MAX_INBOUND})"
                ));
                self.recorder.inbound(event);
                return;
            }
        };
        let mut socket = new_socket();
        // The guest not answering at all is bounded like an upstream connect.
        socket.set_timeout(Some(smoltcp::time::Duration::from_millis(
            self.settings.connect_timeout.as_millis() as u64,
        )));
        // The guest's loopback address, which the guest accepts from eth0 (its init sets
        // route_localnet): servers bound to 127.0.0.1, 0.0.0.0 and `::` all listen there.
        let remote = IpEndpoint::new(IpAddress::Ipv4(GUEST_LOOPBACK), bound.internal);
        let local = IpEndpoint::new(IpAddress::Ipv4(GATEWAY), local_port);
        if let Err(error) = socket.connect(self.iface.context(), remote, local) {
            self.ports.release(local_port);
            event.reason = Some(format!("cannot connect to the guest: {error}"));
            self.recorder.inbound(event);
            return;
        }
        event.open = true;
        let handle = self.sockets.add(socket);
        let id = self.next_id;
        self.next_id += 1;
        self.conns.insert(
            id,
            TcpConn {
                handle,
                stage: Stage::GuestConnecting { stream, local_port },
                pipe: None,
                event: Event::In(event),
                deadline: Some(Instant::now() + self.settings.connect_timeout),
            },
        );
    }

    /// Advances every connection after a poll.
    pub(crate) fn service_tcp(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            if let Some(outcome) = self.service_one(id) {
                self.finish(id, outcome);
            }
        }
    }

    /// `Some(reason)` when the connection is over.
    fn service_one(&mut self, id: u64) -> Option<Option<String>> {
        let conn = self.conns.get_mut(&id)?;
        let socket = self.sockets.get_mut::<Socket>(conn.handle);
        let state = socket.state();
        match &mut conn.stage {
            Stage::Sniff { buf, host } => {
                if state == State::Listen {
                    // The SYN never reached the socket (e.g. a bad checksum): forget it quietly.
                    return Some(Some("SYN not accepted".into()));
                }
                if state == State::Closed {
                    return Some(Some("guest closed before a ClientHello".into()));
                }
                while socket.can_recv() && buf.len() < MAX_CLIENT_HELLO {
                    let mut chunk = vec![0; MAX_CLIENT_HELLO - buf.len()];
                    match socket.recv_slice(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let verdict = match parse_sni(buf) {
                    Sni::NeedMore if buf.len() >= MAX_CLIENT_HELLO => {
                        Err(format!("ClientHello larger than {MAX_CLIENT_HELLO} bytes"))
                    }
                    Sni::NeedMore if !socket.may_recv() && state != State::SynReceived => {
                        Err("guest closed before a ClientHello".into())
                    }
                    Sni::NeedMore => return None,
                    Sni::NotTls => Err("not TLS (the allowlist allows only TLS on 443)".into()),
                    Sni::NoSni => Err("no SNI (IP literal?)".into()),
                    Sni::Name(name) => Ok(name),
                };
                let Event::Out { event, .. } = &mut conn.event else {
                    return Some(None);
                };
                let name = match verdict {
                    Ok(name) => name,
                    Err(reason) => {
                        socket.abort();
                        event.allowed = false;
                        return Some(Some(reason));
                    }
                };
                event.name = Some(name.clone());
                let refusal = if !self.settings.policy.domain_allowed(&name) {
                    Some(format!("SNI {name} is not on the allowlist"))
                } else if !self.dns_map.answered(event.dst, &name) {
                    Some(format!(
                        "SNI {name} was not answered by DNS for {}",
                        event.dst
                    ))
                } else {
                    None
                };
                if let Some(reason) = refusal {
                    socket.abort();
                    event.allowed = false;
                    return Some(Some(reason));
                }
                let initial = std::mem::take(buf);
                event.bytes_out += initial.len() as u64;
                let target = SocketAddr::V4(SocketAddrV4::new(*host, event.port));
                conn.stage = Stage::Splice { local_port: None };
                conn.deadline = None;
                let pipe = self.spawn_outbound(id, target, initial);
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.pipe = Some(pipe);
                }
                None
            }
            Stage::GuestConnecting { .. } => match state {
                State::SynSent => None,
                State::Established => {
                    let Stage::GuestConnecting { stream, local_port } =
                        std::mem::replace(&mut conn.stage, Stage::Splice { local_port: None })
                    else {
                        return None;
                    };
                    conn.stage = Stage::Splice {
                        local_port: Some(local_port),
                    };
                    conn.deadline = None;
                    let (ends, task) = host::pipe();
                    conn.pipe = Some(Pipe::new(ends));
                    tokio::spawn(host::splice(stream, task, self.notify.clone()));
                    self.pump(id)
                }
                // An RST from the guest (nothing listening) or the connect timed out. Dropping
                // the host stream closes it at once: the host client fails fast.
                _ => Some(Some(GUEST_NOT_LISTENING.into())),
            },
            Stage::Splice { .. } => {
                if state == State::Listen {
                    return Some(Some("SYN not accepted".into()));
                }
                self.pump(id)
            }
        }
    }

    /// Moves bytes between the socket and the host task, both ways, as far as the buffers and
    /// channels allow.
    fn pump(&mut self, id: u64) -> Option<Option<String>> {
        let conn = self.conns.get_mut(&id)?;
        let socket = self.sockets.get_mut::<Socket>(conn.handle);
        let pipe = conn.pipe.as_mut()?;
        let (bytes_out, bytes_in) = match &mut conn.event {
            Event::Out { event, .. } => (&mut event.bytes_out, &mut event.bytes_in),
            Event::In(event) => (&mut event.bytes_out, &mut event.bytes_in),
        };
        // Guest to host: only while the channel has room, so a slow host closes the guest's
        // window instead of growing a queue.
        let mut host_gone = false;
        while let Some(to_host) = &pipe.to_host {
            if !socket.can_recv() {
                break;
            }
            match to_host.try_reserve() {
                Ok(permit) => {
                    let mut chunk = vec![0; CHUNK.min(socket.recv_queue())];
                    match socket.recv_slice(&mut chunk) {
                        Ok(n) if n > 0 => {
                            chunk.truncate(n);
                            *bytes_out += n as u64;
                            permit.send(chunk);
                        }
                        _ => break,
                    }
                }
                Err(TrySendError::Full(())) => break,
                Err(TrySendError::Closed(())) => {
                    host_gone = true;
                    break;
                }
            }
        }
        if host_gone {
            pipe.to_host = None;
        }
        if !socket.may_recv()
            && socket.recv_queue() == 0
            && !matches!(socket.state(), State::SynReceived | State::Listen)
        {
            // The guest sent FIN: the task shuts down the host's write side.
            pipe.to_host = None;
        }
        // Host to guest.
        loop {
            if pipe.sent < pipe.pending.len() {
                match socket.send_slice(&pipe.pending[pipe.sent..]) {
                    Ok(n) => {
                        pipe.sent += n;
                        *bytes_in += n as u64;
                        if pipe.sent < pipe.pending.len() {
                            break;
                        }
                    }
                    // Not established yet: keep the chunk for later.
                    Err(_) => break,
                }
            } else {
                match pipe.from_host.try_recv() {
                    Ok(chunk) => {
                        pipe.pending = chunk;
                        pipe.sent = 0;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        pipe.host_done = true;
                        break;
                    }
                }
            }
        }
        if pipe.host_done && pipe.sent >= pipe.pending.len() {
            socket.close();
        }
        match socket.state() {
            State::Closed | State::TimeWait => Some(None),
            _ => None,
        }
    }

    /// Deadlines: ClientHello wait, guest answering an inbound connection.
    pub(crate) fn expire_tcp(&mut self) {
        let now = Instant::now();
        let expired: Vec<(u64, bool)> = self
            .conns
            .iter()
            .filter(|(_, conn)| conn.deadline.is_some_and(|deadline| deadline <= now))
            .map(|(id, conn)| (*id, matches!(conn.stage, Stage::Sniff { .. })))
            .collect();
        for (id, sniffing) in expired {
            if let Some(conn) = self.conns.get_mut(&id) {
                self.sockets.get_mut::<Socket>(conn.handle).abort();
                if let Event::Out { event, .. } = &mut conn.event {
                    event.allowed = false;
                }
            }
            let reason = if sniffing {
                format!("no ClientHello within {} s", CLIENT_HELLO_TIMEOUT.as_secs())
            } else {
                GUEST_NOT_LISTENING.to_string()
            };
            self.finish(id, Some(reason));
        }
    }

    /// Ends connection `id`: records its event and frees its socket after the next poll.
    pub(crate) fn finish(&mut self, id: u64, reason: Option<String>) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let socket = self.sockets.get_mut::<Socket>(conn.handle);
        if !matches!(socket.state(), State::Closed | State::TimeWait) {
            socket.abort();
        }
        self.graveyard.push(conn.handle);
        match conn.stage {
            Stage::GuestConnecting { local_port, .. }
            | Stage::Splice {
                local_port: Some(local_port),
            } => {
                self.ports.release(local_port);
            }
            _ => {}
        }
        let quiet = reason.as_deref() == Some("SYN not accepted");
        match conn.event {
            Event::Out { mut event, key } => {
                if self.flows.get(&key) == Some(&id) {
                    self.flows.remove(&key);
                }
                event.open = false;
                if event.reason.is_none() {
                    event.reason = reason;
                }
                if !quiet {
                    self.recorder.conn(event);
                }
            }
            Event::In(mut event) => {
                event.open = false;
                if event.reason.is_none() {
                    event.reason = reason;
                }
                self.recorder.inbound(event);
            }
        }
    }

    /// Snapshots of the connections still open.
    pub(crate) fn open_tcp_events(&self) -> (Vec<ConnEvent>, Vec<InboundEvent>) {
        let mut out = Vec::new();
        let mut inbound = Vec::new();
        for conn in self.conns.values() {
            match &conn.event {
                Event::Out { event, .. } => out.push(ConnEvent {
                    open: true,
                    ..event.clone()
                }),
                Event::In(event) => inbound.push(InboundEvent {
                    open: true,
                    ..event.clone()
                }),
            }
        }
        (out, inbound)
    }
}
