//! The HTTP and HTTPS servers: a fixed `200 OK` naming the host, one request per connection.
//!
//! HTTP/1.1 is handled by hand (read the head up to the blank line, answer, close): the tests
//! only need to see that a request arrived and which host answered, and a handful of lines is
//! easier to trust than a server framework. `Connection: close` spares clients any guessing
//! about keep-alive.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::{lock, Request, Shared};

/// Bound on a request head; more than this is not a request the tests send.
const MAX_HEAD: usize = 16 * 1024;

/// A client that stalls (mid-handshake or mid-request) is dropped after this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn run_http(listener: TcpListener, host: Arc<str>, ip: Ipv4Addr, shared: Arc<Shared>) {
    loop {
        let Ok((stream, peer)) = accept(&listener).await else {
            continue;
        };
        let (host, shared) = (host.clone(), shared.clone());
        tokio::spawn(async move {
            let conn = Conn {
                server: "http",
                host,
                ip,
                sni: None,
                peer,
            };
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, serve(stream, conn, &shared)).await;
        });
    }
}

pub async fn run_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    host: Arc<str>,
    ip: Ipv4Addr,
    shared: Arc<Shared>,
) {
    loop {
        let Ok((stream, peer)) = accept(&listener).await else {
            continue;
        };
        let (acceptor, host, shared) = (acceptor.clone(), host.clone(), shared.clone());
        tokio::spawn(async move {
            let work = async {
                // A failed handshake (say, a client that distrusts our CA) just ends this
                // connection; there is no request to record.
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let sni = tls.get_ref().1.server_name().map(str::to_owned);
                let conn = Conn {
                    server: "https",
                    host,
                    ip,
                    sni,
                    peer,
                };
                serve(tls, conn, &shared).await;
            };
            let _ = tokio::time::timeout(CLIENT_TIMEOUT, work).await;
        });
    }
}

/// Accept errors (e.g. EMFILE) are transient for a test server; a short pause keeps the loop
/// from spinning while they last.
async fn accept(listener: &TcpListener) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    let r = listener.accept().await;
    if r.is_err() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r
}

/// Who a connection reached and how.
struct Conn {
    server: &'static str,
    host: Arc<str>,
    ip: Ipv4Addr,
    sni: Option<String>,
    peer: SocketAddr,
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, conn: Conn, shared: &Shared) {
    let Some(head) = read_head(&mut stream).await else {
        return;
    };
    let Some((method, path, host_header)) = parse_head(&head) else {
        let _ = stream
            .write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await;
        let _ = stream.shutdown().await;
        return;
    };

    let body = format!("hello from {} over {}\n", conn.host, conn.server);
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        response.push_str(&body);
    }
    lock(&shared.requests).push(Request {
        server: conn.server.to_string(),
        host: conn.host.to_string(),
        ip: conn.ip,
        sni: conn.sni,
        method,
        path,
        host_header,
        peer: conn.peer,
    });
    if stream.write_all(response.as_bytes()).await.is_ok() {
        // For TLS this sends close_notify, so clients see a clean end rather than a truncation.
        let _ = stream.shutdown().await;
    }
}

/// Reads up to and including the blank line ending the request head; `None` if the client
/// closes first or the head is too big.
async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> Option<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 2048];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = find(&head, b"\r\n\r\n") {
            head.truncate(end);
            return Some(head);
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Method, target and `Host` header of a request head.
fn parse_head(head: &[u8]) -> Option<(String, String, Option<String>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next().filter(|m| !m.is_empty())?;
    let path = request_line.next().filter(|p| !p.is_empty())?;
    if !request_line.next()?.starts_with("HTTP/") {
        return None;
    }
    let host = lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("host")
            .then(|| value.trim().to_string())
    });
    Some((method.to_string(), path.to_string(), host))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_request_head() {
        let head = b"GET /x?y=1 HTTP/1.1\r\nUser-Agent: t\r\nhOsT:  allowed.test \r\nAccept: */*";
        assert_eq!(
            parse_head(head),
            Some(("GET".into(), "/x?y=1".into(), Some("allowed.test".into())))
        );
        assert_eq!(
            parse_head(b"GET / HTTP/1.0"),
            Some(("GET".into(), "/".into(), None))
        );
        assert_eq!(parse_head(b"garbage"), None);
        assert_eq!(parse_head(b"GET /"), None);
    }
}
