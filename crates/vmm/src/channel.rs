//! The host end of the agent channel: a unix socket to QEMU's virtio-serial chardev,
//! carrying `protocol` frames. Knows nothing about processes; [`crate::vm`] adds the
//! liveness checks around it.

use std::io;
use std::path::Path;
use std::time::Duration;

use protocol::{FrameDecoder, GuestMessage, HostMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::error::ChannelError;

/// Read buffer size: the guest sends output in chunks of up to 64 KiB.
const READ_BUF: usize = 64 * 1024;

/// A connected, framed agent channel.
#[derive(Debug)]
pub struct AgentChannel {
    stream: UnixStream,
    decoder: FrameDecoder,
    buf: Box<[u8]>,
}

/// What one read produced.
#[derive(Debug)]
pub enum Received {
    Message(GuestMessage),
    /// The peer (QEMU) closed the socket.
    Eof,
}

impl AgentChannel {
    /// One connection attempt. `NotFound`/`ConnectionRefused` mean QEMU has not created the
    /// socket yet; the caller retries.
    pub async fn connect(path: &Path) -> io::Result<AgentChannel> {
        let stream = UnixStream::connect(path).await?;
        Ok(AgentChannel {
            stream,
            decoder: FrameDecoder::new(),
            buf: vec![0; READ_BUF].into_boxed_slice(),
        })
    }

    pub async fn send(&mut self, msg: &HostMessage) -> Result<(), ChannelError> {
        let frame = protocol::encode(msg)?;
        self.stream.write_all(&frame).await?;
        Ok(())
    }

    /// Returns the next message. Cancel-safe: bytes already read stay in the decoder, so a
    /// `select!` that drops this future loses nothing.
    pub async fn recv(&mut self) -> Result<Received, ChannelError> {
        loop {
            if let Some(msg) = self.decoder.next_frame::<GuestMessage>()? {
                return Ok(Received::Message(msg));
            }
            let n = self.stream.read(&mut self.buf).await?;
            if n == 0 {
                return Ok(Received::Eof);
            }
            self.decoder.push(&self.buf[..n]);
        }
    }
}

impl AgentChannel {
    /// A message that has already arrived, without waiting; `None` when there is none yet
    /// (or the peer closed, which the next [`AgentChannel::recv`] reports).
    pub fn try_recv(&mut self) -> Result<Option<GuestMessage>, ChannelError> {
        loop {
            if let Some(msg) = self.decoder.next_frame::<GuestMessage>()? {
                return Ok(Some(msg));
            }
            match self.stream.try_read(&mut self.buf) {
                Ok(0) => return Ok(None),
                Ok(n) => self.decoder.push(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// Retries connecting every `interval` until `give_up` returns `Some(err)`.
pub async fn connect_retrying<E>(
    path: &Path,
    interval: Duration,
    mut give_up: impl FnMut(&io::Error) -> Option<E>,
) -> Result<AgentChannel, E> {
    loop {
        match AgentChannel::connect(path).await {
            Ok(ch) => return Ok(ch),
            Err(e) => {
                if let Some(err) = give_up(&e) {
                    return Err(err);
                }
                tokio::time::sleep(interval).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn frames_cross_a_socket_split_arbitrarily() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut wire = protocol::encode(&GuestMessage::Ready {
                version: 1,
                uptime_ms: 5,
            })
            .unwrap();
            wire.extend(
                protocol::encode(&GuestMessage::Failed {
                    message: "x".into(),
                })
                .unwrap(),
            );
            for b in wire.chunks(3) {
                s.write_all(b).await.unwrap();
                s.flush().await.unwrap();
            }
        });
        let mut ch = AgentChannel::connect(&path).await.unwrap();
        assert!(matches!(
            ch.recv().await.unwrap(),
            Received::Message(GuestMessage::Ready { version: 1, .. })
        ));
        assert!(matches!(
            ch.recv().await.unwrap(),
            Received::Message(GuestMessage::Failed { .. })
        ));
        server.await.unwrap();
        assert!(matches!(ch.recv().await.unwrap(), Received::Eof));
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut ch = AgentChannel {
            stream: a,
            decoder: FrameDecoder::new(),
            buf: vec![0; 16].into_boxed_slice(),
        };
        b.write_all(&[2, 0, 0, 0, 0xff, 0xff]).await.unwrap();
        assert!(matches!(ch.recv().await, Err(ChannelError::Malformed(_))));
    }
}
