//! End-to-end tests of the real `sbx-net` binary. The test plays QEMU (it listens on the unix
//! socket the process connects to) and the guest (a smoltcp interface configured like the VM's
//! eth0, speaking the 4-byte length framing over that socket). Host peers are real sockets.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use net::contract::{BoundForward, Report, Response};
use net::frame::{encode_frame, FrameDecoder};
use protocol::guest_net::{GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::time::Instant as SmolInstant;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpEndpoint,
};
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

const GATEWAY: Ipv4Addr = Ipv4Addr::new(GATEWAY_IP[0], GATEWAY_IP[1], GATEWAY_IP[2], GATEWAY_IP[3]);
const GUEST: Ipv4Addr = Ipv4Addr::new(GUEST_IP[0], GUEST_IP[1], GUEST_IP[2], GUEST_IP[3]);

// ---------------------------------------------------------------- the process

struct Net {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    forwards: Vec<BoundForward>,
    _dir: tempfile::TempDir,
}

impl Net {
    /// Starts `sbx-net` with `config` (without `qemu_socket`, filled in here) and returns it
    /// with the QEMU side of its stream.
    fn start(mut config: serde_json::Value) -> (Net, UnixStream) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("net.sock");
        let listener = UnixListener::bind(&path).expect("bind unix socket");
        config["qemu_socket"] = serde_json::Value::String(path.display().to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_sbx-net"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn sbx-net");
        let mut stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        writeln!(stdin, "{config}").expect("write config");
        let mut line = String::new();
        stdout.read_line(&mut line).expect("ready line");
        let forwards = match serde_json::from_str::<Response>(&line) {
            Ok(Response::Ready { forwards }) => forwards,
            other => panic!("expected ready, got {line:?} ({other:?})"),
        };
        let (stream, _) = listener.accept().expect("accept the process");
        (
            Net {
                child,
                stdin: Some(stdin),
                stdout,
                forwards,
                _dir: dir,
            },
            stream,
        )
    }

    fn report(&mut self) -> Report {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, r#"{{"report":null}}"#).expect("request");
        let mut line = String::new();
        self.stdout.read_line(&mut line).expect("report line");
        match serde_json::from_str::<Response>(&line) {
            Ok(Response::Report(report)) => report,
            other => panic!("expected a report, got {line:?} ({other:?})"),
        }
    }

    fn external(&self, internal: u16) -> u16 {
        self.forwards
            .iter()
            .find(|f| f.internal == internal)
            .expect("forward")
            .external
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- the guest

#[derive(Default)]
struct Device {
    rx: Vec<Vec<u8>>,
    tx: Vec<Vec<u8>>,
}

struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push(frame);
        result
    }
}

impl phy::Device for Device {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: SmolInstant) -> Option<(Rx, Tx<'_>)> {
        if self.rx.is_empty() {
            return None;
        }
        let frame = self.rx.remove(0);
        Some((Rx(frame), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: SmolInstant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

/// The VM's side: eth0 10.0.2.15/24, default route via 10.0.2.2.
struct Guest {
    iface: Interface,
    sockets: SocketSet<'static>,
    device: Device,
    stream: UnixStream,
    decoder: FrameDecoder,
    start: Instant,
    next_port: u16,
}

impl Guest {
    fn new(stream: UnixStream) -> Guest {
        stream.set_nonblocking(true).expect("nonblocking");
        let mut device = Device::default();
        let iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(GUEST_MAC)));
        let mut iface = Interface::new(iface_config, &mut device, SmolInstant::from_millis(0));
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(GUEST), 24))
                .expect("address");
            // The real guest accepts 127.0.0.1 from eth0 (route_localnet), where forwarded
            // connections are sent.
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(Ipv4Addr::LOCALHOST), 8))
                .expect("loopback address");
        });
        iface
            .routes_mut()
            .add_default_ipv4_route(GATEWAY)
            .expect("route");
        Guest {
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            stream,
            decoder: FrameDecoder::new(),
            start: Instant::now(),
            next_port: 40000,
        }
    }

    fn now(&self) -> SmolInstant {
        SmolInstant::from_millis(self.start.elapsed().as_millis() as i64)
    }

    /// Frames from the process, as raw Ethernet.
    fn read_frames(&mut self) -> Vec<Vec<u8>> {
        let mut buf = [0u8; 65536];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => panic!("sbx-net closed the QEMU socket"),
                Ok(n) => self.decoder.push(&buf[..n]),
                Err(error) if error.kind() == ErrorKind::WouldBlock => break,
                Err(error) => panic!("read: {error}"),
            }
        }
        let mut frames = Vec::new();
        while let Some(frame) = self.decoder.next_frame().expect("valid framing") {
            frames.push(frame);
        }
        frames
    }

    fn write_frame(&mut self, frame: &[u8]) {
        let mut out = Vec::new();
        encode_frame(frame, &mut out);
        let mut written = 0;
        while written < out.len() {
            match self.stream.write(&out[written..]) {
                Ok(n) => written += n,
                Err(error) if error.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(1))
                }
                Err(error) => panic!("write: {error}"),
            }
        }
    }

    /// One round: deliver received frames to the stack, poll, send what it emitted.
    fn pump(&mut self) {
        let frames = self.read_frames();
        self.device.rx.extend(frames);
        let now = self.now();
        self.iface.poll(now, &mut self.device, &mut self.sockets);
        for frame in std::mem::take(&mut self.device.tx) {
            self.write_frame(&frame);
        }
    }

    /// Pumps until `done` holds or `timeout` passes; returns whether it held.
    fn wait(&mut self, timeout: Duration, mut done: impl FnMut(&mut Guest) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            self.pump();
            if done(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        false
    }

    fn port(&mut self) -> u16 {
        self.next_port += 1;
        self.next_port
    }

    fn tcp_socket(&mut self) -> SocketHandle {
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 65536]),
            tcp::SocketBuffer::new(vec![0; 65536]),
        );
        self.sockets.add(socket)
    }

    fn connect(&mut self, dst: Ipv4Addr, port: u16) -> SocketHandle {
        let handle = self.tcp_socket();
        let local = self.port();
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        socket
            .connect(
                self.iface.context(),
                IpEndpoint::new(IpAddress::Ipv4(dst), port),
                local,
            )
            .expect("connect");
        handle
    }

    fn tcp(&mut self, handle: SocketHandle) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket>(handle)
    }

    /// Sends a DNS query for `name` and returns the parsed answer.
    fn resolve(&mut self, name: &str, qtype: RecordType) -> Message {
        let port = self.port();
        let mut socket = udp::Socket::new(
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 8192]),
            udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 8192]),
        );
        socket.bind(port).expect("bind");
        let handle = self.sockets.add(socket);
        let mut query = Message::new(0x4242, MessageType::Query, OpCode::Query);
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
        let bytes = query.to_vec().expect("encode");
        self.sockets
            .get_mut::<udp::Socket>(handle)
            .send_slice(&bytes, IpEndpoint::new(IpAddress::Ipv4(GATEWAY), 53))
            .expect("send");
        let mut answer = None;
        let got = self.wait(Duration::from_secs(5), |guest| {
            let socket = guest.sockets.get_mut::<udp::Socket>(handle);
            if let Ok((data, _)) = socket.recv() {
                answer = Some(data.to_vec());
            }
            answer.is_some()
        });
        assert!(got, "no DNS answer for {name}");
        self.sockets.remove(handle);
        Message::from_vec(&answer.unwrap_or_default()).expect("answer parses")
    }
}

fn a_records(message: &Message) -> Vec<Ipv4Addr> {
    message
        .answers
        .iter()
        .filter_map(|record| match &record.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------- host peers

/// A DNS server on 127.0.0.1:<random> answering every A query with `answer`.
fn tiny_dns(answer: Ipv4Addr) -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind dns");
    let addr = socket.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut response = query.clone().into_response();
            response.metadata.recursion_available = true;
            if let Some(question) = query.queries.first() {
                if question.query_type() == RecordType::A {
                    response.answers.push(Record::from_rdata(
                        question.name().clone(),
                        60,
                        RData::A(A(answer)),
                    ));
                }
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, peer);
            }
        }
    });
    addr
}

/// A random 127.0.x.y other than 127.0.0.1, so parallel tests never share a listener.
fn random_loopback() -> Ipv4Addr {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(7);
    let seed = nanos ^ std::process::id().wrapping_mul(2_654_435_761);
    Ipv4Addr::new(127, 0, (seed % 250 + 2) as u8, (seed / 250 % 250 + 2) as u8)
}

// ---------------------------------------------------------------- tests

#[test]
fn gateway_arp_and_ports_only() {
    let (mut net, stream) = Net::start(serde_json::json!({
        "mode": "ports_only",
        "forwards": [{"internal": 8000, "external": null, "protocol": "tcp"}],
    }));
    let mut guest = Guest::new(stream);

    // ARP: the gateway answers for 10.0.2.2 with its MAC.
    let arp = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(GUEST_MAC),
        source_protocol_addr: GUEST,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: GATEWAY,
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(GUEST_MAC),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let mut frame = vec![0u8; ethernet.buffer_len() + arp.buffer_len()];
    let mut eth = EthernetFrame::new_unchecked(&mut frame[..]);
    ethernet.emit(&mut eth);
    arp.emit(&mut ArpPacket::new_unchecked(eth.payload_mut()));
    guest.write_frame(&frame);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answered = false;
    while !answered && Instant::now() < deadline {
        for frame in guest.read_frames() {
            let Ok(eth) = EthernetFrame::new_checked(&frame[..]) else {
                continue;
            };
            if eth.ethertype() != EthernetProtocol::Arp {
                continue;
            }
            if let Ok(ArpRepr::EthernetIpv4 {
                operation,
                source_hardware_addr,
                source_protocol_addr,
                ..
            }) = ArpRepr::parse(&ArpPacket::new_unchecked(eth.payload()))
            {
                answered = operation == ArpOperation::Reply
                    && source_hardware_addr == EthernetAddress(GATEWAY_MAC)
                    && source_protocol_addr == GATEWAY;
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(answered, "no ARP reply for the gateway");

    // DNS is refused at once.
    let answer = guest.resolve("example.com.", RecordType::A);
    assert_eq!(answer.metadata.response_code, ResponseCode::Refused);

    // Any guest SYN gets an RST.
    let handle = guest.connect(Ipv4Addr::new(93, 184, 216, 34), 80);
    assert!(
        guest.wait(Duration::from_secs(3), |g| g.tcp(handle).state()
            == tcp::State::Closed),
        "SYN was not refused"
    );

    // Port forward before the guest listens: the host client is closed fast.
    let external = net.external(8000);
    let client = std::thread::spawn(move || {
        let started = Instant::now();
        let mut stream = TcpStream::connect(("127.0.0.1", external)).expect("connect forward");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = [0u8; 16];
        let result = stream.read(&mut buf);
        (started.elapsed(), result.map_err(|e| e.kind()))
    });
    assert!(guest.wait(Duration::from_secs(5), |_| client.is_finished()));
    let (elapsed, result) = client.join().expect("client thread");
    assert!(
        matches!(result, Ok(0) | Err(ErrorKind::ConnectionReset)),
        "{result:?}"
    );
    assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");

    // Now the guest listens: bytes round-trip both ways.
    let server = guest.tcp_socket();
    guest.tcp(server).listen(8000).expect("listen");
    let client = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(("127.0.0.1", external)).expect("connect forward");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream.write_all(b"ping from host").expect("write");
        let mut buf = [0u8; 14];
        stream.read_exact(&mut buf).expect("read reply");
        buf
    });
    let mut received = Vec::new();
    assert!(guest.wait(Duration::from_secs(5), |g| {
        let socket = g.tcp(server);
        if socket.can_recv() {
            let mut buf = [0u8; 64];
            let n = socket.recv_slice(&mut buf).unwrap_or(0);
            received.extend_from_slice(&buf[..n]);
        }
        received.len() >= 14
    }));
    assert_eq!(received, b"ping from host");
    guest
        .tcp(server)
        .send_slice(b"pong from VM!!")
        .expect("send");
    assert!(guest.wait(Duration::from_secs(5), |_| client.is_finished()));
    assert_eq!(&client.join().expect("client"), b"pong from VM!!");
    guest.wait(Duration::from_millis(200), |_| false);

    let report = net.report();
    assert_eq!(report.dns.len(), 1);
    assert!(!report.dns[0].allowed);
    assert_eq!(
        report.dns[0].reason.as_deref(),
        Some("no network (ports only)")
    );
    let refused: Vec<_> = report.connections.iter().filter(|c| c.port == 80).collect();
    assert_eq!(refused.len(), 1, "{:?}", report.connections);
    assert!(!refused[0].allowed);
    assert_eq!(
        refused[0].reason.as_deref(),
        Some("no network (ports only)")
    );
    let failed: Vec<_> = report
        .inbound
        .iter()
        .filter(|e| e.reason.is_some())
        .collect();
    assert_eq!(failed.len(), 1, "{:?}", report.inbound);
    assert_eq!(failed[0].reason.as_deref(), Some(net::GUEST_NOT_LISTENING));
    let good: Vec<_> = report
        .inbound
        .iter()
        .filter(|e| e.reason.is_none())
        .collect();
    assert_eq!(good.len(), 1, "{:?}", report.inbound);
    assert_eq!(good[0].bytes_in, 14);
    assert_eq!(good[0].bytes_out, 14);
    assert_eq!(good[0].internal, 8000);
    assert_eq!(good[0].external, external);
}

#[test]
fn allowlist_checks_dns_and_sni() {
    let host = random_loopback();
    let translated = Ipv4Addr::new(198, 18, host.octets()[2], host.octets()[3]);
    let listener = TcpListener::bind((host, 443)).expect("bind 443 (tests run as root)");
    let hello = net::tls::build_client_hello(Some("allowed.test"));
    let expected = hello.clone();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = vec![0u8; expected.len()];
        stream.read_exact(&mut buf).expect("read ClientHello");
        stream.write_all(b"server hello").expect("write");
        // Keep the connection until the guest has read the reply.
        std::thread::sleep(Duration::from_millis(500));
        buf
    });
    let dns = tiny_dns(host);
    let (mut net, stream) = Net::start(serde_json::json!({
        "mode": "allowlist",
        "allow_domains": ["allowed.test"],
        "allow_ranges": ["127.0.0.0/8"],
        "upstream_dns": dns.to_string(),
    }));
    let mut guest = Guest::new(stream);

    let answer = guest.resolve("allowed.test.", RecordType::A);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&answer), vec![translated]);
    let answer = guest.resolve("other.test.", RecordType::A);
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    let answer = guest.resolve("allowed.test.", RecordType::AAAA);
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(answer.answers.is_empty());

    // Allowed: the ClientHello reaches the host listener intact, and the reply comes back.
    let conn = guest.connect(translated, 443);
    assert!(
        guest.wait(Duration::from_secs(5), |g| g.tcp(conn).may_send()),
        "not established"
    );
    guest.tcp(conn).send_slice(&hello).expect("send hello");
    let mut reply = Vec::new();
    assert!(guest.wait(Duration::from_secs(5), |g| {
        let socket = g.tcp(conn);
        if socket.can_recv() {
            let mut buf = [0u8; 64];
            let n = socket.recv_slice(&mut buf).unwrap_or(0);
            reply.extend_from_slice(&buf[..n]);
        }
        reply.len() >= 12
    }));
    assert_eq!(reply, b"server hello");
    assert!(guest.wait(Duration::from_secs(5), |_| server.is_finished()));
    assert_eq!(server.join().expect("server"), hello);

    // SNI not on the list: accepted, then reset after the ClientHello.
    let other = guest.connect(translated, 443);
    assert!(guest.wait(Duration::from_secs(5), |g| g.tcp(other).may_send()));
    guest
        .tcp(other)
        .send_slice(&net::tls::build_client_hello(Some("other.test")))
        .expect("send");
    assert!(
        guest.wait(Duration::from_secs(5), |g| g.tcp(other).state()
            == tcp::State::Closed),
        "other.test was not reset"
    );

    // Port 80: refused at the SYN.
    let plain = guest.connect(translated, 80);
    assert!(guest.wait(Duration::from_secs(3), |g| g.tcp(plain).state()
        == tcp::State::Closed));
    guest.wait(Duration::from_millis(200), |_| false);

    let report = net.report();
    let allowed = report
        .dns
        .iter()
        .find(|e| e.name == "allowed.test" && e.qtype == "A")
        .expect("dns event");
    assert!(allowed.allowed);
    assert_eq!(allowed.answers, vec![translated]);
    let other_dns = report
        .dns
        .iter()
        .find(|e| e.name == "other.test")
        .expect("dns event");
    assert!(!other_dns.allowed);
    assert_eq!(other_dns.reason.as_deref(), Some("not on the allowlist"));

    let tls = report
        .connections
        .iter()
        .find(|c| c.name.as_deref() == Some("allowed.test") && c.port == 443);
    let tls = tls.expect("allowed connection reported");
    assert!(tls.allowed, "{tls:?}");
    assert_eq!(tls.dst, translated);
    assert_eq!(tls.bytes_out, hello.len() as u64);
    assert_eq!(tls.bytes_in, 12);
    let refused = report
        .connections
        .iter()
        .find(|c| c.name.as_deref() == Some("other.test"))
        .expect("refused");
    assert!(!refused.allowed);
    assert_eq!(
        refused.reason.as_deref(),
        Some("SNI other.test is not on the allowlist")
    );
    let port80 = report
        .connections
        .iter()
        .find(|c| c.port == 80)
        .expect("port 80");
    assert!(!port80.allowed);
    assert_eq!(
        port80.reason.as_deref(),
        Some("port 80: the allowlist allows only TLS on 443")
    );

    // Reported connections that closed are not reported again.
    guest.wait(Duration::from_millis(300), |_| false);
    let again = net.report();
    assert!(
        again.connections.iter().all(|c| c.open),
        "{:?}",
        again.connections
    );
}

#[test]
fn exits_on_stdin_eof_and_reports_config_errors() {
    let (mut net, _stream) = Net::start(serde_json::json!({"mode": "ports_only"}));
    // Closing stdin ends the process promptly with status 0.
    drop(net.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(status) = net.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit on stdin EOF");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());

    let mut child = Command::new(env!("CARGO_BIN_EXE_sbx-net"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    writeln!(
        stdin,
        r#"{{"qemu_socket":"/nonexistent/x.sock","mode":"full","allow_ranges":["bogus"]}}"#
    )
    .expect("write");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("line");
    assert!(line.starts_with(r#"{"error":{"kind":"config""#), "{line}");
    assert_eq!(child.wait().expect("wait").code(), Some(1));
}

#[test]
fn full_mode_tcp_udp_and_vm_exit() {
    let host = random_loopback();
    let translated = Ipv4Addr::new(198, 18, host.octets()[2], host.octets()[3]);
    let listener = TcpListener::bind((host, 0)).expect("bind");
    let tcp_port = listener.local_addr().expect("addr").port();
    let server = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 5];
        stream.read_exact(&mut buf).expect("read");
        stream.write_all(b"world").expect("write");
        buf
    });
    let echo = UdpSocket::bind((host, 0)).expect("bind udp");
    let udp_port = echo.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        if let Ok((n, peer)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], peer);
        }
    });
    let (mut net, stream) = Net::start(serde_json::json!({
        "mode": "full",
        "allow_ranges": [format!("{host}/32")],
        "upstream_dns": "127.0.0.1:9",
    }));
    let mut guest = Guest::new(stream);

    // TCP to the translated address reaches the host loopback listener.
    let conn = guest.connect(translated, tcp_port);
    assert!(
        guest.wait(Duration::from_secs(5), |g| g.tcp(conn).may_send()),
        "not established"
    );
    guest.tcp(conn).send_slice(b"hello").expect("send");
    let mut reply = Vec::new();
    assert!(guest.wait(Duration::from_secs(5), |g| {
        let socket = g.tcp(conn);
        if socket.can_recv() {
            let mut buf = [0u8; 16];
            let n = socket.recv_slice(&mut buf).unwrap_or(0);
            reply.extend_from_slice(&buf[..n]);
        }
        reply.len() >= 5
    }));
    assert_eq!(reply, b"world");
    assert_eq!(&server.join().expect("server"), b"hello");

    // Another loopback address is not opted in: refused at the SYN.
    let other = Ipv4Addr::new(198, 18, host.octets()[2], host.octets()[3].wrapping_add(1));
    let refused = guest.connect(other, tcp_port);
    assert!(
        guest.wait(Duration::from_secs(3), |g| g.tcp(refused).state()
            == tcp::State::Closed)
    );

    // UDP is NATed and the reply comes back from the address the guest sent to.
    let port = guest.port();
    let mut socket = udp::Socket::new(
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
        udp::PacketBuffer::new(vec![udp::PacketMetadata::EMPTY; 4], vec![0; 4096]),
    );
    socket.bind(port).expect("bind");
    let handle = guest.sockets.add(socket);
    let endpoint = IpEndpoint::new(IpAddress::Ipv4(translated), udp_port);
    guest
        .sockets
        .get_mut::<udp::Socket>(handle)
        .send_slice(b"echo me", endpoint)
        .expect("send");
    let mut echoed = None;
    assert!(guest.wait(Duration::from_secs(5), |g| {
        if let Ok((data, meta)) = g.sockets.get_mut::<udp::Socket>(handle).recv() {
            echoed = Some((data.to_vec(), meta.endpoint));
        }
        echoed.is_some()
    }));
    assert_eq!(echoed, Some((b"echo me".to_vec(), endpoint)));

    let report = net.report();
    let ok = report
        .connections
        .iter()
        .find(|c| c.port == tcp_port && c.dst == translated)
        .expect("tcp event");
    assert!(ok.allowed);
    assert_eq!((ok.bytes_out, ok.bytes_in), (5, 5));
    let no = report
        .connections
        .iter()
        .find(|c| c.dst == other)
        .expect("refused event");
    assert!(!no.allowed);
    assert_eq!(
        no.reason,
        Some(format!(
            "destination {other} is loopback (opt in with a destination range)"
        ))
    );
    let udp_event = report
        .connections
        .iter()
        .find(|c| c.port == udp_port)
        .expect("udp event");
    assert!(udp_event.open && udp_event.allowed);
    assert_eq!((udp_event.bytes_out, udp_event.bytes_in), (7, 7));

    // The VM going away (QEMU closing the socket) ends the process with status 0.
    drop(guest);
    let deadline = Instant::now() + Duration::from_secs(3);
    let status = loop {
        if let Some(status) = net.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit when QEMU closed");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
}
