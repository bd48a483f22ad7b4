//! The bounded log of finished events between two reports.
//!
//! Open connections are not kept here (the engine snapshots them at report time); only
//! finished or refused ones, at most [`MAX_EVENTS_PER_REPORT`] of each kind, the rest
//! counted. So memory stays bounded whatever the guest does.

use crate::contract::{ConnEvent, DnsEvent, InboundEvent, Report, MAX_EVENTS_PER_REPORT};

#[derive(Debug, Default)]
pub struct Recorder {
    report: Report,
}

impl Recorder {
    pub fn dns(&mut self, event: DnsEvent) {
        push(&mut self.report.dns, event, &mut self.report.dropped_events);
    }

    pub fn conn(&mut self, event: ConnEvent) {
        push(
            &mut self.report.connections,
            event,
            &mut self.report.dropped_events,
        );
    }

    pub fn inbound(&mut self, event: InboundEvent) {
        push(
            &mut self.report.inbound,
            event,
            &mut self.report.dropped_events,
        );
    }

    /// The finished events so far plus the given open ones; starts a new period.
    pub fn take(
        &mut self,
        open_conns: impl Iterator<Item = ConnEvent>,
        open_inbound: impl Iterator<Item = InboundEvent>,
    ) -> Report {
        let mut report = std::mem::take(&mut self.report);
        report.connections.extend(open_conns);
        report.inbound.extend(open_inbound);
        report
    }
}

fn push<T>(list: &mut Vec<T>, event: T, dropped: &mut u64) {
    if list.len() < MAX_EVENTS_PER_REPORT {
        list.push(event);
    } else {
        *dropped += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded() {
        let mut recorder = Recorder::default();
        for _ in 0..(MAX_EVENTS_PER_REPORT + 5) {
            recorder.dns(DnsEvent {
                name: "a".into(),
                qtype: "A".into(),
                allowed: false,
                reason: None,
                answers: Vec::new(),
            });
        }
        let report = recorder.take(std::iter::empty(), std::iter::empty());
        assert_eq!(report.dns.len(), MAX_EVENTS_PER_REPORT);
        assert_eq!(report.dropped_events, 5);
        assert!(recorder
            .take(std::iter::empty(), std::iter::empty())
            .dns
            .is_empty());
    }
}
