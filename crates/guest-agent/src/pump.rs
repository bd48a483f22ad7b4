//! Forwarding one output stream to the host, cut exactly at its cap.

use protocol::{GuestMessage, Stream};
use std::io;

/// Counts what one stream has forwarded and decides what of the next read may go out.
pub(crate) struct Pump {
    stream: Stream,
    cap: u64,
    sent: u64,
    pub(crate) truncated: bool,
}

impl Pump {
    pub(crate) fn new(stream: Stream, cap: u64) -> Self {
        Self {
            stream,
            cap,
            sent: 0,
            truncated: false,
        }
    }

    /// Sends as much of `data` as the cap allows, as one message. Bytes over the cap are
    /// dropped (the caller keeps draining the pipe so the program never blocks on it).
    pub(crate) fn forward(
        &mut self,
        data: &[u8],
        sink: &mut dyn FnMut(GuestMessage) -> io::Result<()>,
    ) -> io::Result<()> {
        let room = self.cap.saturating_sub(self.sent);
        let take = usize::try_from(room).unwrap_or(usize::MAX).min(data.len());
        if take < data.len() {
            self.truncated = true;
        }
        if take == 0 {
            return Ok(());
        }
        self.sent += take as u64;
        sink(GuestMessage::Output {
            stream: self.stream,
            data: data[..take].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_exactly_at_the_cap() {
        let mut got = Vec::new();
        let mut sink = |m: GuestMessage| {
            if let GuestMessage::Output { data, .. } = m {
                got.extend(data);
            }
            Ok(())
        };
        let mut p = Pump::new(Stream::Stdout, 5);
        p.forward(b"abc", &mut sink).unwrap();
        assert!(!p.truncated);
        p.forward(b"def", &mut sink).unwrap();
        assert!(p.truncated);
        p.forward(b"ghi", &mut sink).unwrap();
        assert_eq!(got, b"abcde");
    }

    #[test]
    fn exactly_cap_is_not_truncated() {
        let mut p = Pump::new(Stream::Stderr, 3);
        p.forward(b"abc", &mut |_| Ok(())).unwrap();
        assert!(!p.truncated);
    }
}
