//! IPv4 reassembly of the guest's fragmented UDP datagrams (a datagram over the MTU, such as
//! a large DNS-over-UDP or game packet). This module owns only putting fragments back
//! together, bounded in how many datagrams it holds and for how long; the whole datagram then
//! goes through the same policy as any other.
//!
//! Faces untrusted guest bytes: overlapping, duplicated, out-of-range or never-completed
//! fragments are tolerated and forgotten, never trusted.

use smoltcp::wire::{EthernetFrame, IpAddress, IpProtocol, Ipv4Packet, UdpPacket};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

/// Datagrams being reassembled at once; a new one past this evicts the oldest.
const MAX_PENDING: usize = 16;
/// A datagram whose fragments have not all come in this long is dropped.
const TIMEOUT: Duration = Duration::from_secs(5);
/// The largest IPv4 payload.
const MAX_PAYLOAD: usize = 65535 - 20;

/// A reassembled UDP datagram from the guest.
#[derive(Debug, PartialEq, Eq)]
pub struct Datagram {
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

struct Pending {
    data: Vec<u8>,
    /// One bit per 8-byte block received.
    blocks: Vec<u64>,
    /// The payload length, once the last fragment (no "more fragments") came.
    total: Option<usize>,
    started: Instant,
}

#[derive(Default)]
pub struct Reassembler {
    pending: HashMap<(Ipv4Addr, Ipv4Addr, u16), Pending>,
}

impl Reassembler {
    /// Takes one fragment (an Ethernet frame with a valid IPv4 header); returns the
    /// datagram when this fragment completes a UDP datagram with a valid checksum.
    pub fn push(&mut self, frame: &[u8], now: Instant) -> Option<Datagram> {
        self.pending
            .retain(|_, p| now.duration_since(p.started) < TIMEOUT);
        let eth = EthernetFrame::new_checked(frame).ok()?;
        let ip = Ipv4Packet::new_checked(eth.payload()).ok()?;
        if ip.next_header() != IpProtocol::Udp || !ip.verify_checksum() {
            return None;
        }
        let offset = usize::from(ip.frag_offset());
        let piece = ip.payload();
        let end = offset + piece.len();
        // Every fragment but the last carries a multiple of 8 bytes.
        if end > MAX_PAYLOAD || (ip.more_frags() && piece.len() % 8 != 0) || piece.is_empty() {
            return None;
        }
        let key = (ip.src_addr(), ip.dst_addr(), ip.ident());
        if !self.pending.contains_key(&key) && self.pending.len() >= MAX_PENDING {
            let oldest = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.started)
                .map(|(k, _)| *k)?;
            self.pending.remove(&oldest);
        }
        let entry = self.pending.entry(key).or_insert_with(|| Pending {
            data: Vec::new(),
            blocks: vec![0; MAX_PAYLOAD.div_ceil(8 * 64)],
            total: None,
            started: now,
        });
        if entry.data.len() < end {
            entry.data.resize(end, 0);
        }
        entry.data[offset..end].copy_from_slice(piece);
        for block in offset / 8..end.div_ceil(8) {
            entry.blocks[block / 64] |= 1 << (block % 64);
        }
        if !ip.more_frags() {
            entry.total = Some(end);
        }
        let total = entry.total?;
        let complete = (0..total.div_ceil(8)).all(|b| entry.blocks[b / 64] & (1 << (b % 64)) != 0);
        if !complete {
            return None;
        }
        let pending = self.pending.remove(&key)?;
        let data = &pending.data[..total];
        let udp = UdpPacket::new_checked(data).ok()?;
        let (src, dst) = (key.0, key.1);
        if usize::from(udp.len()) != total
            || !udp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst))
        {
            return None;
        }
        Some(Datagram {
            src: SocketAddrV4::new(src, udp.src_port()),
            dst: SocketAddrV4::new(dst, udp.dst_port()),
            payload: udp.payload().to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{udp_frames, GUEST};

    #[test]
    fn fragments_in_any_order_make_the_datagram_once() {
        let src = SocketAddrV4::new(GUEST, 5000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(9, 9, 9, 9), 7);
        let payload: Vec<u8> = (0..7000u32).map(|i| (i * 7) as u8).collect();
        let mut frames = udp_frames(src, dst, &payload);
        frames.reverse();
        let mut r = Reassembler::default();
        let now = Instant::now();
        let last = frames.pop().expect("frames");
        for f in &frames {
            assert_eq!(r.push(f, now), None);
            // A duplicate changes nothing.
            assert_eq!(r.push(f, now), None);
        }
        let whole = r.push(&last, now).expect("complete");
        assert_eq!(whole, Datagram { src, dst, payload });
        assert!(r.pending.is_empty());
    }

    #[test]
    fn incomplete_datagrams_expire_and_are_bounded() {
        let src = SocketAddrV4::new(GUEST, 5000);
        let mut r = Reassembler::default();
        let now = Instant::now();
        for port in 0..40u16 {
            let dst = SocketAddrV4::new(Ipv4Addr::new(9, 9, 9, 9), port);
            let frames = udp_frames(src, dst, &[1; 4000]);
            assert_eq!(r.push(&frames[0], now), None);
        }
        assert!(r.pending.len() <= MAX_PENDING);
        let later = now + TIMEOUT + Duration::from_secs(1);
        let dst = SocketAddrV4::new(Ipv4Addr::new(9, 9, 9, 9), 1);
        let frames = udp_frames(src, dst, &[1; 4000]);
        assert_eq!(r.push(&frames[1], later), None);
        assert_eq!(r.pending.len(), 1);
    }
}
