//! Key rules: one normalisation and one validation for every backend.
//!
//! Keys are `/`-separated paths of UTF-8 segments.
//!
//! * One leading and one trailing `/` are ignored: `/a/b/`, `/a/b`, `a/b/` and `a/b` are the
//!   same key, reported back as `a/b`.
//! * Every segment is non-empty (`a//b` is invalid) and is neither `.` nor `..`.
//! * Every character is a letter, mark, number, punctuation or symbol (Unicode general
//!   categories L, M, N, P, S) or the ASCII space. Refused: control and format characters
//!   (U+0000–U+001F, U+007F–U+009F, U+00AD soft hyphen, U+200D zero-width joiner, U+202E,
//!   U+FEFF, U+E0001 language tag…), every separator but the space (U+00A0 no-break space,
//!   U+2028, U+3000…), private-use characters (U+E000–U+F8FF, planes 15 and 16), unassigned
//!   code points (as of Unicode 14.0, the table's version), and U+FFF0–U+FFFF. Servers refuse
//!   these (Consul answers HTTP 400 for exactly what Go's `unicode.IsPrint` rejects, ZooKeeper
//!   for U+FFF0–U+FFFF and private use), so no backend accepts them: the same key is refused
//!   the same way, before anything is sent, everywhere. Characters outside the Basic
//!   Multilingual Plane (emoji, CJK extensions…) are valid: ZooKeeper refuses them, so that
//!   backend escapes them in node names.
//! * Segments starting with `__kv` are reserved for the backends' own records (lock queues,
//!   version counters) and are invalid in user keys.
//! * A key is at most [`Capabilities::max_key_len`](crate::Capabilities) bytes after
//!   normalisation (never more than [`MAX_KEY_LEN`]).
//! * A key is never empty. A *directory* (the argument of `list`, `watch_tree` and
//!   `delete_tree`) follows the same rules but may be empty, meaning the whole store.
//!
//! A key may be both a value and the parent of other keys (`a` and `a/b` can both exist).

use crate::error::{Error, Result};

/// The longest key, in bytes, that any backend accepts.
pub const MAX_KEY_LEN: usize = 1024;

/// The segment prefix reserved for backends' internal records.
pub const RESERVED_PREFIX: &str = "__kv";

/// Normalises and validates a key. Returns the canonical spelling that backends store and
/// report in [`KvPair::key`](crate::KvPair).
pub fn normalize_key(key: &str) -> Result<String> {
    let normalized = normalize_directory(key)?;
    if normalized.is_empty() {
        return Err(Error::invalid_key(key, "a key must not be empty"));
    }
    Ok(normalized)
}

/// Normalises and validates a directory: like [`normalize_key`], but the empty string (or
/// `/`) is allowed and means the root of the store.
pub fn normalize_directory(directory: &str) -> Result<String> {
    let trimmed = directory.strip_prefix('/').unwrap_or(directory);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    if trimmed.len() > MAX_KEY_LEN {
        return Err(Error::invalid_key(
            directory,
            format!("longer than {MAX_KEY_LEN} bytes"),
        ));
    }
    for segment in trimmed.split('/') {
        if segment.is_empty() {
            return Err(Error::invalid_key(directory, "empty path segment (`//`)"));
        }
        if segment == "." || segment == ".." {
            return Err(Error::invalid_key(
                directory,
                "`.` and `..` segments are not allowed",
            ));
        }
        if segment.starts_with(RESERVED_PREFIX) {
            return Err(Error::invalid_key(
                directory,
                "segments starting with `__kv` are reserved",
            ));
        }
    }
    if let Some(c) = trimmed.chars().find(|c| is_forbidden_char(*c)) {
        return Err(Error::invalid_key(
            directory,
            format!("forbidden character U+{:04X}", c as u32),
        ));
    }
    Ok(trimmed.to_owned())
}

/// True for a character no key may contain (see the module documentation).
pub fn is_forbidden_char(c: char) -> bool {
    let cp = c as u32;
    if (0x21..=0x7E).contains(&cp) || cp == 0x20 {
        return false;
    }
    if (0xFFF0..=0xFFFF).contains(&cp) {
        return true;
    }
    // Binary search in the sorted ranges of allowed code points.
    let allowed = crate::key_chars::ALLOWED;
    let i = allowed.partition_point(|&(_, end)| end < cp);
    allowed.get(i).is_none_or(|&(start, _)| start > cp)
}

/// The Unicode version of the table that decides which characters keys may contain.
pub fn unicode_version() -> &'static str {
    crate::key_chars::UNICODE_VERSION
}

/// The prefix every descendant of a normalised directory starts with: `""` for the root,
/// `"dir/"` otherwise. This is what makes listings path-aware: `list("abc")` uses `abc/` and
/// never returns `abcd/x`.
pub fn child_prefix(directory: &str) -> String {
    if directory.is_empty() {
        String::new()
    } else {
        format!("{directory}/")
    }
}

/// True when the normalised `key` lies strictly below the normalised `directory`.
pub fn is_descendant(directory: &str, key: &str) -> bool {
    directory.is_empty() && !key.is_empty()
        || key.len() > directory.len() + 1
            && key.starts_with(directory)
            && key.as_bytes()[directory.len()] == b'/'
}

/// The parent directories of a normalised key, nearest last: `a/b/c` gives `["a", "a/b"]`.
pub fn ancestors(key: &str) -> impl Iterator<Item = &str> {
    key.match_indices('/').map(move |(i, _)| &key[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_slashes() {
        for k in ["a/b", "/a/b", "a/b/", "/a/b/"] {
            assert_eq!(normalize_key(k).unwrap(), "a/b");
        }
        assert_eq!(normalize_directory("/").unwrap(), "");
        assert_eq!(normalize_directory("").unwrap(), "");
    }

    #[test]
    fn rejects_bad_keys() {
        for k in [
            "",
            "/",
            "a//b",
            "//a",
            "a//",
            "./a",
            "a/../b",
            "a/.",
            "a\nb",
            "a\u{0}",
            "x/__kvlock",
            "\u{E000}",
            "a\u{A0}b",
            "a\u{AD}b",
            "a\u{200D}b",
            "a\u{2028}b",
            "a\u{202E}b",
            "a\u{3000}b",
            "a\u{FEFF}b",
            "a\u{E0001}b",
            "a\u{F0000}b",
            "a\u{10FFFD}b",
            "a\u{378}b",
            "a\u{FFFC}b",
        ] {
            assert!(
                matches!(normalize_key(k), Err(Error::InvalidKey { .. })),
                "{k:?} accepted"
            );
        }
        assert!(normalize_key(&"x".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(normalize_key(&"x".repeat(MAX_KEY_LEN)).is_ok());
        assert!(normalize_key("a/.b/..c/__k/ü/ /😀").is_ok());
        // Letters, marks, numbers, punctuation and symbols of every plane are fine.
        assert!(normalize_key("日本/ελληνικά/e\u{301}/١٢٣/«»/€/𝔸/\u{20000}/~!@#$%^&*()").is_ok());
    }

    #[test]
    fn the_character_table_matches_the_categories() {
        for c in [
            'a',
            'Z',
            '0',
            ' ',
            '~',
            'é',
            '\u{301}',
            '€',
            '😀',
            '\u{20000}',
        ] {
            assert!(!is_forbidden_char(c), "{c:?} refused");
        }
        for c in [
            '\u{0}', '\u{7F}', '\u{9F}', '\u{A0}', '\u{AD}', '\u{2029}', '\u{E000}',
        ] {
            assert!(is_forbidden_char(c), "{c:?} accepted");
        }
        let table = crate::key_chars::ALLOWED;
        assert!(
            table.windows(2).all(|w| w[0].1 < w[1].0),
            "sorted and disjoint"
        );
    }

    #[test]
    fn descendants_are_path_aware() {
        assert!(is_descendant("abc", "abc/x"));
        assert!(is_descendant("abc", "abc/x/y"));
        assert!(!is_descendant("abc", "abc"));
        assert!(!is_descendant("abc", "abcd/x"));
        assert!(!is_descendant("abc", "ab"));
        assert!(is_descendant("", "a"));
        assert_eq!(child_prefix(""), "");
        assert_eq!(child_prefix("a/b"), "a/b/");
        assert_eq!(ancestors("a/b/c").collect::<Vec<_>>(), ["a", "a/b"]);
        assert_eq!(ancestors("a").count(), 0);
    }
}
