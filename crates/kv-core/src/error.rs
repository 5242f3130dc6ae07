//! The one error type every backend returns.

use std::sync::Arc;
use std::time::Duration;

/// A boxed, shareable error from a backend's client library.
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Every failure a [`Store`](crate::Store) or [`Lock`](crate::Lock) can report.
///
/// The variants are semantic: the same situation yields the same variant on every backend, so
/// callers can `match` on them without knowing which store is behind the trait object. The
/// enum is `Clone` so that one error can be delivered to several watchers.
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A conditional operation named a key that does not exist: `atomic_put` with a previous
    /// pair, or `atomic_delete`, on an absent (or expired) key.
    #[error("key not found: {key}")]
    KeyNotFound {
        /// The normalised key.
        key: String,
    },
    /// `atomic_put` with no previous pair (create-only) found the key already present.
    #[error("key already exists: {key}")]
    KeyExists {
        /// The normalised key.
        key: String,
    },
    /// A conditional operation's `last_index` no longer matches the key's current one: someone
    /// else wrote the key in between.
    #[error("key was modified concurrently: {key}")]
    KeyModified {
        /// The normalised key.
        key: String,
    },
    /// A [`Transaction`](crate::Transaction)'s condition did not hold, so nothing was written.
    /// Names the first failing condition, in the order the conditions were added.
    #[error("transaction condition {index} on {key} failed: {reason}")]
    ConditionFailed {
        /// The condition's position among the transaction's conditions (from 0).
        index: usize,
        /// The condition's normalised key.
        key: String,
        /// Why it failed.
        reason: crate::txn::ConditionFailure,
    },
    /// The key or directory breaks the [key rules](crate::key) or the backend's length limit.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The key as the caller gave it.
        key: String,
        /// Which rule it breaks.
        reason: String,
    },
    /// The value is larger than the backend accepts; nothing was sent.
    #[error("value of {size} bytes for key {key} exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The normalised key.
        key: String,
        /// The value's size in bytes.
        size: usize,
        /// The backend's limit in bytes ([`Capabilities::max_value_len`](crate::Capabilities)).
        max: usize,
    },
    /// An option is out of range (for example a TTL below the backend's minimum).
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The configuration cannot be used (bad URL, missing field, unreadable certificate…).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The backend cannot perform this call; its [`Capabilities`](crate::Capabilities) say so.
    #[error("{operation} is not supported by the {backend} backend")]
    NotSupported {
        /// The backend's name.
        backend: &'static str,
        /// The call, e.g. `"watch"`.
        operation: &'static str,
    },
    /// The server cannot be reached or refused the connection. Retrying later may succeed.
    #[error("{backend} is unavailable: {source}")]
    Unavailable {
        /// The backend's name.
        backend: &'static str,
        /// What the client library reported.
        source: Source,
    },
    /// The call did not complete within its time limit. It may or may not have taken effect.
    #[error("{backend} timed out after {after:?} during {operation}")]
    Timeout {
        /// The backend's name.
        backend: &'static str,
        /// The call that timed out.
        operation: &'static str,
        /// The limit that was exceeded.
        after: Duration,
    },
    /// The server rejected the credentials or the credentials lack a permission.
    #[error("permission denied by {backend}: {message}")]
    PermissionDenied {
        /// The backend's name.
        backend: &'static str,
        /// The server's explanation.
        message: String,
    },
    /// `unlock` found that the lock had already been lost (expired, taken over, or the store
    /// was closed): the critical section may not have been exclusive.
    #[error("the lock on {key} was lost before it was released")]
    LockLost {
        /// The lock's key.
        key: String,
    },
    /// `unlock` was called on a lock that this handle does not hold.
    #[error("the lock on {key} is not held by this handle")]
    LockNotHeld {
        /// The lock's key.
        key: String,
    },
    /// `lock` was called on a lock that this handle already holds.
    #[error("the lock on {key} is already held by this handle")]
    LockAlreadyHeld {
        /// The lock's key.
        key: String,
    },
    /// The store handle was closed; create a new one.
    #[error("the store handle is closed")]
    Closed,
    /// Any other failure reported by the backend or its client library.
    #[error("{backend} error: {source}")]
    Backend {
        /// The backend's name.
        backend: &'static str,
        /// The underlying error.
        source: Source,
    },
}

impl Error {
    /// Wraps a client-library error as [`Error::Backend`].
    pub fn backend(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Backend {
            backend,
            source: Arc::from(source.into()),
        }
    }

    /// Wraps a connection failure as [`Error::Unavailable`].
    pub fn unavailable(
        backend: &'static str,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Error::Unavailable {
            backend,
            source: Arc::from(source.into()),
        }
    }

    /// Builds an [`Error::InvalidKey`].
    pub fn invalid_key(key: &str, reason: impl Into<String>) -> Self {
        Error::InvalidKey {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// Builds an [`Error::ConditionFailed`].
    pub fn condition_failed(
        index: usize,
        key: impl Into<String>,
        reason: crate::txn::ConditionFailure,
    ) -> Self {
        Error::ConditionFailed {
            index,
            key: key.into(),
            reason,
        }
    }

    /// True for failures that may go away on retry: [`Error::Unavailable`] and [`Error::Timeout`].
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::Timeout { .. })
    }

    /// True for the outcomes of a lost compare-and-swap race ([`Error::KeyExists`],
    /// [`Error::KeyModified`], [`Error::KeyNotFound`], and a transaction condition failing
    /// for one of those reasons): re-read and try again. A lost lock is not a conflict.
    pub fn is_conflict(&self) -> bool {
        match self {
            Error::KeyExists { .. } | Error::KeyModified { .. } | Error::KeyNotFound { .. } => true,
            Error::ConditionFailed { reason, .. } => {
                *reason != crate::txn::ConditionFailure::LockLost
            }
            _ => false,
        }
    }
}
