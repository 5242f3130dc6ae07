//! What one implementation under test must offer: the operations of the benchmark, each the
//! "same work" whether it goes through the `Store` API or straight through a client library.

use std::future::Future;

use bytes::Bytes;
use tokio::sync::mpsc;

/// The result of an operation; errors are counted, never fatal during a measurement.
pub type R<T> = Result<T, String>;

/// The outcome of a conditional write.
#[derive(Debug, Clone)]
pub enum Cas<V> {
    /// Written; the new version.
    Done(V),
    /// The condition did not hold (someone else wrote first).
    Conflict,
}

/// One implementation under test (ours through `Store`, or a raw client).
pub trait Target: Send + Sync + 'static {
    /// What a conditional write needs from an earlier read or write of the key.
    type Ver: Clone + Send + Sync + 'static;

    /// Reads a key (value and version).
    fn get(&self, key: &str) -> impl Future<Output = R<Option<Self::Ver>>> + Send;
    /// Writes a key unconditionally.
    fn put(&self, key: &str, value: Bytes) -> impl Future<Output = R<()>> + Send;
    /// Whether a key exists.
    fn exists(&self, key: &str) -> impl Future<Output = R<bool>> + Send;
    /// Deletes a key; whether it existed.
    fn delete(&self, key: &str) -> impl Future<Output = R<bool>> + Send;
    /// Writes `key` only if it is still at `prev` (absent when `None`).
    fn cas(
        &self,
        key: &str,
        value: Bytes,
        prev: Option<&Self::Ver>,
    ) -> impl Future<Output = R<Cas<Self::Ver>>> + Send;
    /// Lists every key below `dir/` with its value; the count.
    fn list(&self, dir: &str) -> impl Future<Output = R<usize>> + Send;
    /// Acquires then releases a lock on `key`.
    fn lock_cycle(&self, key: &str) -> impl Future<Output = R<()>> + Send;
    /// Writes `a` and `b` atomically, each only if still at its version (absent when `None`).
    fn txn(
        &self,
        a: &str,
        b: &str,
        prev: Option<(&Self::Ver, &Self::Ver)>,
        value: Bytes,
    ) -> impl Future<Output = R<Cas<(Self::Ver, Self::Ver)>>> + Send;
    /// Watches `key` from another handle (or connection): one message per change seen, after
    /// the initial state has been consumed. `None` where the implementation has no watch.
    fn watch(
        &self,
        key: &str,
    ) -> impl Future<Output = R<Option<mpsc::UnboundedReceiver<()>>>> + Send;
}
