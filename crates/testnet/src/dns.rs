//! A tiny authoritative DNS server for the invented names.
//!
//! It knows exact names only (no wildcards, no subdomains) so a test controls precisely what
//! resolves: `A` for a known name gets its address, any other type for a known name gets an
//! empty NOERROR (so a resolver asking AAAA first does not conclude the name is missing), and an
//! unknown name gets NXDOMAIN. Messages are built with hickory-proto rather than a full server
//! crate because this is all the logic there is.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{rdata::A, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::addr::DnsSockets;
use crate::{lock, normalise, Query, Shared};

/// TTL of every answer, long enough for a resolver to cache within a test, short enough not to
/// matter across runs.
const TTL: u32 = 60;

/// A TCP client that goes quiet is dropped after this long so it cannot pin a task forever.
const TCP_IDLE: Duration = Duration::from_secs(10);

pub async fn run(sockets: DnsSockets, shared: Arc<Shared>) {
    let DnsSockets { udp, tcp, .. } = sockets;
    tokio::join!(run_udp(udp, shared.clone()), run_tcp(tcp, shared));
}

async fn run_tcp(tcp: TcpListener, shared: Arc<Shared>) {
    loop {
        match tcp.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_tcp(stream, shared.clone()));
            }
            // Accept errors (e.g. EMFILE) are transient for a test server; back off briefly
            // instead of spinning or giving up on every later client.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

async fn run_udp(udp: UdpSocket, shared: Arc<Shared>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer): (usize, SocketAddr) = match udp.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors from an earlier reply surface here on Linux; they concern that
            // client only.
            Err(_) => continue,
        };
        if let Some(reply) = answer(&buf[..len], "udp", &shared) {
            let _ = udp.send_to(&reply, peer).await;
        }
    }
}

/// DNS over TCP: each message is preceded by its length as two big-endian bytes, and a client
/// may send several on one connection.
async fn serve_tcp(mut stream: TcpStream, shared: Arc<Shared>) {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = answer(&msg, "tcp", &shared) else {
            return;
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = Vec::with_capacity(reply.len() + 2);
        out.extend_from_slice(&reply_len.to_be_bytes());
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// The wire reply to one wire query, or `None` when not even a header could be read (there is
/// no ID to answer to then).
fn answer(query: &[u8], transport: &str, shared: &Shared) -> Option<Vec<u8>> {
    let request = match Message::from_vec(query) {
        Ok(m) => m,
        Err(_) => {
            let id = u16::from_be_bytes([*query.first()?, *query.get(1)?]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if request.message_type() != MessageType::Query {
        return None; // never answer a response: that is how reflection loops start
    }

    let mut reply = Message::new();
    reply
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        // Claiming recursion lets stub resolvers (which insist on RA) accept the answers.
        .set_recursion_available(true)
        .set_authoritative(true);

    // Real resolvers send exactly one question; anything else is malformed enough to refuse.
    let question = match (request.op_code(), request.queries()) {
        (OpCode::Query, [q]) => q.clone(),
        (OpCode::Query, _) => {
            reply.set_response_code(ResponseCode::FormErr);
            return reply.to_vec().ok();
        }
        _ => {
            reply.set_response_code(ResponseCode::NotImp);
            return reply.to_vec().ok();
        }
    };
    reply.add_query(question.clone());

    let name = normalise(&question.name().to_ascii());
    let qtype = question.query_type();
    lock(&shared.queries).push(Query {
        name: name.clone(),
        qtype: qtype.to_string(),
        transport: transport.to_string(),
    });

    let known = lock(&shared.records).get(&name).copied();
    match known {
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
        Some(ip) => {
            reply.set_response_code(ResponseCode::NoError);
            if qtype == RecordType::A {
                reply.add_answer(Record::from_rdata(
                    question.name().clone(),
                    TTL,
                    RData::A(A(ip)),
                ));
            }
        }
    }
    reply.to_vec().ok()
}
