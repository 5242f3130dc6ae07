//! Values, options and capability descriptions.

use std::time::Duration;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::key;

/// A key, its value and the index to use for compare-and-swap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvPair {
    /// The normalised key (see [`crate::key`]), relative to the store's namespace.
    pub key: String,
    /// The value, exactly the bytes that were written.
    pub value: Bytes,
    /// The key's modification index: strictly greater after every write of this key than
    /// before it, including a delete followed by a re-create. Pass the pair to
    /// [`Store::atomic_put`](crate::Store::atomic_put) or
    /// [`Store::atomic_delete`](crate::Store::atomic_delete) to make the write conditional
    /// on nobody having written the key since. Never 0 for an existing key.
    pub last_index: u64,
}

impl KvPair {
    /// Builds a pair.
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>, last_index: u64) -> Self {
        KvPair {
            key: key.into(),
            value: value.into(),
            last_index,
        }
    }
}

/// Options for `put` and `atomic_put`.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// The key disappears this long after the write, for every reader, whether or not the
    /// writing handle is still open. `None` (the default) keeps it until deleted; a later
    /// write without a TTL makes the key permanent again.
    pub ttl: Option<Duration>,
}

impl WriteOptions {
    /// Options with a time-to-live.
    pub fn with_ttl(ttl: Duration) -> Self {
        WriteOptions { ttl: Some(ttl) }
    }
}

/// Options for reads (`get`, `exists`, `list`, and the first read of `watch` and `watch_tree`).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadOptions {
    /// `true` (the default): the read reflects every write that completed before it started
    /// (linearizable where the server offers it). `false` allows a possibly stale but cheaper
    /// read from any replica; backends without such a mode ignore it.
    pub consistent: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions { consistent: true }
    }
}

impl ReadOptions {
    /// Options allowing a stale read.
    pub fn stale() -> Self {
        ReadOptions { consistent: false }
    }
}

/// Options for [`Store::new_lock`](crate::Store::new_lock).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockOptions {
    /// The value the lock's key holds while the lock is held (empty by default). Other
    /// clients read it with `get`: leader election publishes the leader's name this way.
    pub value: Bytes,
    /// How long the lock survives a holder that stopped renewing it (crashed, partitioned).
    /// The holder renews it in the background every `ttl / 3`. Default 15 s.
    pub ttl: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            value: Bytes::new(),
            ttl: Duration::from_secs(15),
        }
    }
}

impl LockOptions {
    /// Sets the value held at the key while locked.
    pub fn value(mut self, value: impl Into<Bytes>) -> Self {
        self.value = value.into();
        self
    }

    /// Sets the TTL.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }
}

/// What a backend can do, and its limits. Every `false` here is a call that returns
/// [`Error::NotSupported`]; the conformance suite checks both the claims and the limits.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// The backend's short name (`"etcd"`, `"redis"`…), also used in errors.
    pub backend: &'static str,
    /// `watch` works.
    pub watch: bool,
    /// `watch_tree` works.
    pub watch_tree: bool,
    /// `new_lock` works.
    pub locks: bool,
    /// `WriteOptions::ttl` works.
    pub ttl: bool,
    /// Longest key in bytes after normalisation (at most [`key::MAX_KEY_LEN`]).
    pub max_key_len: usize,
    /// Largest value in bytes.
    pub max_value_len: usize,
    /// Shortest TTL accepted (keys and locks); a shorter one is [`Error::InvalidOption`].
    pub min_ttl: Duration,
    /// Longest TTL accepted.
    pub max_ttl: Duration,
    /// How long past its TTL a key may still be visible to readers (server timer resolution,
    /// TTL rounding). Readers never see a key later than `ttl + ttl_precision` after the write.
    pub ttl_precision: Duration,
    /// [`Store::transaction`](crate::Store::transaction) works (see [`crate::txn`]).
    pub transactions: bool,
    /// The most conditions plus operations one transaction may hold.
    pub max_transaction_ops: usize,
    /// `watch_tree` reports the keys a transaction writes in one snapshot (never a snapshot
    /// with some of its writes and not the others). `false` where the server reports each
    /// key's change separately and the backend cannot regroup them.
    pub watch_tree_sees_whole_transactions: bool,
    /// The store is partitioned and one transaction's keys must live on one shard (Redis
    /// Cluster: one hash slot, chosen with a `{tag}` in the namespace or the keys); a
    /// transaction across shards is [`Error::InvalidOption`]. `false` on a single store.
    pub transaction_keys_share_a_shard: bool,
}

impl Capabilities {
    /// Full capabilities with generous defaults; backends then lower what they must. Only
    /// transactions are off: a backend turns them on with [`with_transactions`](Self::with_transactions).
    pub fn full(backend: &'static str) -> Self {
        Capabilities {
            backend,
            watch: true,
            watch_tree: true,
            locks: true,
            ttl: true,
            max_key_len: key::MAX_KEY_LEN,
            max_value_len: 512 * 1024,
            min_ttl: Duration::from_secs(1),
            max_ttl: Duration::from_secs(365 * 24 * 3600),
            ttl_precision: Duration::from_millis(500),
            transactions: false,
            max_transaction_ops: 0,
            watch_tree_sees_whole_transactions: false,
            transaction_keys_share_a_shard: false,
        }
    }

    /// These capabilities with transactions of up to `max_ops` conditions plus operations;
    /// `whole_in_watch_tree` says whether `watch_tree` reports a transaction in one snapshot.
    pub fn with_transactions(mut self, max_ops: usize, whole_in_watch_tree: bool) -> Self {
        self.transactions = true;
        self.max_transaction_ops = max_ops;
        self.watch_tree_sees_whole_transactions = whole_in_watch_tree;
        self
    }

    /// Normalises a key and checks it against the key rules and this backend's length limit.
    pub fn check_key(&self, key: &str) -> Result<String> {
        let normalized = key::normalize_key(key)?;
        self.check_len(key, normalized)
    }

    /// Normalises a directory (may be empty: the root) and checks it.
    pub fn check_directory(&self, directory: &str) -> Result<String> {
        let normalized = key::normalize_directory(directory)?;
        self.check_len(directory, normalized)
    }

    fn check_len(&self, original: &str, normalized: String) -> Result<String> {
        if normalized.len() > self.max_key_len {
            return Err(Error::invalid_key(
                original,
                format!(
                    "longer than the {} limit of {} bytes",
                    self.backend, self.max_key_len
                ),
            ));
        }
        Ok(normalized)
    }

    /// Checks a value's size before anything is sent.
    pub fn check_value(&self, key: &str, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_len {
            return Err(Error::ValueTooLarge {
                key: key.to_owned(),
                size: value.len(),
                max: self.max_value_len,
            });
        }
        Ok(())
    }

    /// Checks a write's TTL: [`Error::NotSupported`] if the backend has none, else the
    /// [`min_ttl`](Self::min_ttl)..=[`max_ttl`](Self::max_ttl) range.
    pub fn check_ttl(&self, ttl: Option<Duration>) -> Result<Option<Duration>> {
        match ttl {
            None => Ok(None),
            Some(_) if !self.ttl => Err(self.unsupported("ttl")),
            Some(ttl) => self.check_ttl_range("ttl", ttl).map(Some),
        }
    }

    /// Checks a lock's options: locks supported and the TTL in range.
    pub fn check_lock(&self, key: &str, options: &LockOptions) -> Result<String> {
        if !self.locks {
            return Err(self.unsupported("new_lock"));
        }
        let key = self.check_key(key)?;
        self.check_value(&key, &options.value)?;
        self.check_ttl_range("lock ttl", options.ttl)?;
        Ok(key)
    }

    fn check_ttl_range(&self, what: &str, ttl: Duration) -> Result<Duration> {
        if ttl < self.min_ttl || ttl > self.max_ttl {
            return Err(Error::InvalidOption(format!(
                "{what} {ttl:?} is outside the {} range {:?}..={:?}",
                self.backend, self.min_ttl, self.max_ttl
            )));
        }
        Ok(ttl)
    }

    /// The [`Error::NotSupported`] for `operation` on this backend.
    pub fn unsupported(&self, operation: &'static str) -> Error {
        Error::NotSupported {
            backend: self.backend,
            operation,
        }
    }
}
