//! TLS ClientHello inspection: the SNI the guest asks for, checked against the allowlist.

use tls_parser::{
    parse_tls_client_hello_extensions, parse_tls_message_handshake, SNIType, TlsExtension,
    TlsMessage, TlsMessageHandshake,
};

/// Most ClientHello bytes buffered before giving up (real ones are 0.5–2 KiB).
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

const RECORD_HANDSHAKE: u8 = 0x16;
const HANDSHAKE_CLIENT_HELLO: u8 = 0x01;

/// What the first bytes of a guest TCP stream say about the server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sni {
    /// A prefix of a plausible ClientHello: wait for more bytes.
    NeedMore,
    /// Not a TLS ClientHello.
    NotTls,
    /// A ClientHello without a host name (e.g. a client connecting to an IP literal).
    NoSni,
    /// The host name, lower case, without a trailing dot.
    Name(String),
}

/// Parses the SNI from the start of a guest TCP stream.
///
/// Faces untrusted guest bytes: never panics, whatever `stream` holds. The ClientHello may be
/// split over several TLS records; their fragments are joined first.
pub fn parse_sni(stream: &[u8]) -> Sni {
    let mut handshake = Vec::new();
    let mut rest = stream;
    loop {
        let Some(header) = rest.get(..5) else {
            return if header_prefix_plausible(rest) {
                Sni::NeedMore
            } else {
                Sni::NotTls
            };
        };
        if header[0] != RECORD_HANDSHAKE || header[1] != 3 {
            return Sni::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_CLIENT_HELLO + 2048 {
            return Sni::NotTls;
        }
        let Some(fragment) = rest.get(5..5 + len) else {
            return Sni::NeedMore;
        };
        handshake.extend_from_slice(fragment);
        rest = &rest[5 + len..];
        if handshake[0] != HANDSHAKE_CLIENT_HELLO {
            return Sni::NotTls;
        }
        let Some(length) = handshake.get(1..4) else {
            continue;
        };
        let body_len =
            (usize::from(length[0]) << 16) | (usize::from(length[1]) << 8) | usize::from(length[2]);
        if body_len > MAX_CLIENT_HELLO {
            return Sni::NotTls;
        }
        if handshake.len() >= 4 + body_len {
            return sni_of_handshake(&handshake[..4 + body_len]);
        }
    }
}

/// Whether fewer than 5 bytes could still start a TLS handshake record.
fn header_prefix_plausible(prefix: &[u8]) -> bool {
    match prefix {
        [] => true,
        [first, rest @ ..] => {
            *first == RECORD_HANDSHAKE && rest.first().is_none_or(|major| *major == 3)
        }
    }
}

fn sni_of_handshake(handshake: &[u8]) -> Sni {
    let Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) =
        parse_tls_message_handshake(handshake)
    else {
        return Sni::NotTls;
    };
    let Some(extensions) = hello.ext else {
        return Sni::NoSni;
    };
    let Ok((_, extensions)) = parse_tls_client_hello_extensions(extensions) else {
        return Sni::NotTls;
    };
    for extension in extensions {
        if let TlsExtension::SNI(names) = extension {
            for (kind, name) in names {
                if kind == SNIType::HostName {
                    return match std::str::from_utf8(name) {
                        Ok(name) if !name.is_empty() => {
                            Sni::Name(crate::policy::normalize_name(name))
                        }
                        _ => Sni::NotTls,
                    };
                }
            }
        }
    }
    Sni::NoSni
}

/// A minimal well-formed TLS 1.3 ClientHello (one record), with an SNI extension when `sni`
/// is given. For tests and fuzzing seeds; nothing in the process sends it.
pub fn build_client_hello(sni: Option<&str>) -> Vec<u8> {
    let mut extensions = Vec::new();
    if let Some(name) = sni {
        let name = name.as_bytes();
        let entry_len = 3 + name.len();
        extensions.extend_from_slice(&[0x00, 0x00]);
        push_u16(&mut extensions, entry_len + 2);
        push_u16(&mut extensions, entry_len);
        extensions.push(0x00);
        push_u16(&mut extensions, name.len());
        extensions.extend_from_slice(name);
    }
    // supported_versions: TLS 1.3.
    extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);

    let mut body = vec![0x03, 0x03];
    body.extend_from_slice(&[0x42; 32]);
    body.push(32);
    body.extend_from_slice(&[0x17; 32]);
    body.extend_from_slice(&[0x00, 0x04, 0x13, 0x01, 0x13, 0x02]);
    body.extend_from_slice(&[0x01, 0x00]);
    push_u16(&mut body, extensions.len());
    body.extend_from_slice(&extensions);

    let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);

    let mut record = vec![RECORD_HANDSHAKE, 0x03, 0x01];
    push_u16(&mut record, handshake.len());
    record.extend_from_slice(&handshake);
    record
}

fn push_u16(out: &mut Vec<u8>, value: usize) {
    // Only used on the small, fixed-size pieces built above.
    out.extend_from_slice(&(value as u16).to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_sni() {
        let hello = build_client_hello(Some("Allowed.Test"));
        assert_eq!(parse_sni(&hello), Sni::Name("allowed.test".into()));
        assert_eq!(parse_sni(&build_client_hello(None)), Sni::NoSni);
    }

    #[test]
    fn every_prefix_needs_more() {
        let hello = build_client_hello(Some("allowed.test"));
        for cut in 0..hello.len() {
            assert_eq!(parse_sni(&hello[..cut]), Sni::NeedMore, "cut at {cut}");
        }
    }

    #[test]
    fn split_over_records() {
        let hello = build_client_hello(Some("split.test"));
        let handshake = &hello[5..];
        let (first, second) = handshake.split_at(20);
        let mut stream = Vec::new();
        for part in [first, second] {
            stream.extend_from_slice(&[0x16, 0x03, 0x01]);
            stream.extend_from_slice(&(part.len() as u16).to_be_bytes());
            stream.extend_from_slice(part);
        }
        assert_eq!(parse_sni(&stream), Sni::Name("split.test".into()));
    }

    #[test]
    fn garbage_is_not_tls() {
        assert_eq!(parse_sni(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Sni::NotTls);
        assert_eq!(
            parse_sni(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x02, 0, 0, 1, 0]),
            Sni::NotTls
        );
        let mut seed = 1u32;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (seed >> 24) as u8
                })
                .collect();
            let _ = parse_sni(&bytes);
            let mut framed = vec![0x16, 0x03, 0x01];
            framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
            framed.extend_from_slice(&bytes);
            let _ = parse_sni(&framed);
        }
    }
}
