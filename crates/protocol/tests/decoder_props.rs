//! Property tests of the frame decoder: the bytes the host reads come from a guest that
//! runs untrusted code, so no input may panic it, and every valid stream must decode to
//! exactly what was sent however it is split.

use proptest::prelude::*;
use protocol::{
    encode, Completion, ExecRequest, FileEntry, FileErrorKind, FileKind, FrameDecoder,
    GuestMessage, HostMessage, Language, Stream,
};

fn guest_message() -> impl Strategy<Value = GuestMessage> {
    prop_oneof![
        (any::<u32>(), any::<u64>())
            .prop_map(|(version, uptime_ms)| GuestMessage::Ready { version, uptime_ms }),
        (
            any::<bool>(),
            proptest::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(err, data)| {
                GuestMessage::Output {
                    stream: if err { Stream::Stderr } else { Stream::Stdout },
                    data,
                }
            }),
        (any::<i32>(), any::<bool>(), any::<u64>()).prop_map(|(exit_code, flag, ms)| {
            GuestMessage::Completed(Completion {
                exit_code,
                timed_out: flag,
                stdout_truncated: !flag,
                stderr_truncated: flag,
                spawn_ms: ms,
                run_ms: ms / 2,
                repl_fresh: flag,
                repl_lost: !flag,
            })
        }),
        ".*".prop_map(|message| GuestMessage::Failed { message }),
        proptest::collection::vec(any::<u8>(), 0..2048)
            .prop_map(|data| GuestMessage::FileData { data }),
        any::<u64>().prop_map(|size| GuestMessage::FileDone { size }),
        ".*".prop_map(|message| GuestMessage::FileFailed {
            kind: FileErrorKind::OutsideHome,
            message
        }),
        proptest::collection::vec((".*", any::<u64>(), any::<u32>(), any::<i64>()), 0..4).prop_map(
            |v| {
                GuestMessage::Listing {
                    truncated: v.len() == 3,
                    entries: v
                        .into_iter()
                        .map(|(name, size, mode, modified)| FileEntry {
                            name,
                            kind: FileKind::Symlink,
                            size,
                            mode,
                            modified,
                        })
                        .collect(),
                }
            }
        ),
    ]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..512), 0..8)) {
        let mut dec = FrameDecoder::new();
        for chunk in chunks {
            dec.push(&chunk);
            // Either a message, "need more", or an error; then stop like the host does.
            while let Ok(Some(_)) = dec.next_frame::<GuestMessage>() {}
        }
    }

    #[test]
    fn any_split_of_a_valid_stream_decodes_exactly(
        msgs in proptest::collection::vec(guest_message(), 1..6),
        cuts in proptest::collection::vec(1usize..700, 0..20),
    ) {
        let wire: Vec<u8> = msgs.iter().flat_map(|m| encode(m).unwrap()).collect();
        let mut dec = FrameDecoder::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut cuts = cuts.into_iter();
        while at < wire.len() {
            let step = cuts.next().unwrap_or(wire.len()).min(wire.len() - at);
            dec.push(&wire[at..at + step]);
            at += step;
            while let Some(m) = dec.next_frame::<GuestMessage>().unwrap() {
                got.push(m);
            }
        }
        prop_assert_eq!(got, msgs);
        prop_assert_eq!(dec.pending(), 0);
    }

    #[test]
    fn exec_requests_round_trip(code in ".*", env in proptest::collection::vec((".*", ".*"), 0..4), ext in proptest::option::of("[a-z]{1,4}")) {
        let msg = HostMessage::Exec(ExecRequest {
            language: Language::Raw,
            code,
            env,
            timeout_ms: 1,
            stdout_cap: 2,
            stderr_cap: 3,
            unix_time_ms: 4,
            extension: ext,
            entropy: vec![1, 2, 3],
            persistent: true,
        });
        let mut dec = FrameDecoder::new();
        dec.push(&encode(&msg).unwrap());
        prop_assert_eq!(dec.next_frame::<HostMessage>().unwrap(), Some(msg));
    }
}
