//! The network part of `sbx bench`, in one Python session with port 8000 forwarded and an
//! allowlist (so it has a resolver):
//!
//! - connection latency through the forward (connect, one byte there and back) beside the
//!   same exchange with a host loopback server;
//! - forward throughput, host to guest and guest to host, beside the same bytes over a
//!   host loopback connection;
//! - the time the guest waits for a DNS answer (a name the network process refuses, so it
//!   is answered without an upstream) beside a host loopback UDP round trip.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use sandbox::{NetworkPolicy, PortMapping, Scheduler, Session, SessionOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use super::{call, fail, host_fail, ratio, Series, TCP_CHUNK};
use crate::exit;

const GUEST_PORT: u16 = 8000;
/// Connections timed per round.
const CONNECTS_PER_ROUND: usize = 20;
/// DNS queries timed per round.
const QUERIES_PER_ROUND: usize = 50;
/// A domain that can never exist (RFC 2606), so listing it reaches nothing.
const LISTED: &str = "sbx-bench.invalid";
const REFUSED_NAME: &str = "refused.sbx-bench-other.invalid";

/// The guest's server, which speaks the same tiny protocol as [`host_server`]: the first
/// byte picks `e` (echo one byte), `s` (sink: count until EOF, answer the count) or `g`
/// (give: 8-byte big-endian length, then that many bytes).
const GUEST_SERVER: &str = r#"
import socket, threading
def _sbx_handle(c):
    try:
        mode = c.recv(1)
        if mode == b"e":
            c.sendall(b"e")
        elif mode == b"s":
            n = 0
            while True:
                b = c.recv(1 << 16)
                if not b:
                    break
                n += len(b)
            c.sendall(str(n).encode())
        elif mode == b"g":
            want = b""
            while len(want) < 8:
                want += c.recv(8 - len(want))
            left = int.from_bytes(want, "big")
            block = b"x" * (1 << 16)
            while left > 0:
                k = min(left, len(block))
                c.sendall(block[:k])
                left -= k
    finally:
        c.close()
def _sbx_serve():
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 8000))
    srv.listen(64)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=_sbx_handle, args=(c,), daemon=True).start()
threading.Thread(target=_sbx_serve, daemon=True).start()
"#;

/// Times `n` lookups of a refused name in the guest; prints one duration (ms) per line.
fn dns_program(n: usize) -> String {
    format!(
        "import socket, time\nfor _ in range({n}):\n    t = time.perf_counter()\n    try:\n        \
         socket.gethostbyname({REFUSED_NAME:?})\n    except OSError:\n        pass\n    \
         print((time.perf_counter() - t) * 1000)"
    )
}

/// `[loopback connect, forward connect, loopback →, forward →, loopback ←, forward ←,
/// loopback UDP RTT, guest DNS answer]`.
pub(super) async fn measure(
    scheduler: &Scheduler,
    runs: usize,
    bytes: u64,
) -> Result<Vec<Series>, i32> {
    eprintln!("sbx bench: one python session with port {GUEST_PORT} forwarded");
    let options = SessionOptions::new(sandbox::Language::Python)
        .network(NetworkPolicy::allowlist([LISTED]))
        .expose(PortMapping::tcp(GUEST_PORT));
    let session = scheduler
        .session(options)
        .await
        .map_err(|e| fail("opening a python session with a network", &e))?;
    let measured = async {
        call(&session, GUEST_SERVER, "starting the guest server", true).await?;
        let forward = forwarded(&session)?;
        let host = host_server()
            .await
            .map_err(|e| host_fail("loopback server", &e))?;
        wait_until_listening(forward).await?;
        let mut series = vec![
            Series::new("loopback connect+1B echo"),
            Series::new("forward connect+1B echo"),
            Series::throughput("loopback TCP host→", bytes),
            Series::throughput("forward host→guest", bytes),
            Series::throughput("loopback TCP ←host", bytes),
            Series::throughput("forward guest→host", bytes),
            Series::new("loopback UDP RTT"),
            Series::new("guest DNS answer"),
        ];
        let udp = UdpEcho::start()
            .await
            .map_err(|e| host_fail("loopback UDP", &e))?;
        for _ in 0..runs {
            for _ in 0..CONNECTS_PER_ROUND {
                series[0].samples.push(timed(echo(host)).await?);
                series[1].samples.push(timed(echo(forward)).await?);
            }
            series[2].samples.push(timed(sink(host, bytes)).await?);
            series[3].samples.push(timed(sink(forward, bytes)).await?);
            series[4].samples.push(timed(give(host, bytes)).await?);
            series[5].samples.push(timed(give(forward, bytes)).await?);
            for _ in 0..QUERIES_PER_ROUND {
                series[6].samples.push(timed(udp.round_trip()).await?);
            }
            series[7].samples.extend(guest_dns(&session).await?);
        }
        Ok(series)
    }
    .await;
    session.close().await;
    measured
}

fn forwarded(session: &Session) -> Result<SocketAddr, i32> {
    match session.exposed_ports().first() {
        Some(p) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, p.external))),
        None => {
            eprintln!("sbx bench: the session reported no forwarded port");
            Err(exit::INFRA)
        }
    }
}

/// The guest's server thread starts with the call but may take a moment to listen.
async fn wait_until_listening(addr: SocketAddr) -> Result<(), i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match echo(addr).await {
            Ok(()) => return Ok(()),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => return Err(host_fail("the guest server never answered", &e)),
        }
    }
}

async fn timed(work: impl std::future::Future<Output = io::Result<()>>) -> Result<Duration, i32> {
    let t = Instant::now();
    work.await
        .map_err(|e| host_fail("network measurement", &e))?;
    Ok(t.elapsed())
}

async fn echo(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"e").await?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await?;
    Ok(())
}

/// Sends `bytes` and waits for the peer's count of what arrived.
async fn sink(addr: SocketAddr, bytes: u64) -> io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"s").await?;
    let block = vec![0x5au8; TCP_CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(block.len() as u64) as usize;
        s.write_all(&block[..n]).await?;
        left -= n as u64;
    }
    s.shutdown().await?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).await?;
    if answer.trim() != bytes.to_string() {
        return Err(io::Error::other(format!(
            "the peer counted {answer:?} of {bytes} bytes"
        )));
    }
    Ok(())
}

/// Asks the peer for `bytes` and reads them to the end.
async fn give(addr: SocketAddr, bytes: u64) -> io::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(b"g").await?;
    s.write_all(&bytes.to_be_bytes()).await?;
    let mut buf = vec![0u8; TCP_CHUNK];
    let mut got: u64 = 0;
    loop {
        match s.read(&mut buf).await? {
            0 => break,
            n => got += n as u64,
        }
    }
    if got != bytes {
        return Err(io::Error::other(format!("received {got} of {bytes} bytes")));
    }
    Ok(())
}

/// The host baseline: the guest server's protocol, served on loopback.
async fn host_server() -> io::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut c, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = serve_one(&mut c).await;
            });
        }
    });
    Ok(addr)
}

async fn serve_one(c: &mut TcpStream) -> io::Result<()> {
    let mut mode = [0u8; 1];
    c.read_exact(&mut mode).await?;
    match &mode {
        b"e" => c.write_all(b"e").await,
        b"s" => {
            let mut buf = vec![0u8; TCP_CHUNK];
            let mut n: u64 = 0;
            loop {
                match c.read(&mut buf).await? {
                    0 => break,
                    k => n += k as u64,
                }
            }
            c.write_all(n.to_string().as_bytes()).await
        }
        b"g" => {
            let mut want = [0u8; 8];
            c.read_exact(&mut want).await?;
            let mut left = u64::from_be_bytes(want);
            let block = vec![b'x'; TCP_CHUNK];
            while left > 0 {
                let k = left.min(block.len() as u64) as usize;
                c.write_all(&block[..k]).await?;
                left -= k as u64;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// A DNS-sized datagram to a loopback echo and back.
struct UdpEcho {
    client: UdpSocket,
}

impl UdpEcho {
    async fn start() -> io::Result<UdpEcho> {
        let server = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let client = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        client.connect(server.local_addr()?).await?;
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, peer)) = server.recv_from(&mut buf).await {
                if server.send_to(&buf[..n], peer).await.is_err() {
                    break;
                }
            }
        });
        Ok(UdpEcho { client })
    }

    async fn round_trip(&self) -> io::Result<()> {
        let query = [0u8; 40];
        self.client.send(&query).await?;
        let mut buf = [0u8; 512];
        tokio::time::timeout(Duration::from_secs(2), self.client.recv(&mut buf))
            .await
            .map_err(|_| io::Error::other("no UDP echo within 2 s"))??;
        Ok(())
    }
}

async fn guest_dns(session: &Session) -> Result<Vec<Duration>, i32> {
    let r = session
        .exec(
            &dns_program(QUERIES_PER_ROUND),
            sandbox::DEFAULT_TIMEOUT,
            Vec::new(),
        )
        .await
        .map_err(|e| fail("guest DNS lookups", &e))?;
    if r.exit_code != 0 {
        eprintln!(
            "sbx bench: guest DNS lookups exited {}: {}",
            r.exit_code,
            r.stderr_text()
        );
        return Err(exit::INFRA);
    }
    let samples: Vec<Duration> = r
        .stdout_text()
        .lines()
        .filter_map(|l| l.trim().parse::<f64>().ok())
        .map(|ms| Duration::from_secs_f64(ms / 1000.0))
        .collect();
    if samples.len() != QUERIES_PER_ROUND {
        eprintln!(
            "sbx bench: guest DNS lookups printed {} timings",
            samples.len()
        );
        return Err(exit::INFRA);
    }
    Ok(samples)
}

/// Each forward measurement beside its loopback baseline (series come in such pairs).
pub(super) fn print_table(series: &[Series]) {
    println!(
        "{:<28} {:>9} {:>9} {:>9} {:>11}",
        "network", "p50 ms", "p95 ms", "MiB/s", "÷ loopback"
    );
    for pair in series.chunks(2) {
        let base = pair[0].percentile(0.5);
        for s in pair {
            let p50 = s.percentile(0.5);
            println!(
                "{:<28} {:>9.3} {:>9.3} {:>9} {:>11}",
                s.name,
                p50.as_secs_f64() * 1000.0,
                s.percentile(0.95).as_secs_f64() * 1000.0,
                s.mib_per_s().map_or("-".to_string(), |r| format!("{r:.1}")),
                ratio(p50, base),
            );
        }
    }
}
