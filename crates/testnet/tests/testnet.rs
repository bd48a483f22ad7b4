//! Clients talking to a real Testnet over loopback: DNS over UDP and TCP, HTTP, HTTPS with the
//! generated CA, several instances side by side, teardown on drop, and the `sbx-testnet` CLI.
//! Needs root (ports 53, 80, 443), as the sandbox's own network tests do.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::TlsConnector;

use testnet::{Info, Spec, Testnet};

const TIMEOUT: Duration = Duration::from_secs(10);

fn query_bytes(id: u16, name: &str, rtype: RecordType) -> Vec<u8> {
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    msg.to_vec().unwrap()
}

async fn udp_resolve(dns: SocketAddr, name: &str, rtype: RecordType) -> Message {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    sock.send_to(&query_bytes(0x1234, name, rtype), dns)
        .await
        .unwrap();
    let mut buf = [0u8; 4096];
    let (n, from) = tokio::time::timeout(TIMEOUT, sock.recv_from(&mut buf))
        .await
        .expect("DNS reply in time")
        .unwrap();
    assert_eq!(from, dns);
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.id(), 0x1234);
    assert_eq!(reply.message_type(), MessageType::Response);
    reply
}

fn a_answers(reply: &Message) -> Vec<(Ipv4Addr, u32)> {
    reply
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some((a.0, r.ttl())),
            _ => None,
        })
        .collect()
}

fn connector(ca_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// GET / over TLS to `ip:port`, verifying the server as `server_name`; the whole response.
async fn https_get(
    ca_pem: &str,
    ip: Ipv4Addr,
    port: u16,
    server_name: ServerName<'static>,
    host_header: &str,
) -> String {
    let work = async {
        let tcp = tokio::net::TcpStream::connect((ip, port)).await.unwrap();
        let mut tls = connector(ca_pem).connect(server_name, tcp).await.unwrap();
        tls.write_all(format!("GET /secure HTTP/1.1\r\nHost: {host_header}\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        tls.read_to_string(&mut out).await.unwrap();
        out
    };
    tokio::time::timeout(TIMEOUT, work)
        .await
        .expect("HTTPS reply in time")
}

fn spec() -> Spec {
    Spec::names(["allowed.test", "other.test"]).record("private.test", Ipv4Addr::new(10, 0, 0, 1))
}

#[tokio::test]
async fn dns_answers_a_for_known_names_and_nxdomain_otherwise() {
    let net = Testnet::start(spec()).await.unwrap();
    let allowed = net.host("allowed.test").clone();
    assert_ne!(allowed.ip, net.host("other.test").ip);

    let reply = udp_resolve(net.dns, "allowed.test.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert_eq!(a_answers(&reply), vec![(allowed.ip, 60)]);

    // Names are case-insensitive, as DNS requires.
    let reply = udp_resolve(net.dns, "Allowed.TEST.", RecordType::A).await;
    assert_eq!(a_answers(&reply), vec![(allowed.ip, 60)]);

    let reply = udp_resolve(net.dns, "allowed.test.", RecordType::AAAA).await;
    assert_eq!(reply.response_code(), ResponseCode::NoError);
    assert!(reply.answers().is_empty());

    let reply = udp_resolve(net.dns, "nowhere.test.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    assert!(reply.answers().is_empty());

    // Exact names only: a subdomain of a served name does not exist.
    let reply = udp_resolve(net.dns, "sub.allowed.test.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);

    // Extra records from the spec and added later.
    let reply = udp_resolve(net.dns, "private.test.", RecordType::A).await;
    assert_eq!(a_answers(&reply), vec![(Ipv4Addr::new(10, 0, 0, 1), 60)]);
    let reply = udp_resolve(net.dns, "lo.test.", RecordType::A).await;
    assert_eq!(reply.response_code(), ResponseCode::NXDomain);
    net.add_record("lo.test", Ipv4Addr::LOCALHOST);
    let reply = udp_resolve(net.dns, "lo.test.", RecordType::A).await;
    assert_eq!(a_answers(&reply), vec![(Ipv4Addr::LOCALHOST, 60)]);

    let logged: Vec<(String, String)> = net
        .queries()
        .into_iter()
        .map(|q| (q.name, q.qtype))
        .collect();
    let expected = [
        ("allowed.test", "A"),
        ("allowed.test", "A"),
        ("allowed.test", "AAAA"),
        ("nowhere.test", "A"),
        ("sub.allowed.test", "A"),
        ("private.test", "A"),
        ("lo.test", "A"),
        ("lo.test", "A"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect();
    assert_eq!(logged, expected);
    assert!(net.queries().iter().all(|q| q.transport == "udp"));
}

#[tokio::test]
async fn dns_over_tcp_answers_several_queries_on_one_connection() {
    let net = Testnet::start(spec()).await.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(net.dns).await.unwrap();
    for (id, name) in [(1u16, "other.test."), (2, "missing.test.")] {
        let q = query_bytes(id, name, RecordType::A);
        let mut framed = (q.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&q);
        tcp.write_all(&framed).await.unwrap();
        let mut len = [0u8; 2];
        tokio::time::timeout(TIMEOUT, tcp.read_exact(&mut len))
            .await
            .unwrap()
            .unwrap();
        let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
        tcp.read_exact(&mut buf).await.unwrap();
        let reply = Message::from_vec(&buf).unwrap();
        assert_eq!(reply.id(), id);
        if id == 1 {
            assert_eq!(a_answers(&reply), vec![(net.host("other.test").ip, 60)]);
        } else {
            assert_eq!(reply.response_code(), ResponseCode::NXDomain);
        }
    }
    assert!(net.queries().iter().all(|q| q.transport == "tcp"));
}

#[tokio::test]
async fn malformed_dns_gets_formerr_not_silence() {
    let net = Testnet::start(spec()).await.unwrap();
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // A header claiming one question, then nothing.
    let junk = [0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    sock.send_to(&junk, net.dns).await.unwrap();
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(TIMEOUT, sock.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(reply.id(), 0xabcd);
    assert_eq!(reply.response_code(), ResponseCode::FormErr);
    assert!(net.queries().is_empty());
}

/// Plain std sockets and a blocking start: works without any async runtime in the test.
#[test]
fn http_get_over_a_std_tcp_stream() {
    let net = Testnet::start_blocking(spec()).unwrap();
    let host = net.host("allowed.test");
    assert_eq!((host.http_port, host.https_port), (80, 443));
    let mut tcp = TcpStream::connect((host.ip, host.http_port)).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.write_all(b"GET /some/path?q=1 HTTP/1.1\r\nHost: allowed.test\r\nUser-Agent: t\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with("\r\n\r\nhello from allowed.test over http\n"),
        "{response}"
    );

    let requests = net.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.server, "http");
    assert_eq!(r.host, "allowed.test");
    assert_eq!(r.ip, host.ip);
    assert_eq!(r.sni, None);
    assert_eq!(r.method, "GET");
    assert_eq!(r.path, "/some/path?q=1");
    assert_eq!(r.host_header.as_deref(), Some("allowed.test"));
}

#[tokio::test]
async fn https_with_the_generated_ca_and_any_sni() {
    let net = Testnet::start(spec()).await.unwrap();
    let host = net.host("allowed.test").clone();
    let name = |n: &str| ServerName::try_from(n.to_string()).unwrap();

    let response = https_get(
        &net.ca_pem,
        host.ip,
        host.https_port,
        name("allowed.test"),
        "allowed.test",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    assert!(
        response.ends_with("\r\n\r\nhello from allowed.test over https\n"),
        "{response}"
    );

    // Another served name's SNI at this address: the server does not police SNI, it answers
    // as the host owning the address and records what was presented.
    let response = https_get(
        &net.ca_pem,
        host.ip,
        host.https_port,
        name("other.test"),
        "other.test",
    )
    .await;
    assert!(response.ends_with("hello from allowed.test over https\n"));

    // By address: rustls sends no SNI for an IP, and the certificate covers the IP too.
    let response = https_get(
        &net.ca_pem,
        host.ip,
        host.https_port,
        ServerName::IpAddress(std::net::IpAddr::V4(host.ip).into()),
        "x",
    )
    .await;
    assert!(response.ends_with("hello from allowed.test over https\n"));

    let seen: Vec<(String, Option<String>, String, Option<String>)> = net
        .requests()
        .into_iter()
        .map(|r| (r.server, r.sni, r.path, r.host_header))
        .collect();
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        seen,
        vec![
            (
                "https".into(),
                s("allowed.test"),
                "/secure".into(),
                s("allowed.test")
            ),
            (
                "https".into(),
                s("other.test"),
                "/secure".into(),
                s("other.test")
            ),
            ("https".into(), None, "/secure".into(), s("x")),
        ]
    );
}

#[tokio::test]
async fn a_client_not_trusting_the_ca_fails_and_nothing_is_recorded() {
    let net = Testnet::start(spec()).await.unwrap();
    let other = Testnet::start(Spec::names(["x.test"])).await.unwrap();
    let host = net.host("allowed.test");
    let tcp = tokio::net::TcpStream::connect((host.ip, host.https_port))
        .await
        .unwrap();
    // Trusting a different run's CA must not work: each start makes its own.
    let result = connector(&other.ca_pem)
        .connect(ServerName::try_from("allowed.test").unwrap(), tcp)
        .await;
    assert!(result.is_err());
    assert!(net.requests().is_empty());
}

#[tokio::test]
async fn two_testnets_at_once_get_different_addresses() {
    let a = Testnet::start(spec()).await.unwrap();
    let b = Testnet::start(spec()).await.unwrap();
    assert_ne!(a.dns, b.dns);
    let mut ips: Vec<Ipv4Addr> = a.hosts.iter().chain(&b.hosts).map(|h| h.ip).collect();
    ips.extend([a.dns, b.dns].iter().map(|d| match d.ip() {
        std::net::IpAddr::V4(v4) => v4,
        other => panic!("{other} is not IPv4"),
    }));
    for ip in &ips {
        let [x, y, _, _] = ip.octets();
        assert!(x == 127 && y <= 1, "{ip} is outside 127.0.0.0/15");
        assert!(![Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 53)].contains(ip));
    }
    let mut unique = ips.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ips.len(), "{ips:?}");

    // Each answers for its own hosts only.
    let reply = udp_resolve(b.dns, "allowed.test.", RecordType::A).await;
    assert_eq!(a_answers(&reply), vec![(b.host("allowed.test").ip, 60)]);
}

#[test]
fn dropping_stops_every_server() {
    let net = Testnet::start_blocking(spec()).unwrap();
    let host = net.host("allowed.test").clone();
    let dns = net.dns;
    drop(net);
    for port in [host.http_port, host.https_port] {
        let err = TcpStream::connect((host.ip, port)).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
    }
    let err = TcpStream::connect(dns).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

#[test]
fn bad_specs_are_refused_at_start() {
    for spec in [
        Spec::names(["ok.test", "OK.test."]),
        Spec::names(["spaces are.test"]),
        Spec::names(["a..test"]),
        Spec::names(["a.test"]).record("a.test", Ipv4Addr::LOCALHOST),
    ] {
        assert!(Testnet::start_blocking(spec.clone()).is_err(), "{spec:?}");
    }
}

/// Polls for the child's exit, so a CLI that fails to stop fails the test instead of hanging.
fn wait_with_timeout(child: &mut std::process::Child) -> std::process::ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("sbx-testnet did not exit after its stdin closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn cli_prints_one_json_line_serves_and_stops_when_stdin_closes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sbx-testnet"))
        .args([
            "allowed.test",
            "--record",
            "lo.test=127.0.0.1",
            "other.test",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    let info: Info = serde_json::from_str(&line).unwrap();
    assert!(info.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    let names: Vec<&str> = info.hosts.iter().map(|h| h.name.as_str()).collect();
    assert_eq!(names, ["allowed.test", "other.test"]);
    // The raw JSON uses the documented field names.
    let raw: serde_json::Value = serde_json::from_str(&line).unwrap();
    for key in ["dns", "ca_pem", "hosts"] {
        assert!(raw.get(key).is_some(), "{key} missing from {line}");
    }
    assert_eq!(raw["hosts"][0]["http_port"], 80);

    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(TIMEOUT)).unwrap();
    udp.send_to(&query_bytes(7, "lo.test.", RecordType::A), info.dns)
        .unwrap();
    let mut buf = [0u8; 512];
    let n = udp.recv(&mut buf).unwrap();
    let reply = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(a_answers(&reply), vec![(Ipv4Addr::LOCALHOST, 60)]);

    let mut tcp = TcpStream::connect((info.hosts[1].ip, 80)).unwrap();
    tcp.set_read_timeout(Some(TIMEOUT)).unwrap();
    tcp.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut response = String::new();
    tcp.read_to_string(&mut response).unwrap();
    assert!(response.ends_with("hello from other.test over http\n"));

    drop(child.stdin.take());
    let status = wait_with_timeout(&mut child);
    assert!(status.success(), "{status}");
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    assert_eq!(rest, "", "only one line on stdout");
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let log: serde_json::Value = serde_json::from_str(stderr.trim()).unwrap();
    assert_eq!(log["queries"][0]["name"], "lo.test");
    assert_eq!(log["requests"][0]["host"], "other.test");
}

#[test]
fn cli_rejects_bad_arguments() {
    for args in [
        &[][..],
        &["--record", "nope"][..],
        &["--record", "a.test=300.1.1.1"][..],
        &["--bogus", "a.test"][..],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_sbx-testnet"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty());
    }
}
