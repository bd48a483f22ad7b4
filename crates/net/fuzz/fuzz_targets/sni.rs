//! TLS ClientHello SNI extraction: `tls::parse_sni` on the input and on up to 64 prefixes.
//!
//! Checks: no panic; parsing the full input twice gives the same result; and the parse is
//! prefix-consistent: a prefix of the input is either `NeedMore` or already has the full
//! input's verdict (a decisive answer is never revised by later bytes, and `NeedMore` on the
//! full input means every prefix said `NeedMore` too).
#![no_main]

use libfuzzer_sys::fuzz_target;
use net::tls::{parse_sni, Sni};

fuzz_target!(|data: &[u8]| {
    let full = parse_sni(data);
    assert_eq!(parse_sni(data), full, "parse_sni is not deterministic");

    // Every prefix length for short inputs; 64 evenly spread ones (plus the last few) otherwise.
    let len = data.len();
    let cuts: Vec<usize> = if len <= 64 {
        (0..len).collect()
    } else {
        let mut cuts: Vec<usize> = (0..60).map(|i| i * len / 60).collect();
        cuts.extend(len.saturating_sub(4)..len);
        cuts
    };
    for cut in cuts {
        let prefix = parse_sni(&data[..cut]);
        if prefix != Sni::NeedMore {
            assert_eq!(prefix, full, "prefix of {cut}/{len} bytes decided differently");
        }
    }
});
