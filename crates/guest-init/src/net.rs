//! Network interfaces: `lo` always, and `eth0` when the VM has a NIC.
//!
//! Done with the classic `SIOCS*` ioctls (what `ip`/`ifconfig` do) rather than netlink:
//! four fixed settings on one interface do not justify a netlink library in PID 1, and the
//! ioctls need no process, no parsing and no allocation. The addresses are fixed
//! (`protocol::guest_net`): each VM has a network of its own, served by the host's network
//! process, so there is nothing to negotiate and no DHCP.

use crate::error::InitError;
use protocol::guest_net;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

/// The NIC's name: the kernel names the first ethernet device `eth0`, and nothing renames it.
const NIC: &str = "eth0";
/// virtio_net registers the interface within milliseconds of loading.
const NIC_WAIT: Duration = Duration::from_secs(5);

/// Sets IFF_UP on `lo`. The kernel assigns 127.0.0.1/8 and ::1 itself.
pub fn loopback_up() -> Result<(), InitError> {
    let sock = Socket::new()?;
    sock.set_up("lo")
}

/// Brings up `eth0` with the guest's fixed address, a default route through the gateway
/// and no IPv6 (the host side speaks only IPv4), and writes the resolver configuration.
pub fn nic_up(resolv_conf: &Path) -> Result<(), InitError> {
    wait_for_nic()?;
    // Before the link is up, so the kernel never starts IPv6 autoconfiguration on it.
    let v6 = format!("/proc/sys/net/ipv6/conf/{NIC}/disable_ipv6");
    std::fs::write(&v6, "1").map_err(InitError::io(format!("write {v6}")))?;
    // Forwarded connections arrive addressed to 127.0.0.1 (see the `net` crate), so a
    // server bound to the guest's loopback — the default of many dev servers — is reachable
    // as well as one bound to 0.0.0.0. Only the network process sends to eth0, and only
    // for the ports the caller exposed.
    for conf in ["all", NIC] {
        let path = format!("/proc/sys/net/ipv4/conf/{conf}/route_localnet");
        std::fs::write(&path, "1").map_err(InitError::io(format!("write {path}")))?;
    }
    let sock = Socket::new()?;
    sock.set_addr(NIC, libc::SIOCSIFADDR, guest_net::GUEST_IP)?;
    sock.set_addr(NIC, libc::SIOCSIFNETMASK, netmask(guest_net::PREFIX_LEN))?;
    sock.set_up(NIC)?;
    sock.add_default_route(guest_net::GATEWAY_IP)?;
    let [a, b, c, d] = guest_net::DNS_IP;
    // Short timeouts: the resolver is one hop away and answers at once, or refuses.
    let text = format!("nameserver {a}.{b}.{c}.{d}\noptions timeout:2 attempts:2\n");
    std::fs::write(resolv_conf, text)
        .map_err(InitError::io(format!("write {}", resolv_conf.display())))
}

fn wait_for_nic() -> Result<(), InitError> {
    let sys = format!("/sys/class/net/{NIC}");
    let start = Instant::now();
    while !Path::new(&sys).exists() {
        if start.elapsed() >= NIC_WAIT {
            return Err(InitError::Other(format!(
                "{NIC} did not appear within {NIC_WAIT:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn netmask(prefix: u8) -> [u8; 4] {
    let bits = u32::MAX
        .checked_shl(32 - u32::from(prefix.min(32)))
        .unwrap_or(0);
    bits.to_be_bytes()
}

fn sockaddr_in(ip: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; this is how the ioctls take it.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// A datagram socket to issue interface ioctls on.
struct Socket(OwnedFd);

impl Socket {
    fn new() -> Result<Socket, InitError> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(InitError::io("socket for interface setup")(
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `raw` is a fresh fd nobody else owns.
        Ok(Socket(unsafe { OwnedFd::from_raw_fd(raw) }))
    }

    fn ifreq(name: &str) -> libc::ifreq {
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req
            .ifr_name
            .iter_mut()
            .zip(name.bytes().take(libc::IFNAMSIZ - 1))
        {
            *dst = src as libc::c_char;
        }
        req
    }

    fn ioctl(
        &self,
        what: &str,
        request: libc::Ioctl,
        arg: *mut libc::c_void,
    ) -> Result<(), InitError> {
        // SAFETY: a valid socket fd, and `arg` points at the struct this request takes.
        if unsafe { libc::ioctl(self.0.as_raw_fd(), request, arg) } < 0 {
            return Err(InitError::io(what.to_string())(io::Error::last_os_error()));
        }
        Ok(())
    }

    fn set_up(&self, name: &str) -> Result<(), InitError> {
        let mut req = Socket::ifreq(name);
        self.ioctl(
            &format!("SIOCGIFFLAGS {name}"),
            libc::SIOCGIFFLAGS,
            (&mut req as *mut libc::ifreq).cast(),
        )?;
        // SAFETY: the flags member is the one SIOCGIFFLAGS filled in.
        unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
        self.ioctl(
            &format!("SIOCSIFFLAGS {name}"),
            libc::SIOCSIFFLAGS,
            (&mut req as *mut libc::ifreq).cast(),
        )
    }

    fn set_addr(&self, name: &str, request: libc::Ioctl, ip: [u8; 4]) -> Result<(), InitError> {
        let mut req = Socket::ifreq(name);
        req.ifr_ifru.ifru_addr = sockaddr_in(ip);
        let ptr = (&mut req as *mut libc::ifreq).cast();
        self.ioctl(&format!("setting an address on {name}"), request, ptr)
    }

    fn add_default_route(&self, gateway: [u8; 4]) -> Result<(), InitError> {
        // SAFETY: rtentry is plain data; all-zero is a valid value.
        let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
        rt.rt_dst = sockaddr_in([0; 4]);
        rt.rt_genmask = sockaddr_in([0; 4]);
        rt.rt_gateway = sockaddr_in(gateway);
        rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
        let ptr = (&mut rt as *mut libc::rtentry).cast();
        self.ioctl("SIOCADDRT default route", libc::SIOCADDRT, ptr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netmasks() {
        assert_eq!(netmask(24), [255, 255, 255, 0]);
        assert_eq!(netmask(32), [255, 255, 255, 255]);
        assert_eq!(netmask(0), [0, 0, 0, 0]);
        assert_eq!(netmask(40), [255, 255, 255, 255]);
    }
}
