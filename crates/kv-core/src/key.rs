//! Key rules: one normalisation and one validation for every backend.
//!
//! Keys are `/`-separated paths of UTF-8 segments.
//!
//! * One leading and one trailing `/` are ignored: `/a/b/`, `/a/b`, `a/b/` and `a/b` are the
//!   same key, reported back as `a/b`.
//! * Every segment is non-empty (`a//b` is invalid) and is neither `.` nor `..`.
//! * No control characters (U+0000–U+001F, U+007F–U+009F), no private-use characters
//!   (U+E000–U+F8FF) and none of U+FFF0–U+FFFF: some servers (ZooKeeper) refuse them, so no
//!   backend accepts them. Characters outside the Basic Multilingual Plane (emoji…) are valid:
//!   ZooKeeper refuses them too, so that backend escapes them in node names.
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

fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || ('\u{E000}'..='\u{F8FF}').contains(&c)
        || ('\u{FFF0}'..='\u{FFFF}').contains(&c)
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
        ] {
            assert!(
                matches!(normalize_key(k), Err(Error::InvalidKey { .. })),
                "{k:?} accepted"
            );
        }
        assert!(normalize_key(&"x".repeat(MAX_KEY_LEN + 1)).is_err());
        assert!(normalize_key(&"x".repeat(MAX_KEY_LEN)).is_ok());
        assert!(normalize_key("a/.b/..c/__k/ü/ /😀").is_ok());
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
