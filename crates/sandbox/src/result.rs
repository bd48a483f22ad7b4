//! What an execution returns: [`ExecutionResult`], its timings, and streamed output chunks.

use serde::{Serialize, Serializer};

use protocol::{Language, Stream};
use vmm::Accelerator;

use crate::network::{ExposedPort, NetworkReport};

/// How long each phase took, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// Validation, images, accelerator probe and waiting for a VM slot.
    pub setup_ms: u64,
    /// Spawning QEMU until the guest agent answered, including retries.
    pub boot_ms: u64,
    /// Sending the code until its completion arrived.
    pub execute_ms: u64,
    /// From the call to the result, teardown included.
    pub total_ms: u64,
    /// Boot attempts that failed transiently and were retried.
    pub boot_retries: u32,
}

/// The outcome of running code to completion (or to its timeout).
///
/// `stdout` and `stderr` are the exact bytes the program wrote, up to the caps. In JSON they
/// appear as UTF-8 text; when the bytes are not valid UTF-8 (binary output, or a character
/// cut in half by the cap), the text has U+FFFD in their place and `stdout_base64` /
/// `stderr_base64` carry the exact bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionResult {
    pub language: Language,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The program's exit status; 128+N when killed by signal N; −1 on timeout.
    pub exit_code: i32,
    pub timed_out: bool,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub timing: Timing,
    /// Which accelerator ran the VM.
    pub accelerator: Accelerator,
    /// Session calls only: what happened to the REPL that holds the session's state.
    pub repl: Option<ReplInfo>,
    /// Where the forwarded guest ports were reachable on the host.
    pub exposed_ports: Vec<ExposedPort>,
    /// What the code asked of the network during this call (names, connections, inbound
    /// forwards); `None` when the VM had no network.
    pub network: Option<NetworkReport>,
}

/// The REPL's fate in one session call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReplInfo {
    /// The call ran in a newly started REPL: nothing defined by earlier calls was there
    /// (the session's first call, or the first after the REPL was lost).
    pub fresh: bool,
    /// The REPL ended during this call (it exited, was killed, or the call timed out): its
    /// state is gone and the next call starts a fresh one. Files in the home directory stay.
    pub lost: bool,
}

impl ExecutionResult {
    /// stdout as text, invalid UTF-8 replaced.
    pub fn stdout_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stdout)
    }

    /// stderr as text, invalid UTF-8 replaced.
    pub fn stderr_text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.stderr)
    }
}

impl Serialize for ExecutionResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use base64::Engine as _;
        use serde::ser::SerializeStruct;
        let exact = |bytes: &[u8]| {
            std::str::from_utf8(bytes)
                .is_err()
                .then(|| base64::engine::general_purpose::STANDARD.encode(bytes))
        };
        let stdout_base64 = exact(&self.stdout);
        let stderr_base64 = exact(&self.stderr);
        let mut st = s.serialize_struct("ExecutionResult", 16)?;
        st.serialize_field("language", &self.language)?;
        st.serialize_field("stdout", &self.stdout_text())?;
        st.serialize_field("stderr", &self.stderr_text())?;
        if let Some(b) = &stdout_base64 {
            st.serialize_field("stdout_base64", b)?;
        }
        if let Some(b) = &stderr_base64 {
            st.serialize_field("stderr_base64", b)?;
        }
        st.serialize_field("exit_code", &self.exit_code)?;
        st.serialize_field("timed_out", &self.timed_out)?;
        st.serialize_field("stdout_truncated", &self.stdout_truncated)?;
        st.serialize_field("stderr_truncated", &self.stderr_truncated)?;
        st.serialize_field("timing", &self.timing)?;
        st.serialize_field("accelerator", &self.accelerator)?;
        if let Some(repl) = &self.repl {
            st.serialize_field("repl", repl)?;
        }
        if !self.exposed_ports.is_empty() {
            st.serialize_field("exposed_ports", &self.exposed_ports)?;
        }
        if let Some(network) = &self.network {
            st.serialize_field("network", network)?;
        }
        st.end()
    }
}

/// A piece of output, delivered while the code runs. Bytes are exactly as written; a
/// multi-byte character may be split between two chunks (see [`Utf8Chunker`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    pub stream: Stream,
    pub data: Vec<u8>,
}

/// Turns a byte stream into text without ever splitting a UTF-8 character: bytes of an
/// incomplete trailing character are held until the next push.
///
/// ```
/// let mut c = sandbox::Utf8Chunker::default();
/// let euro = "€".as_bytes();
/// assert_eq!(c.push(&euro[..1]), "");
/// assert_eq!(c.push(&euro[1..]), "€");
/// assert_eq!(c.finish(), "");
/// ```
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    held: Vec<u8>,
}

impl Utf8Chunker {
    /// Adds bytes and returns the text that is now complete.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.held.extend_from_slice(bytes);
        let keep = incomplete_tail(&self.held);
        let ready: Vec<u8> = self.held.drain(..self.held.len() - keep).collect();
        String::from_utf8_lossy(&ready).into_owned()
    }

    /// Returns whatever is held, replacing an unfinished character.
    pub fn finish(&mut self) -> String {
        let rest = std::mem::take(&mut self.held);
        String::from_utf8_lossy(&rest).into_owned()
    }
}

/// Length of a trailing prefix of a multi-byte UTF-8 sequence that may still complete.
fn incomplete_tail(bytes: &[u8]) -> usize {
    // A UTF-8 sequence is at most 4 bytes, so only the last 3 can be an unfinished one.
    for back in 1..=bytes.len().min(3) {
        let b = bytes[bytes.len() - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: look further back for the lead byte
        }
        let need = match b {
            0xC2..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF4 => 4,
            _ => return 0,
        };
        return if need > back { back } else { 0 };
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(stdout: &[u8]) -> ExecutionResult {
        ExecutionResult {
            language: Language::Python,
            stdout: stdout.to_vec(),
            stderr: Vec::new(),
            exit_code: 0,
            timed_out: false,
            stdout_truncated: false,
            stderr_truncated: false,
            timing: Timing::default(),
            accelerator: Accelerator::Tcg,
            repl: None,
            exposed_ports: Vec::new(),
            network: None,
        }
    }

    #[test]
    fn json_is_text_plus_exact_bytes_when_needed() {
        let v = serde_json::to_value(result("€ ok\n".as_bytes())).unwrap();
        assert_eq!(v["stdout"], "€ ok\n");
        assert!(v.get("stdout_base64").is_none());
        assert_eq!(v["language"], "python");
        assert_eq!(v["accelerator"], "tcg");
        let v = serde_json::to_value(result(b"\xff\x00a\xe2\x82")).unwrap();
        assert_eq!(v["stdout"], "\u{fffd}\u{0}a\u{fffd}");
        assert_eq!(v["stdout_base64"], "/wBh4oI=");
        assert!(v.get("stderr_base64").is_none());
    }

    #[test]
    fn chunker_reassembles_every_split() {
        let text = "a€b😀c\u{e9}";
        let bytes = text.as_bytes();
        for cut in 0..=bytes.len() {
            let mut c = Utf8Chunker::default();
            let mut out = c.push(&bytes[..cut]);
            out += &c.push(&bytes[cut..]);
            out += &c.finish();
            assert_eq!(out, text, "cut at {cut}");
        }
    }

    #[test]
    fn chunker_byte_at_a_time_and_invalid_input() {
        let mut c = Utf8Chunker::default();
        let mut out = String::new();
        for b in "€€€".as_bytes() {
            out += &c.push(&[*b]);
        }
        assert_eq!(out, "€€€");
        // Invalid bytes are replaced, never held forever, never a panic.
        let mut c = Utf8Chunker::default();
        assert_eq!(c.push(&[0xff, b'a']), "\u{fffd}a");
        assert_eq!(c.push(&[0xe2, 0x82]), "");
        assert_eq!(c.finish(), "\u{fffd}");
    }
}
