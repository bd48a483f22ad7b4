//! First look at each guest frame, before the smoltcp interface sees it, and building the
//! UDP frames this process sends the guest itself (DNS answers, UDP NAT replies, inbound UDP).

use protocol::guest_net::{GATEWAY_IP, GATEWAY_MAC, GUEST_IP, GUEST_MAC};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress,
    IpProtocol, Ipv4Packet, Ipv4Repr, TcpPacket, UdpPacket, UdpRepr,
};
use std::net::{Ipv4Addr, SocketAddrV4};

/// Largest UDP payload that fits one unfragmented frame at the guest MTU.
pub const MAX_UDP_PAYLOAD: usize = protocol::guest_net::MTU - 20 - 8;

pub const GUEST: Ipv4Addr = Ipv4Addr::new(GUEST_IP[0], GUEST_IP[1], GUEST_IP[2], GUEST_IP[3]);
/// Where forwarded connections are sent in the guest: its own loopback address.
pub const GUEST_LOOPBACK: Ipv4Addr = Ipv4Addr::LOCALHOST;
pub const GATEWAY: Ipv4Addr =
    Ipv4Addr::new(GATEWAY_IP[0], GATEWAY_IP[1], GATEWAY_IP[2], GATEWAY_IP[3]);

/// What a guest frame is, as far as routing it inside this process goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Inspected<'a> {
    /// Hand to the smoltcp interface (ARP, ICMP to the gateway, TCP other than a new SYN).
    Stack,
    /// A TCP SYN (without ACK): the policy decides before the interface sees it.
    TcpSyn {
        src: SocketAddrV4,
        dst: SocketAddrV4,
    },
    /// A UDP datagram (checksum verified): handled here, never by the interface.
    Udp {
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &'a [u8],
    },
    /// A fragment of a UDP datagram too large for one frame, for [`crate::reassembly`].
    UdpFragment,
    /// Anything else (IPv6, later fragments, bad checksums, other hosts' traffic): dropped
    /// silently.
    Drop,
}

/// Classifies one guest frame.
///
/// Faces untrusted guest bytes: never panics, and says `Drop` for anything malformed.
pub fn inspect(frame: &[u8]) -> Inspected<'_> {
    let Ok(ethernet) = EthernetFrame::new_checked(frame) else {
        return Inspected::Drop;
    };
    let to = ethernet.dst_addr();
    if to != EthernetAddress(GATEWAY_MAC) && !to.is_broadcast() {
        return Inspected::Drop;
    }
    match ethernet.ethertype() {
        EthernetProtocol::Arp => inspect_arp(ethernet.payload()),
        EthernetProtocol::Ipv4 => inspect_ipv4(ethernet.payload()),
        _ => Inspected::Drop,
    }
}

fn inspect_arp(payload: &[u8]) -> Inspected<'_> {
    let Ok(packet) = ArpPacket::new_checked(payload) else {
        return Inspected::Drop;
    };
    match ArpRepr::parse(&packet) {
        // The stack answers ARP for every address (any-IP), so a guest talking to another
        // 10.0.2.x host fails fast; but never for the guest's own address (gratuitous ARP).
        Ok(ArpRepr::EthernetIpv4 {
            target_protocol_addr,
            ..
        }) if target_protocol_addr != GUEST => Inspected::Stack,
        _ => Inspected::Drop,
    }
}

fn inspect_ipv4(payload: &[u8]) -> Inspected<'_> {
    let Ok(ip) = Ipv4Packet::new_checked(payload) else {
        return Inspected::Drop;
    };
    // The guest answers forwarded connections from its loopback address (see
    // GUEST_LOOPBACK); nothing else may come from there.
    let from_loopback = ip.src_addr() == GUEST_LOOPBACK && ip.next_header() == IpProtocol::Tcp;
    if !ip.verify_checksum() || (ip.src_addr() != GUEST && !from_loopback) {
        return Inspected::Drop;
    }
    if from_loopback {
        return match TcpPacket::new_checked(ip.payload()) {
            // Never a connection of its own: only replies on forwarded ones.
            Ok(tcp) if (tcp.ack() || !tcp.syn()) && ip.dst_addr() == GATEWAY => Inspected::Stack,
            _ => Inspected::Drop,
        };
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if ip.more_frags() || ip.frag_offset() != 0 {
        return if ip.next_header() == IpProtocol::Udp {
            Inspected::UdpFragment
        } else {
            Inspected::Drop
        };
    }
    match ip.next_header() {
        IpProtocol::Udp => {
            let Ok(udp) = UdpPacket::new_checked(ip.payload()) else {
                return Inspected::Drop;
            };
            if !udp.verify_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst)) {
                return Inspected::Drop;
            }
            Inspected::Udp {
                src: SocketAddrV4::new(src, udp.src_port()),
                dst: SocketAddrV4::new(dst, udp.dst_port()),
                payload: udp.payload(),
            }
        }
        IpProtocol::Tcp => {
            let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
                return Inspected::Drop;
            };
            if tcp.syn() && !tcp.ack() {
                Inspected::TcpSyn {
                    src: SocketAddrV4::new(src, tcp.src_port()),
                    dst: SocketAddrV4::new(dst, tcp.dst_port()),
                }
            } else {
                Inspected::Stack
            }
        }
        // Echo replies come only from the gateway: answering pings to any address would
        // pretend the internet is reachable.
        IpProtocol::Icmp if dst == GATEWAY => Inspected::Stack,
        _ => Inspected::Drop,
    }
}

/// Largest UDP payload an IPv4 datagram can carry.
pub const MAX_UDP_DATAGRAM: usize = 65535 - 20 - 8;

/// The frames carrying one UDP datagram from `src` to the guest at `dst`: one frame when it
/// fits the MTU, else IPv4 fragments (which the guest's kernel reassembles), or none when
/// the payload is larger than a datagram can be.
pub fn udp_frames(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<Vec<u8>> {
    if payload.len() <= MAX_UDP_PAYLOAD {
        return udp_frame(src, dst, payload).into_iter().collect();
    }
    if payload.len() > MAX_UDP_DATAGRAM {
        return Vec::new();
    }
    let whole = datagram_frame(src, dst, payload);
    fragment(&whole)
}

/// Fragment payloads are multiples of 8 bytes (the offset's unit) that fit the MTU.
const FRAGMENT_DATA: usize = (protocol::guest_net::MTU - 20) / 8 * 8;

/// Splits an Ethernet frame holding one oversized IPv4 packet into MTU-sized fragments.
fn fragment(whole: &[u8]) -> Vec<Vec<u8>> {
    use std::sync::atomic::{AtomicU16, Ordering};
    static IDENT: AtomicU16 = AtomicU16::new(1);
    const ETH: usize = 14;
    const IP: usize = 20;
    let ident = IDENT.fetch_add(1, Ordering::Relaxed);
    let data = &whole[ETH + IP..];
    let mut frames = Vec::new();
    for (i, chunk) in data.chunks(FRAGMENT_DATA).enumerate() {
        let mut frame = Vec::with_capacity(ETH + IP + chunk.len());
        frame.extend_from_slice(&whole[..ETH + IP]);
        frame.extend_from_slice(chunk);
        let mut packet = Ipv4Packet::new_unchecked(&mut frame[ETH..]);
        // `total_len` fits: IP + at most FRAGMENT_DATA bytes.
        packet.set_total_len((IP + chunk.len()) as u16);
        packet.set_ident(ident);
        packet.set_dont_frag(false);
        packet.set_more_frags((i + 1) * FRAGMENT_DATA < data.len());
        packet.set_frag_offset((i * FRAGMENT_DATA) as u16);
        packet.fill_checksum();
        frames.push(frame);
    }
    frames
}

/// An Ethernet frame carrying one UDP datagram from `src` to the guest at `dst`, or `None`
/// when the payload does not fit one frame.
pub fn udp_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > MAX_UDP_PAYLOAD {
        return None;
    }
    Some(datagram_frame(src, dst, payload))
}

/// The frame for a datagram, however large (the caller fragments what exceeds the MTU).
fn datagram_frame(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let udp = UdpRepr {
        src_port: src.port(),
        dst_port: dst.port(),
    };
    let ip = Ipv4Repr {
        src_addr: *src.ip(),
        dst_addr: *dst.ip(),
        next_header: IpProtocol::Udp,
        payload_len: udp.header_len() + payload.len(),
        hop_limit: 64,
    };
    let ethernet = EthernetRepr {
        src_addr: EthernetAddress(GATEWAY_MAC),
        dst_addr: EthernetAddress(GUEST_MAC),
        ethertype: EthernetProtocol::Ipv4,
    };
    let mut buffer = vec![0u8; ethernet.buffer_len() + ip.buffer_len() + ip.payload_len];
    let mut frame = EthernetFrame::new_unchecked(&mut buffer[..]);
    ethernet.emit(&mut frame);
    let checksums = ChecksumCapabilities::default();
    let mut packet = Ipv4Packet::new_unchecked(frame.payload_mut());
    ip.emit(&mut packet, &checksums);
    let mut datagram = UdpPacket::new_unchecked(packet.payload_mut());
    udp.emit(
        &mut datagram,
        &IpAddress::Ipv4(*src.ip()),
        &IpAddress::Ipv4(*dst.ip()),
        payload.len(),
        |buf| buf.copy_from_slice(payload),
        &checksums,
    );
    buffer
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest-originated frame: swap the MACs of one we built.
    fn from_guest(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
        let mut frame = udp_frame(src, dst, payload).expect("fits");
        frame[..6].copy_from_slice(&GATEWAY_MAC);
        frame[6..12].copy_from_slice(&GUEST_MAC);
        frame
    }

    #[test]
    fn large_datagrams_become_fragments_that_reassemble() {
        let src = SocketAddrV4::new(Ipv4Addr::new(1, 2, 3, 4), 53);
        let dst = SocketAddrV4::new(GUEST, 4000);
        let payload: Vec<u8> = (0..9000u32).map(|i| i as u8).collect();
        let frames = udp_frames(src, dst, &payload);
        assert_eq!(frames.len(), 7);
        let mut data = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            assert!(frame.len() <= 14 + protocol::guest_net::MTU);
            let eth = EthernetFrame::new_checked(&frame[..]).expect("ethernet");
            let ip = Ipv4Packet::new_checked(eth.payload()).expect("ip");
            assert!(ip.verify_checksum());
            assert_eq!(ip.frag_offset() as usize, data.len());
            assert_eq!(ip.more_frags(), i + 1 < frames.len());
            data.extend_from_slice(ip.payload());
        }
        let udp = UdpPacket::new_checked(&data[..]).expect("udp");
        assert!(udp.verify_checksum(&IpAddress::Ipv4(*src.ip()), &IpAddress::Ipv4(GUEST)));
        assert_eq!(udp.payload(), &payload[..]);
        assert_eq!(udp_frames(src, dst, &payload[..1000]).len(), 1);
        assert!(udp_frames(src, dst, &vec![0; MAX_UDP_DATAGRAM + 1]).is_empty());
    }

    #[test]
    fn guest_udp_fragments_go_to_reassembly() {
        let src = SocketAddrV4::new(GUEST, 5000);
        let dst = SocketAddrV4::new(Ipv4Addr::new(9, 9, 9, 9), 7);
        let mut frames = udp_frames(src, dst, &[7; 3000]);
        for frame in &mut frames {
            frame[..6].copy_from_slice(&GATEWAY_MAC);
            frame[6..12].copy_from_slice(&GUEST_MAC);
        }
        assert!(frames.iter().all(|f| inspect(f) == Inspected::UdpFragment));
    }

    #[test]
    fn udp_round_trip() {
        let src = SocketAddrV4::new(GUEST, 5353);
        let dst = SocketAddrV4::new(GATEWAY, 53);
        let frame = from_guest(src, dst, b"query");
        assert_eq!(
            inspect(&frame),
            Inspected::Udp {
                src,
                dst,
                payload: b"query"
            }
        );
        let mut corrupt = frame.clone();
        let last = corrupt.len() - 1;
        corrupt[last] ^= 1;
        assert_eq!(inspect(&corrupt), Inspected::Drop);
        assert!(udp_frame(dst, src, &[0; MAX_UDP_PAYLOAD + 1]).is_none());
    }

    #[test]
    fn garbage_is_dropped() {
        assert_eq!(inspect(&[]), Inspected::Drop);
        let mut frame = from_guest(
            SocketAddrV4::new(GUEST, 1),
            SocketAddrV4::new(GATEWAY, 2),
            b"x",
        );
        for cut in 0..frame.len() {
            let _ = inspect(&frame[..cut]);
        }
        frame[12] = 0x86;
        frame[13] = 0xdd;
        assert_eq!(inspect(&frame), Inspected::Drop);
    }
}
