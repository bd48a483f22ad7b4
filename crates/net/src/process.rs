//! Start-up and the process's I/O: read the config line, bind the forwards, connect to QEMU,
//! print ready, then run the engine with the QEMU reader/writer and stdin/stdout attached.

use crate::contract::{
    BoundForward, Config, ErrorKind, Protocol, Request, Response, DEFAULT_CONNECT_TIMEOUT_MS,
};
use crate::engine::{Engine, Exit, Settings};
use crate::frame::{encode_frame, FrameDecoder, FrameError};
use crate::host::{self, Ctrl};
use crate::policy::Policy;
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket, UnixStream};
use tokio::sync::mpsc;

/// How long to keep trying QEMU's socket (it may not exist yet when we start).
const QEMU_CONNECT_WINDOW: Duration = Duration::from_secs(5);
const RESOLV_CONF: &str = "/etc/resolv.conf";

/// A start-up failure, reported as one `{"error":...}` line.
#[derive(Debug, Error)]
#[error("{message}")]
pub struct StartError {
    pub kind: ErrorKind,
    pub message: String,
}

fn fail(kind: ErrorKind, message: impl Into<String>) -> StartError {
    StartError {
        kind,
        message: message.into(),
    }
}

/// Writes one JSON line to stdout. Failing to write means the caller is gone: exit.
pub fn emit(response: &Response) {
    let mut out = std::io::stdout().lock();
    let line = serde_json::to_string(response).unwrap_or_else(|_| "{}".to_string());
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(0);
    }
}

/// The whole process; returns the exit code.
pub fn main() -> i32 {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            emit(&Response::Error {
                kind: ErrorKind::Config,
                message: format!("tokio runtime: {error}"),
            });
            return 1;
        }
    };
    let code = runtime.block_on(run());
    // Exit without dropping the runtime: its blocking stdin reader may never return.
    std::process::exit(code);
}

async fn run() -> i32 {
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    let started = match start(&mut stdin).await {
        Ok(started) => started,
        Err(error) => {
            eprintln!("sbx-net: {}", error.message);
            emit(&Response::Error {
                kind: error.kind,
                message: error.message,
            });
            return 1;
        }
    };
    let Started {
        settings,
        stream,
        listeners,
    } = started;
    emit(&Response::Ready {
        forwards: settings.forwards.clone(),
    });

    let (ctrl_tx, ctrl_rx) = mpsc::channel::<Ctrl>(1024);
    for (forward, listener) in listeners {
        tokio::spawn(host::accept_loop(forward, listener, ctrl_tx.clone()));
    }
    for (forward, socket) in &settings.udp_sockets {
        tokio::spawn(host::udp_forward_loop(
            *forward,
            socket.clone(),
            ctrl_tx.clone(),
        ));
    }
    let (read, write) = stream.into_split();
    let (frames_tx, frames_rx) = mpsc::channel(256);
    tokio::spawn(read_frames(read, frames_tx));
    let (egress_tx, egress_rx) = mpsc::channel(1024);
    tokio::spawn(write_frames(write, egress_rx));
    let (reports_tx, reports_rx) = mpsc::channel(8);
    tokio::spawn(read_requests(stdin, reports_tx));

    let engine = Engine::new(settings, ctrl_tx, egress_tx);
    match engine
        .run(frames_rx, ctrl_rx, reports_rx, |report| {
            emit(&Response::Report(report))
        })
        .await
    {
        Exit::StdinClosed | Exit::QemuClosed => 0,
        Exit::Protocol(error) => {
            eprintln!("sbx-net: QEMU stream: {error}");
            1
        }
    }
}

struct Started {
    settings: Settings,
    stream: UnixStream,
    listeners: Vec<(usize, TcpListener)>,
}

async fn start<R: tokio::io::AsyncBufRead + Unpin>(
    stdin: &mut tokio::io::Lines<R>,
) -> Result<Started, StartError> {
    let line = match stdin.next_line().await {
        Ok(Some(line)) => line,
        Ok(None) => return Err(fail(ErrorKind::Config, "no config line on stdin")),
        Err(error) => return Err(fail(ErrorKind::Config, format!("reading stdin: {error}"))),
    };
    let config: Config = serde_json::from_str(&line)
        .map_err(|error| fail(ErrorKind::Config, format!("config: {error}")))?;
    let policy =
        Policy::from_config(&config).map_err(|error| fail(ErrorKind::Config, error.to_string()))?;
    let upstream_dns = match config.upstream_dns {
        Some(upstream) => Some(upstream),
        None => match resolv_conf_nameserver(Path::new(RESOLV_CONF)) {
            Some(upstream) => Some(upstream),
            None if config.mode == crate::contract::Mode::PortsOnly => None,
            None => {
                return Err(fail(
                    ErrorKind::Config,
                    format!("no upstream_dns given and {RESOLV_CONF} names no usable nameserver"),
                ))
            }
        },
    };
    let connect_timeout = Duration::from_millis(
        config
            .connect_timeout_ms
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
    );

    let mut forwards = Vec::new();
    let mut listeners = Vec::new();
    let mut udp_sockets = HashMap::new();
    for (index, forward) in config.forwards.iter().enumerate() {
        let requested = SocketAddr::from((Ipv4Addr::LOCALHOST, forward.external.unwrap_or(0)));
        let describe = |error: std::io::Error| {
            fail(
                ErrorKind::Bind,
                format!(
                    "{requested} ({}, for guest port {}): {error}",
                    forward.protocol.name(),
                    forward.internal
                ),
            )
        };
        let external = match forward.protocol {
            Protocol::Tcp => {
                let listener = TcpListener::bind(requested).await.map_err(describe)?;
                let port = listener.local_addr().map_err(describe)?.port();
                listeners.push((index, listener));
                port
            }
            Protocol::Udp => {
                let socket = UdpSocket::bind(requested).await.map_err(describe)?;
                let port = socket.local_addr().map_err(describe)?.port();
                udp_sockets.insert(index, Arc::new(socket));
                port
            }
        };
        forwards.push(BoundForward {
            internal: forward.internal,
            external,
            protocol: forward.protocol,
        });
    }

    let stream = connect_qemu(&config.qemu_socket).await?;
    let settings = Settings {
        policy,
        upstream_dns,
        connect_timeout,
        forwards,
        udp_sockets,
    };
    Ok(Started {
        settings,
        stream,
        listeners,
    })
}

/// Connects to QEMU's listening socket, retrying while it does not exist yet or refuses.
async fn connect_qemu(path: &Path) -> Result<UnixStream, StartError> {
    let deadline = tokio::time::Instant::now() + QEMU_CONNECT_WINDOW;
    loop {
        match UnixStream::connect(path).await {
            Ok(stream) => return Ok(stream),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                return Err(fail(
                    ErrorKind::QemuSocket,
                    format!("{}: {error}", path.display()),
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The first usable `nameserver` of a resolv.conf, port 53.
pub fn resolv_conf_nameserver(path: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(path).ok()?;
    parse_resolv_conf(&text)
}

/// The first `nameserver` line with a plain IP address (scoped IPv6 ones are skipped).
pub fn parse_resolv_conf(text: &str) -> Option<SocketAddr> {
    text.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next() == Some("nameserver"))
            .then(|| words.next())
            .flatten()
            .and_then(|address| address.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, 53))
    })
}

/// Reads QEMU's stream into frames. Ends (closing the channel) when QEMU closes; a corrupt
/// stream is passed on as an error.
async fn read_frames(
    mut read: tokio::net::unix::OwnedReadHalf,
    frames: mpsc::Sender<Result<Vec<u8>, FrameError>>,
) {
    let mut decoder = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        decoder.push(&buf[..n]);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => {
                    if frames.send(Ok(frame)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let _ = frames.send(Err(error)).await;
                    return;
                }
            }
        }
    }
}

async fn write_frames(
    mut write: tokio::net::unix::OwnedWriteHalf,
    mut frames: mpsc::Receiver<Vec<u8>>,
) {
    let mut out = Vec::new();
    while let Some(frame) = frames.recv().await {
        out.clear();
        encode_frame(&frame, &mut out);
        // Batch whatever else is already queued into one write.
        while let Ok(frame) = frames.try_recv() {
            encode_frame(&frame, &mut out);
            if out.len() > 256 * 1024 {
                break;
            }
        }
        if write.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// Reads request lines; a report request is passed to the engine, anything else is answered
/// with an error line. stdin EOF closes the channel, which stops the engine.
async fn read_requests<R: tokio::io::AsyncBufRead + Unpin>(
    mut stdin: tokio::io::Lines<R>,
    reports: mpsc::Sender<()>,
) {
    while let Ok(Some(line)) = stdin.next_line().await {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Request>(&line) {
            Ok(Request::Report(())) => {
                if reports.send(()).await.is_err() {
                    return;
                }
            }
            Err(error) => emit(&Response::Error {
                kind: ErrorKind::Config,
                message: format!("bad request: {error}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf() {
        let text = "# comment\nsearch x\nnameserver fe80::1%eth0\nnameserver 192.0.2.53\nnameserver 1.1.1.1\n";
        assert_eq!(
            parse_resolv_conf(text),
            Some("192.0.2.53:53".parse().expect("addr"))
        );
        assert_eq!(parse_resolv_conf("options ndots:1"), None);
    }
}
