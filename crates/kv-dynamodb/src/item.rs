//! The item layout (attribute names, encoding), expression helpers and error mapping.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use kv_core::Error;

/// The backend's name in errors and capabilities.
pub(crate) const BACKEND: &str = "dynamodb";

/// Partition key (S): the first `/`-separated segment of the full key.
pub const ATTR_PK: &str = "pk";
/// Sort key (S): the full key (namespace prefix included).
pub const ATTR_SK: &str = "sk";
/// The value (B): the plain bytes.
pub const ATTR_VALUE: &str = "value";
/// The version (N): the key's `last_index`.
pub const ATTR_VERSION: &str = "version";
/// The exact expiry deadline (N, Unix milliseconds); absent for permanent keys.
pub const ATTR_DEADLINE: &str = "deadline_ms";
/// The table's TTL attribute (N, Unix seconds, rounded up); DynamoDB deletes the item later.
pub const ATTR_EXPIRES: &str = "expires_at";
/// Tombstone marker (BOOL true): the key was deleted; the item only keeps its version.
pub const ATTR_DELETED: &str = "deleted";
/// The lock holder's random token (S), only on keys held as locks.
pub const ATTR_OWNER: &str = "owner";
/// The lock's heartbeat (N), only on keys held as locks: 0 when acquired, changed by every
/// renewal, so that contenders see the holder is alive without reading any clock.
pub const ATTR_HEARTBEAT: &str = "heartbeat";
/// The lock's lease duration (N, milliseconds), only on keys held as locks: how long a
/// contender must see the item unchanged before it may take the lock over.
pub const ATTR_LEASE: &str = "lease_ms";

/// The `last_index` reported for an item another client wrote without a (usable) `version`.
/// Compare-and-swap against such an item is refused (see [`Item::versioned`]).
pub(crate) const VERSIONLESS: u64 = 1;

/// Expression attribute name placeholders and the attributes they stand for.
const NAMES: &[(&str, &str)] = &[
    ("#pk", ATTR_PK),
    ("#sk", ATTR_SK),
    ("#val", ATTR_VALUE),
    ("#ver", ATTR_VERSION),
    ("#dl", ATTR_DEADLINE),
    ("#exp", ATTR_EXPIRES),
    ("#del", ATTR_DELETED),
    ("#own", ATTR_OWNER),
    ("#hb", ATTR_HEARTBEAT),
    ("#lease", ATTR_LEASE),
];

/// The item is live (exists, is no tombstone, has not expired at `:now`).
pub(crate) const LIVE: &str = "(attribute_exists(#sk) AND attribute_not_exists(#del) AND (attribute_not_exists(#dl) OR #dl > :now))";
/// The key is absent for readers (no item, a tombstone, or expired at `:now`).
pub(crate) const ABSENT: &str =
    "(attribute_not_exists(#sk) OR attribute_exists(#del) OR #dl <= :now)";
/// The stored version is below the one being written (`:ver`).
pub(crate) const VERSION_BELOW: &str = "(attribute_not_exists(#ver) OR #ver < :ver)";
/// Filter for reads: only live items.
pub(crate) const LIVE_FILTER: &str =
    "attribute_not_exists(#del) AND (attribute_not_exists(#dl) OR #dl > :now)";

fn token_used(expr: &str, token: &str) -> bool {
    expr.match_indices(token).any(|(i, _)| {
        expr[i + token.len()..]
            .chars()
            .next()
            .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
    })
}

/// Expression attribute names and values actually used by `exprs` (DynamoDB rejects unused
/// ones, and empty maps).
#[allow(clippy::type_complexity)]
pub(crate) fn expression_attrs(
    exprs: &[&str],
    values: Vec<(&'static str, AttributeValue)>,
) -> (
    Option<HashMap<String, String>>,
    Option<HashMap<String, AttributeValue>>,
) {
    let used = |token: &str| exprs.iter().any(|e| token_used(e, token));
    let names: HashMap<String, String> = NAMES
        .iter()
        .filter(|(token, _)| used(token))
        .map(|(token, attr)| ((*token).to_owned(), (*attr).to_owned()))
        .collect();
    let values: HashMap<String, AttributeValue> = values
        .into_iter()
        .filter(|(token, _)| used(token))
        .map(|(token, value)| (token.to_owned(), value))
        .collect();
    (
        (!names.is_empty()).then_some(names),
        (!values.is_empty()).then_some(values),
    )
}

/// A number attribute.
pub(crate) fn num(n: u64) -> AttributeValue {
    AttributeValue::N(n.to_string())
}

/// A string attribute.
pub(crate) fn s(text: &str) -> AttributeValue {
    AttributeValue::S(text.to_owned())
}

/// The partition key of a full key: its first segment.
pub(crate) fn partition_of(full_key: &str) -> &str {
    full_key.split('/').next().unwrap_or(full_key)
}

/// One item as read from the table.
#[derive(Debug, Clone)]
pub(crate) struct Item {
    /// The full key.
    pub sk: String,
    pub value: Bytes,
    pub version: u64,
    /// False for an item another client wrote without a `version` (or with one below 1):
    /// nothing in it changes when that client rewrites it, so its `last_index`
    /// ([`VERSIONLESS`]) cannot tell one write from the next, and CAS on it is refused.
    pub versioned: bool,
    pub deadline_ms: Option<u64>,
    pub deleted: bool,
    /// The lock holder's token, on a key held as a lock.
    pub owner: Option<String>,
    /// The lock's heartbeat counter (absent on items of older writers).
    pub heartbeat: Option<u64>,
    /// The lock's lease duration in milliseconds (absent on items of older writers).
    pub lease_ms: Option<u64>,
}

fn number(value: Option<&AttributeValue>) -> Option<u64> {
    value?.as_n().ok()?.parse::<u64>().ok()
}

impl Item {
    /// Decodes an item; `None` if it lacks a sort key (not ours).
    pub fn from_map(map: &HashMap<String, AttributeValue>) -> Option<Item> {
        let sk = map.get(ATTR_SK)?.as_s().ok()?.clone();
        let version = number(map.get(ATTR_VERSION)).filter(|v| *v >= VERSIONLESS);
        Some(Item {
            sk,
            value: match map.get(ATTR_VALUE) {
                Some(AttributeValue::B(blob)) => Bytes::copy_from_slice(blob.as_ref()),
                Some(AttributeValue::S(text)) => Bytes::copy_from_slice(text.as_bytes()),
                _ => Bytes::new(),
            },
            version: version.unwrap_or(VERSIONLESS),
            versioned: version.is_some(),
            deadline_ms: number(map.get(ATTR_DEADLINE)),
            deleted: matches!(map.get(ATTR_DELETED), Some(AttributeValue::Bool(true))),
            owner: map.get(ATTR_OWNER).and_then(|v| v.as_s().ok()).cloned(),
            heartbeat: number(map.get(ATTR_HEARTBEAT)),
            lease_ms: number(map.get(ATTR_LEASE)),
        })
    }

    /// Visible to readers at `now_ms`.
    pub fn live_at(&self, now_ms: u64) -> bool {
        !self.deleted && self.deadline_ms.is_none_or(|d| d > now_ms)
    }
}

/// The attributes of a live item.
pub(crate) fn live_item(
    full_key: &str,
    value: &[u8],
    version: u64,
    deadline_ms: Option<u64>,
    owner: Option<&str>,
) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::with_capacity(7);
    item.insert(ATTR_PK.to_owned(), s(partition_of(full_key)));
    item.insert(ATTR_SK.to_owned(), s(full_key));
    item.insert(ATTR_VALUE.to_owned(), AttributeValue::B(Blob::new(value)));
    item.insert(ATTR_VERSION.to_owned(), num(version));
    if let Some(deadline) = deadline_ms {
        item.insert(ATTR_DEADLINE.to_owned(), num(deadline));
        item.insert(ATTR_EXPIRES.to_owned(), num(deadline.div_ceil(1000)));
    }
    if let Some(owner) = owner {
        item.insert(ATTR_OWNER.to_owned(), s(owner));
    }
    item
}

/// The attributes of a tombstone: key, version, marker, and a TTL for DynamoDB to clean it.
pub(crate) fn tombstone_item(
    full_key: &str,
    version: u64,
    keep: Duration,
) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::with_capacity(5);
    item.insert(ATTR_PK.to_owned(), s(partition_of(full_key)));
    item.insert(ATTR_SK.to_owned(), s(full_key));
    item.insert(ATTR_VERSION.to_owned(), num(version));
    item.insert(ATTR_DELETED.to_owned(), AttributeValue::Bool(true));
    let expires = kv_core::ttl::deadline_millis(keep).div_ceil(1000);
    item.insert(ATTR_EXPIRES.to_owned(), num(expires));
    item
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The version for a write over an item whose version is `floor` (0 if unknown): above it,
/// and at least the clock in microseconds, so versions keep rising even after DynamoDB
/// physically removed an item (and its version) when its TTL ran out. `None` for `floor` =
/// `u64::MAX`: no version is above it (a caller's made-up `last_index`, or another client's
/// item).
pub(crate) fn next_version(floor: u64) -> Option<u64> {
    floor.checked_add(1).map(|next| next.max(now_micros()))
}

/// The error for a write over an item stored at version `u64::MAX` (only another client can
/// have put it there): the version could not rise, so the write is refused.
pub(crate) fn version_exhausted(full_key: &str) -> Error {
    Error::backend(
        BACKEND,
        format!(
            "{full_key}: stored at version {}, no higher version can be written",
            u64::MAX
        ),
    )
}

/// The error of a compare-and-swap at `last_index` [`VERSIONLESS`] on an item without a
/// version (see [`Item::versioned`]): a rewrite by the client that wrote it leaves nothing
/// that a condition could tell from the item read before, so a stale pair would win. Refused
/// instead, with an error that retrying does not clear (unlike `KeyModified`); a plain `put`
/// gives the key a version.
pub(crate) fn versionless_cas() -> Error {
    Error::NotSupported {
        backend: BACKEND,
        operation: "compare-and-swap on a key stored without a `version` attribute \
                    (another client wrote it; a plain put gives it one)",
    }
}

/// Maps an SDK error to the semantic error.
pub(crate) fn sdk_error<E, R>(
    operation: &'static str,
    after: Duration,
    err: SdkError<E, R>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: fmt::Debug + Send + Sync + 'static,
{
    let message = format!("{operation}: {}", DisplayErrorContext(&err));
    match &err {
        SdkError::TimeoutError(_) => Error::Timeout {
            backend: BACKEND,
            operation,
            after,
        },
        SdkError::DispatchFailure(failure) if failure.is_timeout() => Error::Timeout {
            backend: BACKEND,
            operation,
            after,
        },
        // No credentials could be resolved (the chain found none, or a provider failed).
        SdkError::DispatchFailure(failure)
            if failure.is_other() && message.to_ascii_lowercase().contains("credentials") =>
        {
            Error::PermissionDenied {
                backend: BACKEND,
                message,
            }
        }
        SdkError::DispatchFailure(failure) if failure.is_user() => Error::backend(BACKEND, message),
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Error::unavailable(BACKEND, message)
        }
        SdkError::ServiceError(service) => match service.err().code() {
            Some(
                "AccessDeniedException"
                | "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "MissingAuthenticationTokenException"
                | "ExpiredTokenException"
                | "IncompleteSignatureException"
                | "InvalidClientTokenId",
            ) => Error::PermissionDenied {
                backend: BACKEND,
                message,
            },
            Some(
                "ProvisionedThroughputExceededException"
                | "ThrottlingException"
                | "RequestLimitExceeded"
                | "InternalServerError"
                | "ServiceUnavailable"
                | "LimitExceededException"
                // A write met a transaction in progress on its item: nothing was written.
                | "TransactionConflictException",
            ) => Error::unavailable(BACKEND, message),
            _ => Error::backend(BACKEND, message),
        },
        // Request construction failed: missing region or credentials, a bad endpoint…
        _ => {
            if message.contains("credentials") || message.contains("Credentials") {
                Error::PermissionDenied {
                    backend: BACKEND,
                    message,
                }
            } else {
                Error::Config(message)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expression_attrs_keep_only_used_tokens() {
        let (names, values) = expression_attrs(
            &[LIVE, "#ver = :prev"],
            vec![(":now", num(1)), (":prev", num(2)), (":ver", num(3))],
        );
        let names = names.unwrap();
        assert!(names.contains_key("#sk") && names.contains_key("#ver"));
        assert!(!names.contains_key("#val") && !names.contains_key("#exp"));
        let values = values.unwrap();
        assert!(values.contains_key(":now") && values.contains_key(":prev"));
        assert!(!values.contains_key(":ver"));
        let (names, values) = expression_attrs(&["#val"], vec![]);
        assert_eq!(names.unwrap().len(), 1);
        assert!(values.is_none());
    }

    #[test]
    fn versions_rise() {
        let a = next_version(0).unwrap();
        assert!(a > 1_000_000_000_000_000);
        assert_eq!(next_version(u64::MAX / 2), Some(u64::MAX / 2 + 1));
        assert_eq!(next_version(u64::MAX - 1), Some(u64::MAX));
        assert_eq!(next_version(u64::MAX), None);
        assert_eq!(partition_of("a/b/c"), "a");
        assert_eq!(partition_of("a"), "a");
    }
}
