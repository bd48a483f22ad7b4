//! QEMU stream framing and the first look at each frame.
//!
//! Input layout: bytes 0..2 seed the chunk sizes, the rest is the stream body; the stream is
//! that body repeated `1 + (data[0] & 0x1f)` times, so that inputs within libFuzzer's default
//! 4 KiB `-max_len` still reach the decoder's compaction past 64 KiB consumed. The stream is
//! pushed into a `FrameDecoder` in those chunks, draining `next_frame` after each push until
//! `None`/`Err`; every frame then goes through `wire::inspect`.
//!
//! Checks: no panic; the frames (and whether the stream ends in an error) do not depend on
//! how the stream was split (compared with one push of the whole stream); once in error the
//! decoder stays in error; frames are non-empty and at most `MAX_FRAME`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::frame::{FrameDecoder, FrameError, MAX_FRAME};
use net::wire::{inspect, Inspected};

/// Frames and the final error (if any) from pushing `chunks` in order.
fn decode<'a>(chunks: impl Iterator<Item = &'a [u8]>) -> (Vec<Vec<u8>>, Option<FrameError>) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(error) => {
                    assert_eq!(decoder.next_frame(), Err(error.clone_for_check()));
                    return (frames, Some(error));
                }
            }
        }
    }
    (frames, None)
}

trait CloneForCheck {
    fn clone_for_check(&self) -> Self;
}

impl CloneForCheck for FrameError {
    fn clone_for_check(&self) -> Self {
        match self {
            FrameError::BadLength(len) => FrameError::BadLength(*len),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let mut state = u32::from(u16::from_le_bytes([data[0], data[1]])) | 1 << 16;
    let stream = data[2..].repeat(1 + usize::from(data[0] & 0x1f));
    let stream = stream.as_slice();

    // Chunk sizes from a small xorshift: mostly small (0..=16), sometimes large.
    let mut chunks = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = if state % 8 == 0 { (state >> 8) as usize % 4096 } else { (state >> 8) as usize % 17 };
        let end = (at + size).min(stream.len());
        chunks.push(&stream[at..end]);
        at = end;
    }

    let (frames, error) = decode(chunks.iter().copied());
    let (whole_frames, whole_error) = decode(std::iter::once(stream));
    assert_eq!(frames, whole_frames, "frames depend on the split");
    assert_eq!(error, whole_error, "error depends on the split");

    // Fragments go to one reassembler, as in the process: whatever they claim, a datagram
    // that comes out is at most an IPv4 packet's worth.
    let mut reassembler = net::reassembly::Reassembler::default();
    let now = std::time::Instant::now();
    for frame in &frames {
        assert!(!frame.is_empty() && frame.len() <= MAX_FRAME);
        match inspect(frame) {
            Inspected::Udp { payload, .. } => assert!(payload.len() <= frame.len()),
            Inspected::UdpFragment => {
                if let Some(d) = reassembler.push(frame, now) {
                    assert!(d.payload.len() <= 65535 - 20 - 8);
                }
            }
            Inspected::Stack | Inspected::TcpSyn { .. } | Inspected::Drop => {}
        }
    }
});
