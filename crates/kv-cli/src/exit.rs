//! Exit codes and the one-line error a person reads.

use kv::Error;

/// Success.
pub const OK: u8 = 0;
/// The key does not exist (`get`, `rm`, `exists`).
pub const NOT_FOUND: u8 = 1;
/// Bad input: a usage error, an invalid key, URL, option, duration or value file, a value too
/// large for the backend. (clap's own usage errors also exit with 2.)
pub const BAD_INPUT: u8 = 2;
/// A compare-and-swap or transaction condition failed: the key exists, is absent, or was
/// written since the index given.
pub const CONFLICT: u8 = 3;
/// `lock --timeout` ran out before the lock was acquired.
pub const LOCK_TIMEOUT: u8 = 4;
/// The lock was lost while the command ran (the command was killed).
pub const LOCK_LOST: u8 = 5;
/// The store cannot be reached, or a call timed out.
pub const UNAVAILABLE: u8 = 6;
/// The store refused the credentials or the permission.
pub const PERMISSION_DENIED: u8 = 7;
/// The store, or this build of `kv`, cannot do this (e.g. `elect` on a store without locks).
pub const NOT_SUPPORTED: u8 = 8;
/// Any other failure reported by the store.
pub const STORE_ERROR: u8 = 9;
/// `lock`: the command could not be started (not executable).
pub const CANNOT_EXECUTE: u8 = 126;
/// `lock`: the command was not found.
pub const COMMAND_NOT_FOUND: u8 = 127;

/// The exit-code table shown by `kv --help`.
pub const TABLE: &str = "\
Exit codes:
  0    success
  1    not found (get, rm, exists of a missing key)
  2    bad input (usage, invalid key, URL, option or value file)
  3    conflict (cas or txn condition failed)
  4    lock timeout (lock --timeout ran out)
  5    lock lost while the command ran (the command was killed)
  6    store unreachable, or a call timed out
  7    permission denied by the store
  8    not supported (by the store or by this build)
  9    other store error
  126, 127  lock: the command could not be run / was not found
  lock KEY -- CMD: otherwise the command's own exit status (128+N if killed by signal N)";

/// A failure: the exit code and a one-line message for stderr.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// What went wrong, in one line.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    /// Bad input.
    pub fn bad_input(message: impl Into<String>) -> Self {
        Failure::new(BAD_INPUT, message)
    }
}

impl From<kv_election::ElectionError> for Failure {
    fn from(error: kv_election::ElectionError) -> Self {
        match error {
            kv_election::ElectionError::Store(error) => Failure::from(error),
            other => Failure::new(LOCK_LOST, other.to_string()),
        }
    }
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        let code = match &error {
            Error::KeyExists { .. }
            | Error::KeyModified { .. }
            | Error::KeyNotFound { .. }
            | Error::ConditionFailed { .. } => CONFLICT,
            Error::InvalidKey { .. }
            | Error::ValueTooLarge { .. }
            | Error::InvalidOption(_)
            | Error::Config(_) => BAD_INPUT,
            Error::Unavailable { .. } | Error::Timeout { .. } => UNAVAILABLE,
            Error::PermissionDenied { .. } => PERMISSION_DENIED,
            Error::NotSupported { .. } => NOT_SUPPORTED,
            Error::LockLost { .. } => LOCK_LOST,
            _ => STORE_ERROR,
        };
        let message = match &error {
            Error::Unavailable { .. } => {
                format!("{error} (is the server running and the --store URL right?)")
            }
            _ => error.to_string(),
        };
        Failure::new(code, message)
    }
}

/// `message` on one line: line breaks and runs of spaces become single spaces.
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `url` with its password and secret query values replaced by `***`, for messages.
pub fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(start) = out.find("://").map(|i| i + 3) {
        let authority_end = out[start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| start + i);
        if let Some(at) = out[start..authority_end].rfind('@').map(|i| start + i)
            && let Some(colon) = out[start..at].find(':').map(|i| start + i)
        {
            out.replace_range(colon + 1..at, "***");
        }
    }
    if let Some(q) = out.find('?') {
        let (base, query) = out.split_at(q + 1);
        let query = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _))
                    if ["token", "password", "secret_access_key", "session_token"]
                        .contains(&name) =>
                {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{base}{query}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_secrets() {
        assert_eq!(
            redact("redis://user:pw@h:1/0?x=1"),
            "redis://user:***@h:1/0?x=1"
        );
        assert_eq!(
            redact("consul://h?token=abc&dc=x"),
            "consul://h?token=***&dc=x"
        );
        assert_eq!(redact("bolt:.kv"), "bolt:.kv");
        assert_eq!(redact("etcd://u@h:1"), "etcd://u@h:1");
    }

    #[test]
    fn codes_are_distinct() {
        let codes = [
            NOT_FOUND,
            BAD_INPUT,
            CONFLICT,
            LOCK_TIMEOUT,
            LOCK_LOST,
            UNAVAILABLE,
            PERMISSION_DENIED,
            NOT_SUPPORTED,
            STORE_ERROR,
        ];
        let mut sorted = codes.to_vec();
        sorted.dedup();
        assert_eq!(sorted.len(), codes.len());
    }
}
