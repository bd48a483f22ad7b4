//! The host ⇄ guest wire protocol: message types, framing and the protocol version.
//!
//! This crate is the one place both sides agree. It owns the shape of every message that
//! crosses the virtio-serial channel and the byte framing around them. It must not know
//! about QEMU, processes, files or sockets: it turns messages into bytes and bytes into
//! messages, nothing more, so that the guest agent and the host library can both link it
//! and the decoder can be fuzzed on its own.
//!
//! A frame is a 4-byte little-endian body length followed by a `postcard`-encoded body.
//!
//! ```
//! use protocol::{encode, FrameDecoder, GuestMessage, Stream};
//!
//! let bytes = encode(&GuestMessage::Output { stream: Stream::Stdout, data: b"hi\n".to_vec() })?;
//! let mut decoder = FrameDecoder::new();
//! decoder.push(&bytes);
//! let msg: GuestMessage = decoder.next_frame()?.expect("one whole frame");
//! assert_eq!(msg, GuestMessage::Output { stream: Stream::Stdout, data: b"hi\n".to_vec() });
//! # Ok::<(), protocol::FrameError>(())
//! ```

use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Bumped whenever a message changes shape. The agent reports it in [`GuestMessage::Ready`];
/// the host refuses an agent that speaks another version.
pub const PROTOCOL_VERSION: u32 = 3;

/// The largest body a frame may carry. Code is capped at 1 MiB and output chunks at
/// [`MAX_CHUNK`], so anything larger is corruption, not data.
pub const MAX_FRAME_LEN: usize = 4 * 1024 * 1024;

/// Output is sent in chunks of at most this many bytes.
pub const MAX_CHUNK: usize = 64 * 1024;

/// Name of the virtio-serial port the agent talks on (`/sys/class/virtio-ports/*/name`).
pub const AGENT_PORT_NAME: &str = "org.exec-sandbox.agent";

/// Kernel command-line flag that makes the guest init power off at once, without mounting
/// anything or starting the agent. Used by the accelerator probe and the boot-floor benchmark.
pub const PROBE_CMDLINE_FLAG: &str = "sbx.probe=1";

/// Kernel command-line flag saying a home disk (virtio-blk serial [`HOME_DISK_SERIAL`], a
/// fresh ext4 filesystem whose root belongs to uid 1000) is attached: the init waits for it
/// and mounts it on `/home/user`. Without the flag the home directory is a tmpfs.
pub const HOME_DISK_CMDLINE_FLAG: &str = "sbx.home=disk";

/// virtio-blk serials, by which the init tells the disks apart (`/sys/block/vd*/serial`):
/// the order of `vda`, `vdb` follows device probing, not the command line.
pub const ROOT_DISK_SERIAL: &str = "sbx-root";
pub const HOME_DISK_SERIAL: &str = "sbx-home";

/// The guest's network, when it has one: a single virtio-net NIC backed by the host's
/// user-mode network process (`net` crate), which answers for the gateway and the resolver.
/// Fixed addresses: each VM has a network of its own, so they never clash.
pub mod guest_net {
    /// Kernel command-line flag telling the init to bring up `eth0` with these addresses.
    pub const CMDLINE_FLAG: &str = "sbx.net=1";
    pub const GUEST_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
    /// The host side's MAC (gateway and resolver).
    pub const GATEWAY_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x02];
    pub const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
    pub const GATEWAY_IP: [u8; 4] = [10, 0, 2, 2];
    /// The resolver the guest is told about; the network process answers on it.
    pub const DNS_IP: [u8; 4] = [10, 0, 2, 2];
    pub const PREFIX_LEN: u8 = 24;
    pub const MTU: usize = 1500;
    /// Where the init writes the resolver configuration; the images' `/etc/resolv.conf` is
    /// a link to it, so a guest without a network has no resolver at all.
    pub const RESOLV_CONF: &str = "/run/sbx/resolv.conf";
}

/// Line the init writes to the serial console in probe mode just before powering off.
pub const PROBE_MARKER: &str = "SBX-PROBE-OK";

/// The guest's host name: set by the init, and resolvable through the image's `/etc/hosts`.
pub const GUEST_HOSTNAME: &str = "sandbox";

/// The languages the guest can run.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Language {
    /// Python 3 (`python3`).
    Python,
    /// JavaScript or TypeScript, run by Bun.
    Javascript,
    /// A bash script.
    Raw,
}

impl Language {
    /// All languages, in a stable order.
    pub const ALL: [Language; 3] = [Language::Python, Language::Javascript, Language::Raw];

    /// The lower-case name used on the command line, in cache keys and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Javascript => "javascript",
            Language::Raw => "raw",
        }
    }

    /// File extensions the guest accepts for this language's code file, the default first.
    /// The extension decides how the runtime reads the code (Bun: TypeScript, JSX, ESM).
    pub fn extensions(self) -> &'static [&'static str] {
        match self {
            Language::Python => &["py"],
            Language::Javascript => &["ts", "tsx", "js", "jsx", "mjs", "cjs", "mts", "cts"],
            Language::Raw => &["sh", "bash"],
        }
    }

    /// Parses the names accepted by [`Language::name`] plus common aliases.
    pub fn from_name(name: &str) -> Option<Language> {
        match name.to_ascii_lowercase().as_str() {
            "python" | "py" | "python3" => Some(Language::Python),
            "javascript" | "js" | "typescript" | "ts" | "bun" => Some(Language::Javascript),
            "raw" | "bash" | "sh" | "shell" => Some(Language::Raw),
            _ => None,
        }
    }
}

impl std::fmt::Display for Language {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which output stream a chunk belongs to.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One execution, as the agent receives it. The host has already validated every field.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ExecRequest {
    pub language: Language,
    pub code: String,
    /// Extra environment variables, in the order given.
    pub env: Vec<(String, String)>,
    /// Wall-clock limit for the code, from the moment it is started.
    pub timeout_ms: u64,
    /// Bytes of stdout forwarded before the stream is cut.
    pub stdout_cap: u64,
    /// Bytes of stderr forwarded before the stream is cut.
    pub stderr_cap: u64,
    /// Guest wall-clock time to set before running, as Unix milliseconds, so the guest
    /// clock is right even when the VM was booted (or restored) long ago.
    pub unix_time_ms: u64,
    /// Extension for the code file, one of [`Language::extensions`]; `None` for the default.
    pub extension: Option<String>,
    /// Fresh host entropy to mix into the guest's pool before running.
    #[serde(with = "serde_bytes")]
    pub entropy: Vec<u8>,
    /// Run in the language's persistent REPL (a session call) instead of a fresh process.
    /// Definitions, the working directory and background processes then carry over to the
    /// next persistent call; `extension` is ignored.
    pub persistent: bool,
}

/// Messages from host to guest.
///
/// The host sends one request and waits for its answer before the next; the only
/// multi-message request is a file write (`WriteFile`, `FileData`…, `FileEnd`).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum HostMessage {
    /// Run code and stream its output back (`Output`…, then `Completed` or `Failed`).
    Exec(ExecRequest),
    /// Start writing a file under the user's home. `FileData` chunks and one `FileEnd`
    /// follow. The guest answers exactly once, with `FileDone` after `FileEnd` or with
    /// `FileFailed` as soon as it fails (it then discards data up to `FileEnd`).
    WriteFile {
        /// Relative to the home directory, already normalised by the host: no `.`/`..`
        /// components, no leading `/`.
        path: String,
        /// Mode 0755 instead of 0644.
        executable: bool,
    },
    /// Up to [`MAX_CHUNK`] bytes of the file being written.
    FileData {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The file being written is complete: commit it.
    FileEnd,
    /// The host abandons the write (its data source failed): discard it and answer
    /// `FileFailed` (unless the write had already failed and been answered).
    FileAbort,
    /// Stream a file back: `FileData`…, then `FileDone`, or `FileFailed`.
    ReadFile { path: String },
    /// List a directory: `Listing` or `FileFailed`. The empty path is the home directory.
    ListFiles { path: String },
}

/// What kind of object a directory entry is. Symlinks are reported, never followed.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Directory,
    Symlink,
    Other,
}

/// One entry of a directory listing.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct FileEntry {
    /// The entry's name (not a path). Bytes that are not UTF-8 are replaced with U+FFFD.
    pub name: String,
    pub kind: FileKind,
    /// Size in bytes (of the link itself for a symlink).
    pub size: u64,
    /// Permission bits (`0o755`…).
    pub mode: u32,
    /// Last modification, Unix seconds.
    pub modified: i64,
}

/// Why a file operation failed in the guest.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum FileErrorKind {
    /// The path (or a parent directory) does not exist.
    NotFound,
    /// The path resolves outside the home directory (an escaping `..` or symlink).
    OutsideHome,
    /// A read or a write target is not a regular file (directory, FIFO, device…).
    NotAFile,
    /// A listing target, or a parent of a write target, is not a directory.
    NotADirectory,
    /// The user is not allowed to do this.
    PermissionDenied,
    /// The guest's home disk is full.
    NoSpace,
    /// The path is not acceptable (the guest re-checks what the host validated).
    InvalidPath,
    /// Anything else; the message says what.
    Other,
    /// A read target is larger than the disk it is on (a sparse file): refused rather than
    /// sent as mostly zeros.
    TooLarge,
}

/// Most entries a listing returns; the rest are reported as `truncated`.
pub const MAX_LISTING: usize = 10_000;

/// How an execution ended, reported once after the last output chunk.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The process's exit status, 128+N when killed by signal N, −1 on timeout.
    pub exit_code: i32,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// From receiving the request to the process being started.
    pub spawn_ms: u64,
    /// From the process being started to its exit (and its output drained).
    pub run_ms: u64,
    /// Persistent calls only: this call ran in a newly started REPL, so no state from
    /// earlier calls was there (the first call, or the one after the REPL was lost).
    pub repl_fresh: bool,
    /// Persistent calls only: the REPL ended during this call (it exited, was killed, or
    /// timed out); its state is gone and the next call starts a fresh one.
    pub repl_lost: bool,
}

/// Messages from guest to host.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub enum GuestMessage {
    /// The agent is up and waiting for a request.
    Ready {
        version: u32,
        /// Guest uptime when the agent became ready.
        uptime_ms: u64,
    },
    /// A piece of the code's output, in order.
    Output {
        stream: Stream,
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// The code finished (or was killed); no more output follows.
    Completed(Completion),
    /// The agent could not start the code at all (for example the interpreter is
    /// missing from the image). The code did not run.
    Failed { message: String },
    /// A chunk of a file being read (at most [`MAX_CHUNK`] bytes).
    FileData {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// A read finished (all `FileData` sent) or a write was committed; `size` bytes.
    FileDone { size: u64 },
    /// A file operation failed; nothing was changed by a failed write.
    FileFailed {
        kind: FileErrorKind,
        message: String,
    },
    /// A directory listing, sorted by name.
    Listing {
        entries: Vec<FileEntry>,
        /// More than [`MAX_LISTING`] entries existed; the rest were left out.
        truncated: bool,
    },
}

/// Why bytes could not be turned into a message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("malformed frame body: {0}")]
    Malformed(String),
}

/// Encodes one message as a whole frame (length prefix and body).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0u8; 4];
    out = postcard::to_extend(msg, out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    let len = out.len() - 4;
    if len > MAX_FRAME_LEN {
        return Err(FrameError::TooLarge {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    out[..4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// Incremental frame decoder: push bytes as they arrive, pull whole messages out.
///
/// It never panics on any input; a bad length or body is a [`FrameError`], after which the
/// stream is unusable (there is no way to find the next frame boundary).
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        // Drop consumed bytes before growing, so the buffer stays about one frame long.
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet returned as a message.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Returns the next whole message, `Ok(None)` if more bytes are needed.
    pub fn next_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, FrameError> {
        let avail = &self.buf[self.start..];
        if avail.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        if len > MAX_FRAME_LEN {
            return Err(FrameError::TooLarge {
                len,
                max: MAX_FRAME_LEN,
            });
        }
        if avail.len() < 4 + len {
            return Ok(None);
        }
        let body = &avail[4..4 + len];
        let msg = postcard::from_bytes(body).map_err(|e| FrameError::Malformed(e.to_string()))?;
        self.start += 4 + len;
        Ok(Some(msg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> HostMessage {
        HostMessage::Exec(request())
    }

    fn request() -> ExecRequest {
        ExecRequest {
            language: Language::Python,
            code: "print('€')\n".into(),
            env: vec![("A".into(), "b".into())],
            timeout_ms: 30_000,
            stdout_cap: 1 << 20,
            stderr_cap: 100 << 10,
            unix_time_ms: 1_700_000_000_000,
            extension: Some("tsx".into()),
            entropy: vec![7; 32],
            persistent: true,
        }
    }

    #[test]
    fn round_trips_byte_by_byte() {
        let msgs = vec![
            exec(),
            HostMessage::Exec(ExecRequest {
                code: String::new(),
                ..request()
            }),
            HostMessage::WriteFile {
                path: "a/b.txt".into(),
                executable: true,
            },
            HostMessage::FileData { data: vec![0; 5] },
            HostMessage::FileEnd,
            HostMessage::FileAbort,
            HostMessage::ReadFile {
                path: String::new(),
            },
            HostMessage::ListFiles { path: "d".into() },
        ];
        let mut wire = Vec::new();
        for m in &msgs {
            wire.extend(encode(m).unwrap());
        }
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        for b in wire {
            dec.push(&[b]);
            while let Some(m) = dec.next_frame::<HostMessage>().unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn binary_output_is_exact() {
        let data: Vec<u8> = (0..=255u8).cycle().take(MAX_CHUNK).collect();
        let msg = GuestMessage::Output {
            stream: Stream::Stderr,
            data: data.clone(),
        };
        let mut dec = FrameDecoder::new();
        dec.push(&encode(&msg).unwrap());
        assert_eq!(dec.next_frame::<GuestMessage>().unwrap(), Some(msg));
    }

    #[test]
    fn oversized_length_is_an_error_not_an_allocation() {
        let mut dec = FrameDecoder::new();
        dec.push(&u32::MAX.to_le_bytes());
        assert!(matches!(
            dec.next_frame::<GuestMessage>(),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_body_is_malformed() {
        let mut dec = FrameDecoder::new();
        dec.push(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(
            dec.next_frame::<GuestMessage>(),
            Err(FrameError::Malformed(_))
        ));
    }

    #[test]
    fn language_names_round_trip() {
        for l in Language::ALL {
            assert_eq!(Language::from_name(l.name()), Some(l));
        }
        assert_eq!(Language::from_name("ts"), Some(Language::Javascript));
        assert_eq!(Language::from_name("cobol"), None);
    }
}
