//! QEMU `-netdev stream` framing: every Ethernet frame is preceded by its length as a 4-byte
//! big-endian integer. This module owns decoding that byte stream and encoding frames.

use thiserror::Error;

/// Largest frame accepted: a 64 KiB IP packet plus an Ethernet header. Anything larger (or
/// empty) means the stream is corrupt, not that the guest sent a big packet.
pub const MAX_FRAME: usize = 65535 + 14;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame length {0} is out of range (1..={MAX_FRAME})")]
    BadLength(usize),
}

/// Splits the length-prefixed stream from QEMU into frames.
///
/// Faces untrusted guest bytes (QEMU passes guest frames through): never panics, and keeps at
/// most one partial frame buffered.
#[derive(Debug, Default)]
pub struct FrameDecoder {
    buf: Vec<u8>,
    start: usize,
}

impl FrameDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        // Compact before growing so a long-lived decoder does not keep consumed bytes.
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 64 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed, or an error once the
    /// stream is known to be corrupt (the decoder stays in error after that).
    pub fn next_frame(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        let pending = &self.buf[self.start..];
        let Some(header) = pending.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
        if len == 0 || len > MAX_FRAME {
            return Err(FrameError::BadLength(len));
        }
        let Some(body) = pending.get(4..4 + len) else {
            return Ok(None);
        };
        let frame = body.to_vec();
        self.start += 4 + len;
        Ok(Some(frame))
    }
}

/// Prefixes `frame` with its length for writing to QEMU.
pub fn encode_frame(frame: &[u8], out: &mut Vec<u8>) {
    // Egress frames come from our own stack and are bounded by the MTU, so the cast is exact.
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_frames_across_pushes() {
        let mut stream = Vec::new();
        encode_frame(b"hello", &mut stream);
        encode_frame(b"w", &mut stream);
        let mut decoder = FrameDecoder::new();
        let mut frames = Vec::new();
        for byte in &stream {
            decoder.push(std::slice::from_ref(byte));
            while let Some(frame) = decoder.next_frame().expect("valid") {
                frames.push(frame);
            }
        }
        assert_eq!(frames, vec![b"hello".to_vec(), b"w".to_vec()]);
    }

    #[test]
    fn rejects_bad_lengths() {
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0, 0, 0, 0]);
        assert_eq!(decoder.next_frame(), Err(FrameError::BadLength(0)));
        let mut decoder = FrameDecoder::new();
        decoder.push(&[0xff, 0xff, 0xff, 0xff, 1]);
        assert!(decoder.next_frame().is_err());
    }

    #[test]
    fn garbage_never_panics() {
        let mut decoder = FrameDecoder::new();
        let mut seed = 7u32;
        for _ in 0..10_000 {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
            decoder.push(&seed.to_le_bytes()[..(seed % 4) as usize]);
            if decoder.next_frame().is_err() {
                decoder = FrameDecoder::new();
            }
        }
    }
}
