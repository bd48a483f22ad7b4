//! The guest end of the virtio-serial channel: finding the port and moving whole frames.

use protocol::{encode, FrameDecoder, FrameError, GuestMessage, HostMessage, AGENT_PORT_NAME};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
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
        Ok(Self {
            port,
            decoder: FrameDecoder::new(),
            buf: vec![0; READ_BUF],
        })
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

    /// Writes one whole frame. Blocks while the host is not connected or not reading.
    pub fn send(&mut self, msg: &GuestMessage) -> Result<(), ChannelError> {
        let frame = encode(msg)?;
        self.port.write_all(&frame).map_err(ChannelError::Write)
    }
}
