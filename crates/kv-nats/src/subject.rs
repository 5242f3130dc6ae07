//! Keys ↔ NATS subjects.
//!
//! A normalised key is a `/`-separated path; a NATS subject is a `.`-separated list of tokens,
//! where `*` and `>` are wildcards and spaces end the subject. Each key **segment** becomes one
//! subject **token**, so that `list("a/b")` and `watch_tree("a/b")` are the subject filter
//! `<prefix>.a.b.>`. Inside a token, the bytes of the segment's UTF-8 are kept when they are an
//! ASCII letter, digit or `-`; every other byte is written `_XX` (`_` then two upper-case hex
//! digits): `.` → `_2E`, `*` → `_2A`, `>` → `_3E`, space → `_20`, `_` → `_5F`, `/` never occurs
//! inside a segment, `é` → `_C3_A9`. Tokens are thus never empty, never a wildcard, contain only
//! `[A-Za-z0-9_-]` (what every NATS tool and the `nats kv` CLI accept), and the mapping is a
//! bijection on valid keys: a subject decodes only if it is the canonical encoding of a valid
//! normalised key (upper-case hex, no needless escape), anything else in the bucket is ignored.

use std::fmt::Write as _;

/// Encodes a normalised key (or a non-empty directory) as subject tokens, without prefix.
pub(crate) fn encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 8);
    for (i, segment) in key.split('/').enumerate() {
        if i > 0 {
            out.push('.');
        }
        for b in segment.bytes() {
            if b.is_ascii_alphanumeric() || b == b'-' {
                out.push(b as char);
            } else {
                let _ = write!(out, "_{b:02X}");
            }
        }
    }
    out
}

/// Decodes subject tokens (without prefix) back into a key: `None` unless they are the
/// canonical encoding of a valid normalised key.
pub(crate) fn decode(tokens: &str) -> Option<String> {
    let mut bytes = Vec::with_capacity(tokens.len());
    let raw = tokens.as_bytes();
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'.' => bytes.push(b'/'),
            b'_' => {
                let hex = tokens.get(i + 1..i + 3)?;
                if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                    return None;
                }
                bytes.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' => bytes.push(b),
            _ => return None,
        }
        i += 1;
    }
    let key = String::from_utf8(bytes).ok()?;
    // Canonical only: `_41` for `A` would decode, but is not what `encode` writes.
    (kv_core::key::normalize_key(&key).ok()? == key && encode(&key) == tokens).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for key in [
            "a",
            "a/b/c",
            "a.b/c*d/>/e f/_x_/%41",
            "日本/ελληνικά/e\u{301}/😀/\u{20000}",
            "~!@#$%^&*()+=[]{}|;:'\",<>?`\\",
            ".a/..b/a.",
            "-/--",
        ] {
            let encoded = encode(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'),
                "{encoded}"
            );
            assert!(!encoded.split('.').any(|t| t.is_empty()));
            assert_eq!(decode(&encoded).as_deref(), Some(key), "{encoded}");
        }
        assert_eq!(encode("a.b/c d/*/>"), "a_2Eb.c_20d._2A._3E");
        // Not canonical, or not valid keys: ignored.
        for tokens in [
            "a_2e", "_41", "a..b", "a_2", "a*b", "_5F_5Fkv", "a._2E", "_FF",
        ] {
            assert_eq!(decode(tokens), None, "{tokens}");
        }
    }
}
