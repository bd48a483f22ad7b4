//! Choosing and binding loopback addresses.
//!
//! Every host gets its own address so the sandbox can tell names apart by destination address
//! alone, and so HTTP and HTTPS can sit on their real ports (80, 443) the way a guest expects.
//! Addresses come from 127.0.0.0/15 because that is the only part of 127/8 the sandbox
//! translates. Picking at random and retrying on EADDRINUSE keeps test processes running in
//! parallel apart without any coordination between them.

use std::collections::HashSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use anyhow::bail;
use rand::Rng;
use tokio::net::{TcpListener, UdpSocket};

pub const HTTP_PORT: u16 = 80;
pub const HTTPS_PORT: u16 = 443;
pub const DNS_PORT: u16 = 53;

/// How many addresses to try before concluding something other than bad luck is wrong (a
/// wildcard listener on the port, say). 2^17 addresses make a run of clashes by chance absurd.
const ATTEMPTS: usize = 64;

/// Addresses never handed out: 127.0.0.0 is the network address, 127.0.0.1 is everyone's
/// localhost, 127.0.0.53 is systemd-resolved's stub and 127.0.1.1 is Debian's hostname alias;
/// a test talking to any of them could reach a real service instead of ours.
const RESERVED: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 0),
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 53),
    Ipv4Addr::new(127, 0, 1, 1),
];

/// A random address of 127.0.0.0/15 that is neither reserved nor already in `taken`.
fn pick(taken: &HashSet<Ipv4Addr>) -> Ipv4Addr {
    let mut rng = rand::thread_rng();
    loop {
        let ip = Ipv4Addr::new(127, rng.gen_range(0..=1), rng.gen(), rng.gen());
        if !RESERVED.contains(&ip) && !taken.contains(&ip) {
            return ip;
        }
    }
}

/// Permission errors will not go away with another address, so they end the search at once,
/// with the likely cause spelled out.
fn fatal(e: io::Error, what: &str, addr: SocketAddr) -> anyhow::Error {
    let hint = if e.kind() == io::ErrorKind::PermissionDenied {
        " (binding ports below 1024 needs root or a lower net.ipv4.ip_unprivileged_port_start)"
    } else {
        ""
    };
    anyhow::Error::new(e).context(format!("binding {what} on {addr}{hint}"))
}

pub struct DnsSockets {
    pub addr: SocketAddr,
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

/// UDP and TCP sockets for the DNS server, on the same fresh address and port 53.
pub async fn bind_dns(taken: &mut HashSet<Ipv4Addr>) -> anyhow::Result<DnsSockets> {
    for _ in 0..ATTEMPTS {
        let ip = pick(taken);
        let addr = SocketAddr::from((ip, DNS_PORT));
        let udp = match UdpSocket::bind(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(fatal(e, "DNS (udp)", addr)),
        };
        let tcp = match TcpListener::bind(addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(fatal(e, "DNS (tcp)", addr)),
        };
        taken.insert(ip);
        return Ok(DnsSockets { addr, udp, tcp });
    }
    bail!("no free loopback address for DNS after {ATTEMPTS} tries")
}

/// HTTP and HTTPS listeners on one fresh address.
pub async fn bind_web(
    taken: &mut HashSet<Ipv4Addr>,
) -> anyhow::Result<(Ipv4Addr, TcpListener, TcpListener)> {
    for _ in 0..ATTEMPTS {
        let ip = pick(taken);
        let http_addr = SocketAddr::from((ip, HTTP_PORT));
        let http = match TcpListener::bind(http_addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(fatal(e, "HTTP", http_addr)),
        };
        let https_addr = SocketAddr::from((ip, HTTPS_PORT));
        let https = match TcpListener::bind(https_addr).await {
            Ok(s) => s,
            // Another process got this address's 443 first: give up the pair, not just half.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
            Err(e) => return Err(fatal(e, "HTTPS", https_addr)),
        };
        taken.insert(ip);
        return Ok((ip, http, https));
    }
    bail!("no free loopback address with ports {HTTP_PORT} and {HTTPS_PORT} after {ATTEMPTS} tries")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_stay_in_range_and_skip_reserved() {
        let taken = HashSet::from([Ipv4Addr::new(127, 0, 0, 2)]);
        for _ in 0..10_000 {
            let ip = pick(&taken);
            let [a, b, _, _] = ip.octets();
            assert_eq!(a, 127);
            assert!(b <= 1, "{ip} is outside 127.0.0.0/15");
            assert!(!RESERVED.contains(&ip) && !taken.contains(&ip));
        }
    }
}
