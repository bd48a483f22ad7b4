//! Reading `/proc/<pid>/stat`: process state (for frozen-VM detection) and start time (so a
//! recycled pid is never mistaken for the process we recorded).

use std::fs;

/// The fields of `/proc/<pid>/stat` this crate needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// Field 3: `R`, `S`, `D`, `T`, `t`, `Z`, `X`, ...
    pub state: char,
    /// Field 4.
    pub ppid: i32,
    /// Field 5.
    pub pgid: i32,
    /// Field 22: start time in clock ticks since boot. Together with the pid it names a
    /// process uniquely for the lifetime of the boot.
    pub start_time: u64,
}

impl ProcStat {
    /// Stopped (`T`), traced (`t`) or zombie (`Z`/`X`): alive on paper, never answering.
    pub fn frozen_state_name(&self) -> Option<&'static str> {
        match self.state {
            'T' => Some("stopped"),
            't' => Some("stopped by a tracer"),
            'Z' => Some("a zombie"),
            'X' => Some("dead"),
            _ => None,
        }
    }
}

/// Parses the contents of a `/proc/<pid>/stat` file.
///
/// The command name (field 2) is in parentheses and may itself contain spaces and
/// parentheses, so the fields after it are found from the *last* `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let close = text.rfind(')')?;
    let rest = text.get(close + 1..)?;
    let mut fields = rest.split_ascii_whitespace();
    // `fields` now starts at field 3.
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgid = fields.next()?.parse().ok()?;
    // Field 22 is 19 fields after field 3; we've consumed 3..=5.
    let start_time = fields.nth(22 - 6)?.parse().ok()?;
    Some(ProcStat {
        state,
        ppid,
        pgid,
        start_time,
    })
}

/// Reads and parses `/proc/<pid>/stat`; `None` when the process does not exist (or the file
/// is unreadable, which for our purposes is the same thing).
pub fn read_stat(pid: u32) -> Option<ProcStat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// The start time of `pid`, if it is alive.
pub fn start_time(pid: u32) -> Option<u64> {
    read_stat(pid).map(|s| s.start_time)
}

/// True when `pid` is alive *and* is the same process we recorded (same start time).
/// A zombie still counts as alive: its pid is not free for reuse yet.
pub fn is_same_process(pid: u32, recorded_start: u64) -> bool {
    start_time(pid) == Some(recorded_start)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(comm: &str, state: char, start: u64) -> String {
        // 52 fields as on a 6.x kernel; field 22 is the start time.
        let mut f: Vec<String> = vec!["4242".into(), format!("({comm})"), state.to_string()];
        f.push("1".into()); // ppid
        f.push("4242".into()); // pgrp
        for i in 6..=21 {
            f.push(i.to_string());
        }
        f.push(start.to_string());
        for i in 23..=52 {
            f.push(i.to_string());
        }
        f.join(" ")
    }

    #[test]
    fn parses_plain_stat() {
        let s = parse_stat(&line("qemu-system-x86", 'S', 123456)).unwrap();
        assert_eq!(
            s,
            ProcStat {
                state: 'S',
                ppid: 1,
                pgid: 4242,
                start_time: 123456
            }
        );
        assert_eq!(s.frozen_state_name(), None);
    }

    #[test]
    fn comm_with_spaces_and_parentheses() {
        let s = parse_stat(&line("a) b (c) T 9 9", 'T', 777)).unwrap();
        assert_eq!(s.state, 'T');
        assert_eq!(s.start_time, 777);
        assert_eq!(s.frozen_state_name(), Some("stopped"));
        let z = parse_stat(&line(")", 'Z', 1)).unwrap();
        assert_eq!(z.frozen_state_name(), Some("a zombie"));
    }

    #[test]
    fn truncated_or_garbage_is_none() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("12 (x"), None);
        assert_eq!(parse_stat("12 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("12 (x) S one 2"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = read_stat(std::process::id()).unwrap();
        // The stat file shows the main thread, which may be sleeping while tests run.
        assert!(matches!(me.state, 'R' | 'S'), "{me:?}");
        assert!(is_same_process(std::process::id(), me.start_time));
        assert!(!is_same_process(std::process::id(), me.start_time + 1));
    }
}
