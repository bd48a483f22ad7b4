//! The host side of every flow: tokio tasks that own host sockets and talk to the engine only
//! through bounded channels (so a slow peer applies backpressure instead of growing a queue).

use crate::dns::PendingQuery;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, Notify};

/// Largest chunk moved through a data channel.
pub const CHUNK: usize = 16 * 1024;
/// Chunks in flight per direction per connection.
pub const CHANNEL_CHUNKS: usize = 2;
/// Upstream DNS answer timeout; the guest then gets SERVFAIL.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(3);

/// Messages from host tasks to the engine.
#[derive(Debug)]
pub enum Ctrl {
    /// Outbound connection `id` reached its upstream, or failed to (with the reason).
    Upstream { id: u64, result: Result<(), String> },
    /// A host client connected to TCP forward number `forward`.
    Inbound {
        forward: usize,
        stream: TcpStream,
        peer: SocketAddr,
    },
    /// A host peer sent a datagram to UDP forward number `forward`.
    InboundUdp {
        forward: usize,
        peer: SocketAddr,
        data: Vec<u8>,
    },
    /// The upstream answer (or `None` on timeout/error) to a guest query from `guest`.
    Dns {
        guest: SocketAddrV4,
        pending: Box<PendingQuery>,
        answer: Option<Vec<u8>>,
    },
    /// A datagram from the remote end of the guest UDP flow `(guest port, destination)`.
    UdpReply {
        flow: (u16, SocketAddrV4),
        data: Vec<u8>,
    },
}

/// The engine's ends of one connection's data channels.
pub struct PipeEnds {
    pub to_host: mpsc::Sender<Vec<u8>>,
    pub from_host: mpsc::Receiver<Vec<u8>>,
}

/// The task's ends.
pub struct TaskEnds {
    from_engine: mpsc::Receiver<Vec<u8>>,
    to_engine: mpsc::Sender<Vec<u8>>,
}

pub fn pipe() -> (PipeEnds, TaskEnds) {
    let (to_host, from_engine) = mpsc::channel(CHANNEL_CHUNKS);
    let (to_engine, from_host) = mpsc::channel(CHANNEL_CHUNKS);
    (
        PipeEnds { to_host, from_host },
        TaskEnds {
            from_engine,
            to_engine,
        },
    )
}

/// Connects to `target` (bounded by `timeout`), reports the outcome, sends `initial` (a
/// buffered ClientHello) and then splices.
pub async fn outbound(
    id: u64,
    target: SocketAddr,
    initial: Vec<u8>,
    timeout: Duration,
    ends: TaskEnds,
    ctrl: mpsc::Sender<Ctrl>,
    notify: Arc<Notify>,
) {
    let connected = match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(error)) => Err(format!("upstream refused: {error}")),
        Err(_) => Err(format!(
            "upstream refused: no answer within {} ms",
            timeout.as_millis()
        )),
    };
    let stream = match connected {
        Ok(stream) => stream,
        Err(reason) => {
            let _ = ctrl
                .send(Ctrl::Upstream {
                    id,
                    result: Err(reason),
                })
                .await;
            return;
        }
    };
    if ctrl
        .send(Ctrl::Upstream { id, result: Ok(()) })
        .await
        .is_err()
    {
        return;
    }
    let mut stream = stream;
    let _ = stream.set_nodelay(true);
    if !initial.is_empty() && stream.write_all(&initial).await.is_err() {
        return;
    }
    splice(stream, ends, notify).await;
}

/// Moves bytes both ways between `stream` and the engine until both directions are done or
/// the engine drops its ends (the guest socket is gone).
pub async fn splice(stream: TcpStream, ends: TaskEnds, notify: Arc<Notify>) {
    let TaskEnds {
        mut from_engine,
        to_engine,
    } = ends;
    let (mut read, mut write) = stream.into_split();
    let up = async {
        while let Some(chunk) = from_engine.recv().await {
            // Room freed in the channel: the engine may read more from the guest socket.
            notify.notify_one();
            write.write_all(&chunk).await?;
        }
        write.shutdown().await
    };
    let down = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = tokio::select! {
                n = read.read(&mut buf) => n?,
                // The engine dropped the guest socket: stop reading a host that may never close.
                _ = to_engine.closed() => return Err(std::io::ErrorKind::ConnectionAborted.into()),
            };
            if n == 0 {
                break;
            }
            if to_engine.send(buf[..n].to_vec()).await.is_err() {
                return Err(std::io::ErrorKind::ConnectionAborted.into());
            }
            notify.notify_one();
        }
        drop(to_engine);
        notify.notify_one();
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::try_join!(up, down);
    notify.notify_one();
}

/// Accepts host clients on a TCP forward.
pub async fn accept_loop(forward: usize, listener: TcpListener, ctrl: mpsc::Sender<Ctrl>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                if ctrl
                    .send(Ctrl::Inbound {
                        forward,
                        stream,
                        peer,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Out of descriptors and the like: back off rather than spin.
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Receives host datagrams on a UDP forward.
pub async fn udp_forward_loop(forward: usize, socket: Arc<UdpSocket>, ctrl: mpsc::Sender<Ctrl>) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, peer)) => {
                // Datagrams may be dropped under load, like on any network.
                let _ = ctrl.try_send(Ctrl::InboundUdp {
                    forward,
                    peer,
                    data: buf[..n].to_vec(),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Receives the replies of one guest UDP flow.
pub async fn udp_flow_loop(
    flow: (u16, SocketAddrV4),
    socket: Arc<UdpSocket>,
    ctrl: mpsc::Sender<Ctrl>,
) {
    let mut buf = vec![0u8; 65536];
    loop {
        match socket.recv(&mut buf).await {
            Ok(n) => {
                let _ = ctrl.try_send(Ctrl::UdpReply {
                    flow,
                    data: buf[..n].to_vec(),
                });
            }
            // ICMP errors surface here on a connected socket; the flow stays until it idles.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Asks `upstream` the guest's query from a fresh socket (random source port) and reports
/// the answer, or `None` after [`DNS_TIMEOUT`].
pub async fn dns_query(
    upstream: SocketAddr,
    guest: SocketAddrV4,
    pending: Box<PendingQuery>,
    ctrl: mpsc::Sender<Ctrl>,
) {
    let ask = async {
        let bind: SocketAddr = if upstream.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let socket = UdpSocket::bind(bind).await?;
        socket.connect(upstream).await?;
        socket.send(&pending.query).await?;
        let mut buf = vec![0u8; 65536];
        loop {
            let n = socket.recv(&mut buf).await?;
            // Ignore stray datagrams; the id must match the query.
            if buf[..n].get(..2) == Some(&pending.id.to_be_bytes()[..]) {
                return Ok::<Vec<u8>, std::io::Error>(buf[..n].to_vec());
            }
        }
    };
    let answer = match tokio::time::timeout(DNS_TIMEOUT, ask).await {
        Ok(Ok(answer)) => Some(answer),
        _ => None,
    };
    let _ = ctrl
        .send(Ctrl::Dns {
            guest,
            pending,
            answer,
        })
        .await;
}
