//! Property tests of request validation: it takes input straight from callers, so it must
//! never panic, and what it accepts must really be within the documented limits.

use std::time::Duration;

use proptest::prelude::*;
use sandbox::{validate, Language, RunRequest, MAX_CODE_BYTES};

fn language() -> impl Strategy<Value = Language> {
    prop_oneof![
        Just(Language::Python),
        Just(Language::Javascript),
        Just(Language::Raw)
    ]
}

proptest! {
    #[test]
    fn accepted_requests_are_within_limits(
        lang in language(),
        code in any::<String>(),
        timeout_ms in prop_oneof![any::<u64>(), 0u64..400_000],
        memory in prop_oneof![any::<u32>(), 0u32..20_000],
        env in proptest::collection::vec((prop_oneof![any::<String>(), "[A-Za-z_][A-Za-z0-9_]{0,12}"], any::<String>()), 0..4),
        ext in proptest::option::of(prop_oneof![any::<String>(), "[a-z]{1,4}"]),
    ) {
        let mut req = RunRequest::new(lang, code.clone())
            .timeout(Duration::from_millis(timeout_ms))
            .memory_mb(memory)
            .env(env.clone());
        req.extension = ext.clone();
        if validate(&req).is_ok() {
            prop_assert!(!code.trim().is_empty() && !code.contains('\0') && code.len() <= MAX_CODE_BYTES);
            prop_assert!((1_000..=300_000).contains(&timeout_ms));
            prop_assert!((128..=16_384).contains(&memory));
            for (k, v) in &env {
                prop_assert!(!k.is_empty() && !k.starts_with(|c: char| c.is_ascii_digit()));
                prop_assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
                prop_assert!(!k.to_ascii_uppercase().starts_with("LD_"));
                prop_assert!(!v.chars().any(|c| c != '\t' && c.is_control()));
            }
            if let Some(e) = &ext {
                prop_assert!(lang.extensions().contains(&e.as_str()));
            }
        }
    }

    #[test]
    fn env_like_strings_never_panic(name in "\\PC{0,40}", value in "\\PC{0,80}") {
        let req = RunRequest::new(Language::Raw, "true").env(vec![(name, value)]);
        let _ = validate(&req);
    }
}
