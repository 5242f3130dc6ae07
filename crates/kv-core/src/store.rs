//! The [`Store`] trait: the one API every backend implements, with one behaviour.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::Result;
use crate::lock::Lock;
use crate::txn::Transaction;
use crate::types::{Capabilities, KvPair, LockOptions, ReadOptions, WriteOptions};
use crate::watch::{WatchStream, WatchTreeStream};

/// A handle to a key/value store. Usable as `Arc<dyn Store>`; every future is `Send`.
///
/// Each method documents the single behaviour every backend must show; the `kv-conformance`
/// suite checks it against live servers. Common to all calls:
///
/// * Keys and directories are checked against the [key rules](crate::key) and the backend's
///   [`Capabilities::max_key_len`] first: a bad one is [`Error::InvalidKey`] and nothing is
///   sent. Values larger than [`Capabilities::max_value_len`] are [`Error::ValueTooLarge`],
///   also before anything is sent.
/// * Keys in results are normalised (`/a/b/` is reported as `a/b`) and relative to the
///   backend's configured namespace prefix, if any.
/// * A key whose TTL has passed is absent for every call, even if the server has not
///   physically removed it yet.
/// * After [`close`](Store::close), every call fails with [`Error::Closed`].
/// * Server failures are [`Error::Unavailable`], [`Error::Timeout`],
///   [`Error::PermissionDenied`] or [`Error::Backend`]; nothing panics.
///
/// [`Error::InvalidKey`]: crate::Error::InvalidKey
/// [`Error::ValueTooLarge`]: crate::Error::ValueTooLarge
/// [`Error::Closed`]: crate::Error::Closed
/// [`Error::Unavailable`]: crate::Error::Unavailable
/// [`Error::Timeout`]: crate::Error::Timeout
/// [`Error::PermissionDenied`]: crate::Error::PermissionDenied
/// [`Error::Backend`]: crate::Error::Backend
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// What this backend supports and its limits.
    fn capabilities(&self) -> &Capabilities;

    /// Writes `value` at `key`, creating or overwriting it. Missing parent directories are
    /// not needed (`a/b/c` can be written when nothing is under `a`). With
    /// [`WriteOptions::ttl`] the key disappears for every reader after that time; a TTL below
    /// [`Capabilities::min_ttl`] is [`Error::InvalidOption`](crate::Error::InvalidOption).
    /// Without a TTL the key is permanent, even if an earlier write gave it one.
    async fn put(&self, key: &str, value: Bytes, options: WriteOptions) -> Result<()>;

    /// Reads `key`: `Ok(None)` when it does not exist (never an error).
    async fn get(&self, key: &str, options: ReadOptions) -> Result<Option<KvPair>>;

    /// Deletes `key` (only that key: keys below it stay). `Ok(true)` if it existed,
    /// `Ok(false)` if it did not (never an error).
    async fn delete(&self, key: &str) -> Result<bool>;

    /// True when `key` exists.
    async fn exists(&self, key: &str, options: ReadOptions) -> Result<bool> {
        Ok(self.get(key, options).await?.is_some())
    }

    /// Lists every key strictly below `directory`, at any depth, sorted ascending by key
    /// (byte order). The path is respected: `list("abc")` returns `abc/x` and `abc/x/y`, never
    /// `abc` itself nor `abcd/x`. A missing directory, or a key with nothing below it, gives an
    /// empty list (never an error). `""` lists the whole store.
    async fn list(&self, directory: &str, options: ReadOptions) -> Result<Vec<KvPair>>;

    /// Deletes `directory` itself and every key below it (the same keys as
    /// [`list`](Store::list), plus the directory key). Nothing to delete is `Ok(())`. `""`
    /// empties the whole store (namespace). Atomic where the backend allows; each backend's
    /// documentation says whether it is.
    async fn delete_tree(&self, directory: &str) -> Result<()>;

    /// Compare-and-swap write. With `previous == None` the key must not exist
    /// ([`Error::KeyExists`](crate::Error::KeyExists) otherwise). With `Some(previous)` the
    /// key must exist ([`Error::KeyNotFound`](crate::Error::KeyNotFound) otherwise) and its
    /// `last_index` must still equal `previous.last_index`
    /// ([`Error::KeyModified`](crate::Error::KeyModified) otherwise). On failure nothing is
    /// written. On success returns the new pair; its `last_index` is what `get` reports next
    /// and is valid for the next conditional write. Honours [`WriteOptions::ttl`].
    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: WriteOptions,
    ) -> Result<KvPair>;

    /// Compare-and-delete: deletes `key` only if its `last_index` still equals
    /// `previous.last_index`. [`Error::KeyNotFound`](crate::Error::KeyNotFound) if the key does
    /// not exist, [`Error::KeyModified`](crate::Error::KeyModified) if it was written since
    /// (the key is then left as it is).
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()>;

    /// Commits a [`Transaction`] atomically: every condition holds and every operation is
    /// applied, or nothing is written ([`Error::ConditionFailed`](crate::Error::ConditionFailed)
    /// names the first failing condition). Returns the new pair of every key put, in
    /// operation order. Checked first with [`Capabilities::check_transaction`]. See
    /// [`crate::txn`] for the whole contract. Backends without transactions keep this default,
    /// which is [`Error::NotSupported`](crate::Error::NotSupported).
    async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        let _ = txn;
        Err(self.capabilities().unsupported("transaction"))
    }

    /// Watches one key. The first item is the current state: `Some(pair)` or `None` when the
    /// key does not exist (a missing key is not an error). Then one item per change: a write
    /// gives `Some` with the new value and a higher `last_index` (even when the value is the
    /// same), a deletion or expiry gives `None`. A consumer that falls behind sees
    /// intermediate states coalesced but always reaches the latest one; states never go
    /// backwards. Broken connections are retried in the background and the stream catches up
    /// afterwards; an `Err` item is the last item (the store was closed, permission was
    /// revoked, …). Dropping the stream stops all background work at once.
    async fn watch(&self, key: &str, options: ReadOptions) -> Result<WatchStream>;

    /// Watches a subtree. Every item is a full snapshot of the subtree, exactly what
    /// [`list`](Store::list) would return: first the current one (possibly empty, a missing
    /// directory is not an error), then one per change of any key below `directory` (created,
    /// changed — including a child's value —, deleted or expired). Same coalescing, error and
    /// cancellation rules as [`watch`](Store::watch).
    async fn watch_tree(&self, directory: &str, options: ReadOptions) -> Result<WatchTreeStream>;

    /// Returns an unheld lock on `key`; nothing is sent until [`Lock::lock`]. The key and the
    /// options are validated here. See [`crate::lock`] for the lock contract.
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock>;

    /// Closes the handle: releases every lock acquired through it, ends its watches (their
    /// last item is `Err(Error::Closed)`), stops every background task and disconnects. Keys
    /// written with a TTL are not deleted: nothing keeps them alive, and they expire on time.
    /// Later calls fail with [`Error::Closed`](crate::Error::Closed). Idempotent. Other handles
    /// to the same store are not affected. Cut short (a `timeout` around it), the handle is
    /// closed all the same: its locks are released and its tasks stopped in the background.
    async fn close(&self) -> Result<()>;

    /// How many background tasks (watch loops, lock renewals, keep-alives) this handle runs
    /// now. Dropping a watch stream or a lock, and closing the store, bring it back down.
    fn background_tasks(&self) -> usize;
}
