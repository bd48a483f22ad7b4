//! The guest end of the virtio-serial channel: finding the port and moving whole frames.

use crate::watch;
use protocol::{encode, FrameDecoder, FrameError, GuestMessage, HostMessage, AGENT_PORT_NAME};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Read size: the port delivers what QEMU has buffered; small reads are ~10× slower.
const READ_BUF: usize = 64 * 1024;
/// While no host is connected a read returns 0 at once; this is the retry step.
const IDLE_STEP: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("no virtio-serial port named {AGENT_PORT_NAME} appeared within {0:?}")]
    NoPort(Duration),
    #[error("opening {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("reading the channel: {0}")]
    Read(io::Error),
    #[error("writing the channel: {0}")]
    Write(io::Error),
    #[error("bad frame from the host: {0}")]
    Frame(#[from] FrameError),
}

/// Waits up to `bound` for the agent port's device node (`/dev/vportNpM`).
pub fn find_port(bound: Duration) -> Result<PathBuf, ChannelError> {
    let start = Instant::now();
    loop {
        if let Some(dev) = scan_ports() {
            if dev.exists() {
                return Ok(dev);
            }
        }
        if start.elapsed() >= bound {
            return Err(ChannelError::NoPort(bound));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn scan_ports() -> Option<PathBuf> {
    fs::read_dir("/sys/class/virtio-ports")
        .ok()?
        .filter_map(Result::ok)
        .find_map(|entry| {
            let name = fs::read_to_string(entry.path().join("name")).ok()?;
            (name.trim_end() == AGENT_PORT_NAME)
                .then(|| PathBuf::from("/dev").join(entry.file_name()))
        })
}

/// Descriptors the agent keeps serving while it waits for the host's next message (the
/// output pipes of idle REPLs, which must never fill up and block their writers).
pub trait Idle {
    /// Appends the descriptors to watch for input.
    fn fds(&self, out: &mut Vec<RawFd>);
    /// Called with the watched descriptors that are ready (readable, hung up or in error).
    /// It must consume what made them ready, or stop watching them, or the wait spins.
    fn service(&mut self, ready: &[RawFd]);
}

/// A framed, blocking connection to the host.
pub struct Channel {
    port: File,
    decoder: FrameDecoder,
    buf: Vec<u8>,
}

impl Channel {
    pub fn open(path: PathBuf) -> Result<Self, ChannelError> {
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| ChannelError::Open { path, source })?;
        Ok(Self::from_file(port))
    }

    /// A channel over an already open port (or, in tests, one end of a socket pair).
    pub fn from_file(port: File) -> Self {
        Self {
            port,
            decoder: FrameDecoder::new(),
            buf: vec![0; READ_BUF],
        }
    }

    /// Blocks until the next whole message arrives. Waits (never fails) while the host is
    /// not connected, so the host may connect late or reconnect after a snapshot restore.
    pub fn recv(&mut self) -> Result<HostMessage, ChannelError> {
        loop {
            if let Some(msg) = self.decoder.next_frame()? {
                return Ok(msg);
            }
            match self.port.read(&mut self.buf) {
                Ok(0) => std::thread::sleep(IDLE_STEP),
                Ok(n) => self.decoder.push(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(IDLE_STEP),
                Err(e) => return Err(ChannelError::Read(e)),
            }
        }
    }

    /// Like [`Channel::recv`], but serves `idle` while waiting.
    ///
    /// While no host is connected the port polls readable and reads return 0 at once;
    /// it is then left out of the wait for [`IDLE_STEP`] (so the wait does not spin) while
    /// `idle` is still served.
    pub fn recv_serving(&mut self, idle: &mut dyn Idle) -> Result<HostMessage, ChannelError> {
        let mut parked_until: Option<Instant> = None;
        let mut watched = Vec::new();
        let mut fds = Vec::new();
        let mut ready = Vec::new();
        loop {
            if let Some(msg) = self.decoder.next_frame()? {
                return Ok(msg);
            }
            let now = Instant::now();
            if parked_until.is_some_and(|until| now >= until) {
                parked_until = None;
            }
            let port = parked_until.is_none().then(|| self.port.as_raw_fd());
            watched.clear();
            idle.fds(&mut watched);
            fds.clear();
            fds.push(watch::poll_entry(port));
            fds.extend(watched.iter().map(|&fd| watch::poll_entry(Some(fd))));
            let wait = parked_until.map(|until| until.saturating_duration_since(now));
            watch::poll(&mut fds, wait).map_err(ChannelError::Read)?;

            ready.clear();
            ready.extend(fds[1..].iter().filter(|f| f.revents != 0).map(|f| f.fd));
            if !ready.is_empty() {
                idle.service(&ready);
            }
            if fds[0].revents == 0 {
                continue;
            }
            match self.port.read(&mut self.buf) {
                Ok(0) => parked_until = Some(Instant::now() + IDLE_STEP),
                Ok(n) => self.decoder.push(&self.buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    parked_until = Some(Instant::now() + IDLE_STEP)
                }
                Err(e) => return Err(ChannelError::Read(e)),
            }
        }
    }

    /// Writes one whole frame. Blocks while the host is not connected or not reading.
    pub fn send(&mut self, msg: &GuestMessage) -> Result<(), ChannelError> {
        let frame = encode(msg)?;
        self.port.write_all(&frame).map_err(ChannelError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    /// Records what it was asked to serve and drains the pipe it watches.
    struct Pipe {
        reader: File,
        served: Vec<u8>,
    }

    impl Idle for Pipe {
        fn fds(&self, out: &mut Vec<RawFd>) {
            out.push(self.reader.as_raw_fd());
        }
        fn service(&mut self, ready: &[RawFd]) {
            assert_eq!(ready, [self.reader.as_raw_fd()]);
            let mut buf = [0u8; 64];
            let n = self.reader.read(&mut buf).expect("read the idle pipe");
            self.served.extend_from_slice(&buf[..n]);
        }
    }

    #[test]
    fn serves_idle_descriptors_while_waiting_for_a_message() {
        let (ours, mut host) = UnixStream::pair().expect("socket pair");
        let mut chan = Channel::from_file(File::from(std::os::fd::OwnedFd::from(ours)));
        let (reader, mut writer) = crate::spawn::pipe().expect("pipe");
        let mut idle = Pipe {
            reader,
            served: Vec::new(),
        };
        let sender = std::thread::spawn(move || {
            writer.write_all(b"chatter").expect("write the idle pipe");
            std::thread::sleep(Duration::from_millis(200));
            let frame = encode(&HostMessage::FileEnd).expect("encode");
            // Split so the decoder has to wait for the rest of the frame.
            host.write_all(&frame[..2]).expect("send");
            std::thread::sleep(Duration::from_millis(50));
            host.write_all(&frame[2..]).expect("send");
            host
        });
        let msg = chan.recv_serving(&mut idle).expect("a message");
        assert_eq!(msg, HostMessage::FileEnd);
        assert_eq!(idle.served, b"chatter");
        drop(sender.join());
    }
}
