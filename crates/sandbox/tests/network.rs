//! The guest's network against real microVMs and a hermetic network of the test's own: a
//! DNS server and HTTP/HTTPS servers (self-signed CA) on loopback addresses, with invented
//! names under `.test` (the `testnet` crate). The VMs' network process is pointed at that
//! DNS server and, where a test says so, opted in to the loopback range those servers are
//! on. Binding ports 80/443 on loopback needs root, as the VM tests do anyway.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use sandbox::{
    Config, Error, ExecutionResult, ExposedPort, Language, NetworkError, NetworkPolicy,
    OutputChunk, PortMapping, RunObserver, RunRequest, Scheduler, SessionOptions,
};
use testnet::{Spec, Testnet};

const T: Duration = Duration::from_secs(90);

fn runtime_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sbxnet-")
        .tempdir_in("/tmp")
        .expect("runtime dir")
}

async fn scheduler(dir: &Path, net: Option<&Testnet>) -> Scheduler {
    let mut config = Config::from_env().expect("config");
    config.runtime_dir = dir.to_path_buf();
    config.scratch_dir = dir.join("scratch");
    config.max_concurrent_vms = 12;
    config.upstream_dns = net.map(|n| n.dns);
    Scheduler::new(config).await.expect("scheduler")
}

async fn testnet() -> Testnet {
    Testnet::start(Spec::names(["allowed.test", "other.test"]))
        .await
        .expect("testnet")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn ok(result: &ExecutionResult) -> String {
    assert_eq!(
        result.exit_code,
        0,
        "stdout: {}\nstderr: {}",
        text(&result.stdout),
        text(&result.stderr)
    );
    text(&result.stdout)
}

/// The guest's view of an address on the host's loopback: the network process hands out
/// 198.18.0.0/15 for 127.0.0.0/15 (the guest's own 127/8 is its loopback).
fn translated(ip: std::net::Ipv4Addr) -> String {
    let o = ip.octets();
    format!("{}.{}.{}.{}", 198, 18 + o[1], o[2], o[3])
}

/// An HTTP GET to `127.0.0.1:port`; `Err` carries how it failed.
fn http_get(port: u16) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(5),
    )
    .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .map_err(|e| format!("read: {e}"))?;
    if response.is_empty() {
        return Err("closed without a response".into());
    }
    Ok(text(&response))
}

/// A Python web server on `bind`:8000 that starts listening after 3 s and ends after its
/// first request (or after 60 s with none).
fn late_server(bind: &str) -> String {
    format!(
        r#"
import http.server, socket, time
time.sleep(3)
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in "{bind}" else socket.AF_INET
served = []
class H(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *a): pass
    def do_GET(self):
        super().do_GET()
        served.append(1)
srv = S(("{bind}", 8000), H)
srv.timeout = 0.5
end = time.time() + 60
while not served and time.time() < end:
    srv.handle_request()
print("served" if served else "nothing served")
"#
    )
}

/// Captures the forwarded ports as soon as they listen.
struct Ports(tokio::sync::mpsc::UnboundedSender<Vec<ExposedPort>>);

impl RunObserver for Ports {
    fn output(&mut self, _: OutputChunk) {}
    fn ports_ready(&mut self, ports: &[ExposedPort]) {
        let _ = self.0.send(ports.to_vec());
    }
}

/// Runs a late server exposed on 8000, checks that a request before it listens fails fast
/// and one after it listens gets 200, and returns the host port used.
async fn check_late_server(scheduler: &Scheduler, bind: &str) -> u16 {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let request = RunRequest::new(Language::Python, late_server(bind))
        .timeout(Duration::from_secs(120))
        .expose(PortMapping::tcp(8000));
    let scheduler = scheduler.clone();
    let run = tokio::spawn(async move {
        let mut observer = Ports(tx);
        scheduler.run_observed(request, &mut observer).await
    });
    let ports = rx
        .recv()
        .await
        .expect("ports reported before the code runs");
    assert_eq!(ports.len(), 1);
    let port = ports[0].clone();
    assert_eq!(port.internal, 8000);
    assert_eq!(port.host, "127.0.0.1");
    assert_eq!(
        port.url.as_deref(),
        Some(format!("http://127.0.0.1:{}", port.external).as_str())
    );

    // Before the server listens: an immediate, clean failure, not a hang.
    let started = Instant::now();
    let early = tokio::task::spawn_blocking(move || http_get(port.external))
        .await
        .expect("join");
    assert!(
        early.is_err(),
        "a request before the guest listens: {early:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the early request took {:?} to fail",
        started.elapsed()
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut last = Err(String::new());
    // On an idle machine the server listens well within those 5 s; ten TCG guests starting
    // Python at once on two cores take longer, so keep trying (each try fails fast).
    for _ in 0..100 {
        last = tokio::task::spawn_blocking(move || http_get(port.external))
            .await
            .expect("join");
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let response = last.unwrap_or_else(|e| panic!("request after 5 s: {e}"));
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");

    let result = run.await.expect("join").expect("run");
    assert_eq!(ok(&result).trim(), "served");
    assert_eq!(result.exposed_ports, vec![ports[0].clone()]);
    let report = result.network.expect("a network report");
    assert!(
        report
            .inbound
            .iter()
            .any(|i| i.internal == 8000 && i.bytes_out > 0),
        "{report:?}"
    );
    port.external
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_flags_the_guest_has_only_loopback() {
    let dir = runtime_dir();
    let s = scheduler(dir.path(), None).await;
    let result = s
        .run(
            RunRequest::new(
                Language::Raw,
                "ls /sys/class/net; cat /etc/resolv.conf 2>&1 || true",
            )
            .timeout(T),
        )
        .await
        .expect("run");
    let out = ok(&result);
    assert_eq!(out.lines().next(), Some("lo"), "{out}");
    assert!(!out.contains("eth0"), "{out}");
    assert!(!out.contains("nameserver"), "{out}");
    assert!(result.network.is_none());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_port_fails_fast_before_the_server_listens_and_serves_after_on_any_bind() {
    let dir = runtime_dir();
    let s = scheduler(dir.path(), None).await;
    check_late_server(&s, "0.0.0.0").await;
    check_late_server(&s, "::").await;
    // The guest's loopback too: many dev servers bind there by default.
    check_late_server(&s, "127.0.0.1").await;
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_runs_at_once_get_ten_reachable_ports() {
    let dir = runtime_dir();
    let s = scheduler(dir.path(), None).await;
    let runs: Vec<_> = (0..10)
        .map(|_| {
            let s = s.clone();
            tokio::spawn(async move { check_late_server(&s, "0.0.0.0").await })
        })
        .collect();
    let mut ports = Vec::new();
    for run in runs {
        ports.push(run.await.expect("join"));
    }
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 10, "{ports:?}");
    s.shutdown().await;
}

/// Python that tries each way out and prints one line per attempt: `name: ok ...` or
/// `name: refused (...)`.
const PROBE_OUT: &str = r#"
import socket, ssl, sys, os, urllib.request
ca = os.environ.get("CA_PEM", "").replace("|", "\n") or None
ctx = ssl.create_default_context(cadata=ca) if ca else ssl.create_default_context()
def attempt(name, fn):
    try:
        print(f"{name}: ok {fn()}")
    except Exception as e:
        print(f"{name}: refused ({type(e).__name__}: {e})")
    sys.stdout.flush()
def get(url):
    with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
        return r.status, r.read().decode().strip()
def tls(addr, sni):
    raw = socket.create_connection((addr, 443), timeout=10)
    c = ssl.create_default_context(cadata=ca)
    c.check_hostname = False
    s = c.wrap_socket(raw, server_hostname=sni)
    s.sendall(b"GET / HTTP/1.0\r\nHost: " + sni.encode() + b"\r\n\r\n")
    return s.recv(100).split(b"\r\n")[0].decode()
def resolve(name):
    return socket.gethostbyname(name)
for line in sys.argv[1:] if len(sys.argv) > 1 else os.environ["PROBES"].split(";"):
    kind, arg = line.split(" ", 1)
    if kind == "get":
        attempt(line, lambda: get(arg))
    elif kind == "tls":
        addr, sni = arg.split(" ")
        attempt(line, lambda: tls(addr, sni))
    elif kind == "resolve":
        attempt(line, lambda: resolve(arg))
    elif kind == "connect":
        host, port = arg.rsplit(":", 1)
        attempt(line, lambda: socket.create_connection((host, int(port)), timeout=10) and "connected")
"#;

async fn probe(
    s: &Scheduler,
    policy: NetworkPolicy,
    ports: Vec<PortMapping>,
    ca: &str,
    probes: &[String],
) -> (Vec<String>, sandbox::NetworkReport) {
    let mut request = RunRequest::new(Language::Python, PROBE_OUT)
        .timeout(T)
        .network(policy)
        .env(vec![
            ("CA_PEM".into(), ca.replace('\n', "|")),
            ("PROBES".into(), probes.join(";")),
        ]);
    request.expose_ports = ports;
    let result = s.run(request).await.expect("run");
    let out = ok(&result);
    let lines: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), probes.len(), "{out}\n{}", text(&result.stderr));
    (lines, result.network.expect("report"))
}

fn assert_outcomes(lines: &[String], expected: &[(&str, bool)]) {
    for (line, (what, allowed)) in lines.iter().zip(expected) {
        assert!(line.starts_with(what), "{line} vs {what}");
        let got = line[what.len()..].starts_with(": ok");
        assert_eq!(got, *allowed, "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_only_lets_the_guest_neither_resolve_nor_connect() {
    let net = testnet().await;
    let dir = runtime_dir();
    let s = scheduler(dir.path(), Some(&net)).await;
    let allowed = net.host("allowed.test").ip;
    let probes = [
        "resolve allowed.test".to_string(),
        format!("connect {}:443", translated(allowed)),
        format!("connect {}:80", translated(allowed)),
        "connect 10.0.2.2:53".to_string(),
        "connect 1.1.1.1:443".to_string(),
    ];
    let started = Instant::now();
    let (lines, report) = probe(
        &s,
        NetworkPolicy::default(),
        vec![PortMapping::tcp(8000)],
        &net.ca_pem,
        &probes,
    )
    .await;
    assert_outcomes(
        &lines,
        &probes
            .iter()
            .map(|p| (p.as_str(), false))
            .collect::<Vec<_>>(),
    );
    // Refusals are answered, not left to time out (each probe has a 10 s timeout).
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{:?}",
        started.elapsed()
    );
    assert!(report.dns.iter().all(|d| !d.allowed), "{report:?}");
    assert!(report.connections.iter().all(|c| !c.allowed), "{report:?}");
    assert!(report.connections.len() >= 4, "{report:?}");
    assert!(
        report
            .connections
            .iter()
            .any(|c| c.dst.octets() == [10, 0, 2, 2] && c.port == 53 && !c.allowed),
        "{report:?}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_lets_through_only_tls_to_listed_names_that_dns_gave() {
    let net = testnet().await;
    let dir = runtime_dir();
    let s = scheduler(dir.path(), Some(&net)).await;
    let allowed = translated(net.host("allowed.test").ip);
    let other = translated(net.host("other.test").ip);
    let policy = NetworkPolicy::allowlist(["allowed.test"]).allow_range("127.0.0.0/8");
    let probes = [
        "get https://allowed.test/".to_string(),
        "get https://other.test/".to_string(),
        format!("get https://{allowed}/"),
        // Resolve first so that the address is one DNS gave for allowed.test.
        "resolve allowed.test".to_string(),
        format!("tls {allowed} other.test"),
        format!("tls {other} allowed.test"),
        "get http://allowed.test/".to_string(),
        format!("connect {allowed}:80"),
    ];
    let (lines, report) = probe(&s, policy, vec![], &net.ca_pem, &probes).await;
    assert_outcomes(
        &lines,
        &[
            (&probes[0], true),
            (&probes[1], false),
            (&probes[2], false),
            (&probes[3], true),
            (&probes[4], false),
            (&probes[5], false),
            (&probes[6], false),
            (&probes[7], false),
        ],
    );
    assert!(
        lines[0].contains("hello from allowed.test over https"),
        "{}",
        lines[0]
    );
    // The report says what was asked for and what happened to it.
    let dns = |name: &'static str| report.dns.iter().filter(move |d| d.name == name);
    assert!(dns("allowed.test").any(|d| d.allowed), "{report:?}");
    assert!(dns("other.test").count() > 0, "{report:?}");
    assert!(dns("other.test").all(|d| !d.allowed), "{report:?}");
    let ok_conn = report
        .connections
        .iter()
        .find(|c| c.allowed)
        .unwrap_or_else(|| panic!("no allowed connection: {report:?}"));
    assert_eq!(ok_conn.port, 443);
    assert_eq!(ok_conn.name.as_deref(), Some("allowed.test"));
    assert!(ok_conn.bytes_in > 0 && ok_conn.bytes_out > 0, "{ok_conn:?}");
    assert!(
        report.connections.iter().filter(|c| !c.allowed).count() >= 4,
        "{report:?}"
    );
    // Only the one HTTPS request reached the servers.
    let seen = net.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listed_name_on_a_private_or_loopback_address_needs_an_opt_in() {
    let net = testnet().await;
    net.add_record("private.test", "10.1.2.3".parse().expect("ip"));
    let dir = runtime_dir();
    let s = scheduler(dir.path(), Some(&net)).await;
    let probes = [
        "resolve allowed.test".to_string(),
        "resolve private.test".to_string(),
        "get https://allowed.test/".to_string(),
    ];
    let policy = NetworkPolicy::allowlist(["allowed.test", "private.test"]);
    let (lines, report) = probe(&s, policy, vec![], &net.ca_pem, &probes).await;
    assert_outcomes(
        &lines,
        &[
            (&probes[0], false),
            (&probes[1], false),
            (&probes[2], false),
        ],
    );
    assert!(
        report
            .dns
            .iter()
            .any(|d| d.name == "private.test" && !d.allowed && d.reason.is_some()),
        "{report:?}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_network_reaches_the_host_loopback_only_when_opted_in() {
    let net = testnet().await;
    let dir = runtime_dir();
    let s = scheduler(dir.path(), Some(&net)).await;
    let probes = [
        "get http://allowed.test/".to_string(),
        "get https://other.test/".to_string(),
    ];
    let (lines, _) = probe(&s, NetworkPolicy::full(), vec![], &net.ca_pem, &probes).await;
    assert_outcomes(&lines, &[(&probes[0], false), (&probes[1], false)]);
    // The host's own non-loopback address is the host too: a service bound to 0.0.0.0
    // must not be reachable there.
    if let Some(own) = host_address() {
        let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("listener");
        let port = listener.local_addr().expect("addr").port();
        let probes = [format!("connect {own}:{port}")];
        let (lines, report) = probe(&s, NetworkPolicy::full(), vec![], &net.ca_pem, &probes).await;
        assert_outcomes(&lines, &[(&probes[0], false)]);
        let refusal = report.connections.iter().find(|c| c.port == port);
        assert!(
            refusal.is_some_and(|c| c
                .reason
                .as_deref()
                .is_some_and(|r| r.contains("this host's own address"))),
            "{report:?}"
        );
    }
    let opted = NetworkPolicy::full().allow_range("127.0.0.0/8");
    let (lines, report) = probe(&s, opted, vec![], &net.ca_pem, &probes).await;
    assert_outcomes(&lines, &[(&probes[0], true), (&probes[1], true)]);
    assert!(
        lines[0].contains("hello from allowed.test over http"),
        "{}",
        lines[0]
    );
    assert!(
        report.connections.iter().filter(|c| c.allowed).count() >= 2,
        "{report:?}"
    );
    s.shutdown().await;
}

/// One of this host's non-loopback IPv4 addresses, if it has one (the source address of a
/// route to a documentation address; nothing is sent).
fn host_address() -> Option<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("192.0.2.1:9").ok()?;
    match socket.local_addr().ok()?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_loopback() && !ip.is_unspecified() => Some(ip),
        _ => None,
    }
}

/// The network processes that are children of this test process.
fn net_processes() -> Vec<i32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let comm_ok = stat.contains("(sbx-net");
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .unwrap_or("");
            comm_ok && ppid == me
        })
        .collect()
}

fn kill(pid: i32) {
    // SAFETY: plain syscall on a pid this test found as its own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_process_dying_mid_call_is_a_typed_error_and_leaves_nothing() {
    let dir = runtime_dir();
    let s = scheduler(dir.path(), None).await;
    let session = s
        .session(SessionOptions::new(Language::Python).expose(PortMapping::tcp(8000)))
        .await
        .expect("session");
    let port = session.exposed_ports()[0].external;
    let serve = "import http.server, threading\n\
        srv = http.server.ThreadingHTTPServer(('0.0.0.0', 8000), http.server.SimpleHTTPRequestHandler)\n\
        threading.Thread(target=srv.serve_forever, daemon=True).start()\n\
        print('serving')";
    let served = session.exec(serve, T, vec![]).await.expect("serve");
    assert_eq!(ok(&served).trim(), "serving");
    let get = move || http_get(port);
    let response = tokio::task::spawn_blocking(get).await.expect("join");
    assert!(
        response
            .as_deref()
            .is_ok_and(|r| r.starts_with("HTTP/1.0 200")),
        "{response:?}"
    );

    // Between calls: a new process takes over on the same host port, with no call needed.
    let first = net_processes();
    assert_eq!(first.len(), 1, "{first:?}");
    kill(first[0]);
    let mut back = Err(String::new());
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        back = tokio::task::spawn_blocking(get).await.expect("join");
        if back.is_ok() {
            break;
        }
    }
    assert!(
        back.as_deref().is_ok_and(|r| r.starts_with("HTTP/1.0 200")),
        "{back:?}"
    );
    assert_eq!(session.exposed_ports()[0].external, port);
    let again = session
        .exec("print('still here')", T, vec![])
        .await
        .expect("a call after the restart");
    assert_eq!(ok(&again).trim(), "still here");

    // During a call: the call fails at once with a typed error, well before its timeout.
    let killer = tokio::spawn(async {
        tokio::time::sleep(Duration::from_secs(3)).await;
        for pid in net_processes() {
            kill(pid);
        }
    });
    let started = Instant::now();
    let err = session
        .exec(
            "import time; time.sleep(60)",
            Duration::from_secs(80),
            vec![],
        )
        .await
        .expect_err("the call must fail");
    killer.await.expect("join");
    assert!(
        matches!(err, Error::Network(NetworkError::Lost(_))),
        "{err:?}"
    );
    assert!(err.code_may_have_run());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let next = session
        .exec("print(1)", T, vec![])
        .await
        .expect_err("closed");
    assert!(matches!(next, Error::SessionClosed { .. }), "{next:?}");
    s.shutdown().await;
    assert!(net_processes().is_empty());
    let needle = dir.path().to_string_lossy().into_owned();
    let qemus = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| String::from_utf8_lossy(c).contains(&needle))
        .count();
    assert_eq!(qemus, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_forward_carries_datagrams_larger_than_the_mtu_both_ways() {
    let dir = runtime_dir();
    let s = scheduler(dir.path(), None).await;
    let session = s
        .session(SessionOptions::new(Language::Python).expose(PortMapping {
            internal: 5353,
            external: None,
            protocol: sandbox::PortProtocol::Udp,
        }))
        .await
        .expect("session");
    let port = session.exposed_ports()[0].clone();
    assert_eq!(port.url, None);
    let echo = "import socket, threading\n\
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
        u.bind(('0.0.0.0', 5353))\n\
        def serve():\n    while True:\n        d, a = u.recvfrom(65535)\n        u.sendto(d, a)\n\
        threading.Thread(target=serve, daemon=True).start()";
    ok(&session.exec(echo, T, vec![]).await.expect("echo server"));
    let external = port.external;
    let answers = tokio::task::spawn_blocking(move || {
        let client = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut got = Vec::new();
        for size in [100usize, 1472, 1473, 9000, 30000] {
            let message: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            client
                .send_to(&message, ("127.0.0.1", external))
                .expect("send");
            let mut buf = vec![0u8; 65536];
            let n = client.recv(&mut buf).expect("an answer");
            got.push(buf[..n] == message[..]);
        }
        got
    })
    .await
    .expect("join");
    assert_eq!(answers, vec![true; 5]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dev_server_on_localhost_is_reachable() {
    // Bun (like Vite, Flask and others) listens on `localhost` unless told otherwise.
    let dir = runtime_dir();
    let s = scheduler(dir.path(), None).await;
    let session = s
        .session(SessionOptions::new(Language::Javascript).expose(PortMapping::tcp(3000)))
        .await
        .expect("session");
    let port = session.exposed_ports()[0].external;
    let serve = "const server = Bun.serve({ hostname: \"localhost\", port: 3000, fetch() { return new Response(\"from bun\") } });\nconsole.log(server.hostname)";
    let started = session.exec(serve, T, vec![]).await.expect("serve");
    assert_eq!(ok(&started).trim(), "localhost");
    let mut last = Err(String::new());
    for _ in 0..40 {
        last = tokio::task::spawn_blocking(move || http_get(port))
            .await
            .expect("join");
        if last.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let response = last.unwrap_or_else(|e| panic!("{e}"));
    assert!(response.ends_with("from bun"), "{response}");
    s.shutdown().await;
}
