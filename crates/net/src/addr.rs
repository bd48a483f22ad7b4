//! Address classification and the host-loopback translation.
//!
//! The guest cannot use 127.0.0.0/8 for the host: that is its own loopback. So when the
//! caller opts a part of 127.0.0.0/8 in (a destination range), the host's loopback is shown to
//! the guest inside 198.18.0.0/15, a block reserved for benchmarking that is never a real peer:
//!
//! * DNS answer `127.a.b.c` with `a` ∈ {0, 1} is given to the guest as `198.(18+a).b.c`
//!   ([`translate_loopback`]); other 127/8 answers cannot be shown and are removed.
//! * A guest connection to `198.18.x.y` / `198.19.x.y` is made to `127.(x-…)` on the host
//!   ([`untranslate`]), subject to the same destination rules as any other address.

use std::net::Ipv4Addr;

/// First octet pair of the translated block: 198.18.0.0/15.
const TRANSLATED_FIRST: u8 = 198;
const TRANSLATED_SECOND: u8 = 18;

/// The guest-visible address for host loopback address `ip`, or `None` when `ip` is not in
/// 127.0.0.0/15 (only 127.0.x.y and 127.1.x.y fit in the translated block).
pub fn translate_loopback(ip: Ipv4Addr) -> Option<Ipv4Addr> {
    let [a, b, c, d] = ip.octets();
    (a == 127 && b <= 1).then(|| Ipv4Addr::new(TRANSLATED_FIRST, TRANSLATED_SECOND + b, c, d))
}

/// The host address a guest destination stands for: 198.18.0.0/15 maps back to 127.0.0.0/15,
/// every other address is itself.
pub fn untranslate(ip: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, d] = ip.octets();
    if a == TRANSLATED_FIRST && (b == TRANSLATED_SECOND || b == TRANSLATED_SECOND + 1) {
        Ipv4Addr::new(127, b - TRANSLATED_SECOND, c, d)
    } else {
        ip
    }
}

/// Whether `ip` is inside the translated block.
pub fn is_translated(ip: Ipv4Addr) -> bool {
    untranslate(ip) != ip
}

/// The host's own IPv4 addresses (every interface, loopback included), read once at start.
/// A public address of the host is as much "the host" as 127.0.0.1: services bound to
/// `0.0.0.0` answer on it, so the guest must not reach it unless it is opted in.
pub fn host_addresses() -> Vec<Ipv4Addr> {
    match if_addrs::get_if_addrs() {
        Ok(interfaces) => interfaces
            .into_iter()
            .filter_map(|i| match i.ip() {
                std::net::IpAddr::V4(v4) => Some(v4),
                std::net::IpAddr::V6(_) => None,
            })
            .collect(),
        // Without the list every address is checked only by its class; say so, since a
        // host with a public address would then be reachable at it.
        Err(e) => {
            eprintln!(
                "sbx-net: cannot list the host's addresses ({e}); they are not refused by address"
            );
            Vec::new()
        }
    }
}

/// Whether the kernel would deliver traffic for `dst` to this host itself: an address
/// added after start, or one inside a `local` route (AnyIP), which no list read at start
/// holds. A route lookup only (connecting a UDP socket sends nothing): for a local
/// destination the kernel picks the destination itself as the source address. A
/// broadcast address (which the kernel refuses to connect to without `SO_BROADCAST`) counts
/// as local too; a destination with no route at all does not (its connect fails anyway).
pub fn is_this_host(dst: Ipv4Addr) -> bool {
    let Ok(probe) = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) else {
        return false;
    };
    if let Err(error) = probe.connect((dst, 9)) {
        return error.kind() == std::io::ErrorKind::PermissionDenied;
    }
    matches!(probe.local_addr(), Ok(std::net::SocketAddr::V4(local)) if *local.ip() == dst)
}

/// Why a host address is not reachable unless opted in, or `None` for a public address.
pub fn restricted_kind(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    let kind = match (a, b) {
        (0, _) => "unspecified",
        (10, _) | (192, 168) => "private",
        (172, 16..=31) => "private",
        (100, 64..=127) => "private (shared address space)",
        (127, _) => "loopback",
        (169, 254) => "link-local",
        (198, 18..=19) => "reserved",
        (224..=239, _) => "multicast",
        (240..=255, _) => "reserved",
        _ => return None,
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn translation_round_trips() {
        let host = Ipv4Addr::new(127, 1, 2, 3);
        let guest = translate_loopback(host).expect("translatable");
        assert_eq!(guest, Ipv4Addr::new(198, 19, 2, 3));
        assert_eq!(untranslate(guest), host);
        assert_eq!(
            translate_loopback(Ipv4Addr::new(127, 0, 0, 1)),
            Some(Ipv4Addr::new(198, 18, 0, 1))
        );
        assert_eq!(translate_loopback(Ipv4Addr::new(127, 2, 0, 1)), None);
        assert_eq!(translate_loopback(Ipv4Addr::new(8, 8, 8, 8)), None);
        assert_eq!(
            untranslate(Ipv4Addr::new(8, 8, 8, 8)),
            Ipv4Addr::new(8, 8, 8, 8)
        );
        assert_eq!(
            untranslate(Ipv4Addr::new(198, 20, 0, 1)),
            Ipv4Addr::new(198, 20, 0, 1)
        );
    }

    #[test]
    fn the_kernel_says_which_destinations_are_this_host() {
        assert!(is_this_host(Ipv4Addr::new(127, 0, 0, 1)));
        for own in host_addresses() {
            assert!(is_this_host(own), "{own}");
        }
        // A documentation address is nobody's (routed or not), and asking sends nothing.
        if !host_addresses().contains(&Ipv4Addr::new(192, 0, 2, 77)) {
            assert!(!is_this_host(Ipv4Addr::new(192, 0, 2, 77)));
        }
    }

    #[test]
    fn classification() {
        assert_eq!(restricted_kind(Ipv4Addr::new(1, 1, 1, 1)), None);
        assert_eq!(restricted_kind(Ipv4Addr::new(172, 32, 0, 1)), None);
        assert_eq!(
            restricted_kind(Ipv4Addr::new(172, 16, 0, 1)),
            Some("private")
        );
        assert_eq!(
            restricted_kind(Ipv4Addr::new(169, 254, 169, 254)),
            Some("link-local")
        );
        assert_eq!(
            restricted_kind(Ipv4Addr::new(255, 255, 255, 255)),
            Some("reserved")
        );
        assert_eq!(
            restricted_kind(Ipv4Addr::new(127, 0, 0, 1)),
            Some("loopback")
        );
    }
}
