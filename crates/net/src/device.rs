//! The smoltcp device: one received frame in, any number of frames out. The engine hands the
//! interface a single guest frame per poll, so policy decisions made just before a poll apply
//! to exactly that frame.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Ethernet header length; the device MTU is the IP MTU plus this.
const ETHERNET_HEADER: usize = 14;

#[derive(Debug, Default)]
pub struct QueueDevice {
    /// The frame the next poll receives.
    pub rx: Option<Vec<u8>>,
    /// Frames the interface emitted, for the engine to send to QEMU.
    pub tx: Vec<Vec<u8>>,
}

pub struct RxToken(Vec<u8>);
pub struct TxToken<'a>(&'a mut Vec<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let result = f(&mut frame);
        self.0.push(frame);
        result
    }
}

impl phy::Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(RxToken, TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((RxToken(frame), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = protocol::guest_net::MTU + ETHERNET_HEADER;
        caps
    }
}
