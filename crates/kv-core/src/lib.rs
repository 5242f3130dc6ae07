//! # kv-core: one contract for distributed key/value stores
//!
//! This crate holds what every backend shares: the [`Store`] trait, its types ([`KvPair`],
//! [`WriteOptions`], [`ReadOptions`], [`LockOptions`], [`Capabilities`]), the one
//! [`Error`] enum, the [key rules](key), the [`lock`] and [`watch`] machinery and
//! TTL arithmetic. Backends (`kv-bolt`, `kv-etcd`, `kv-consul`, `kv-zookeeper`, `kv-redis`,
//! `kv-dynamodb`) each implement [`Store`]; `kv-conformance` checks that they all behave the
//! same way against live servers.
//!
//! ## The contract in one page
//!
//! | call | behaviour on every backend |
//! | --- | --- |
//! | keys | `/`-separated paths; one leading/trailing `/` ignored; no empty, `.` or `..` segment; only letters, marks, numbers, punctuation, symbols and the ASCII space (no control, format, private-use or unassigned characters, no separators but the space); no `__kv…` segment; length limit per backend ([`key`]) |
//! | `put` | create or overwrite; optional TTL; a write without TTL makes the key permanent |
//! | `get` | `Ok(None)` when absent or expired |
//! | `delete` | `Ok(true)` if it existed, `Ok(false)` if not; only that key |
//! | `exists` | `bool`, never an error for a missing key |
//! | `list(dir)` | every key strictly below `dir/` at any depth, sorted by key, `dir` itself excluded; missing → empty |
//! | `delete_tree(dir)` | `dir` and everything below `dir/`; missing → `Ok` |
//! | `atomic_put(k, v, None)` | create-only; present → [`Error::KeyExists`] |
//! | `atomic_put(k, v, Some(prev))` | absent → [`Error::KeyNotFound`]; stale index → [`Error::KeyModified`]; returns the new pair |
//! | `atomic_delete(k, prev)` | absent → [`Error::KeyNotFound`]; stale index → [`Error::KeyModified`] |
//! | `last_index` | never 0; strictly rises on every write of a key, also across delete and re-create; valid for CAS |
//! | TTL | the key is gone for every reader at most [`Capabilities::ttl_precision`] after its TTL, whoever wrote it and whether or not the writer is still connected |
//! | `watch(k)` | stream: current state first (`Some`/`None`), then one item per change, deletion = `None`; coalesces for slow readers; `Err` is the last item; drop cancels |
//! | `watch_tree(dir)` | stream of full `list`-shaped snapshots: current first (maybe empty), then one per change of any descendant, value changes included |
//! | locks | see [`lock`]: unheld on creation, cancel-safe `lock()`, background renewal, lost signal, fencing token = `last_index` at acquisition, `unlock()` deletes the key |
//! | `transaction(txn)` | conditions (absent, exists, `last_index` = N, lock still held) and puts/deletes committed atomically, all or nothing; failure = [`Error::ConditionFailed`] naming the first failing condition; returns the new pairs of the puts; see [`txn`] |
//! | `lease.guarded_put` | a put committed only while the lock is held on the server, else [`Error::LockLost`] |
//! | `close` | releases locks, ends watches with [`Error::Closed`], stops tasks; later calls → [`Error::Closed`] |
//!
//! Differences from valkeyrie (Go) are deliberate and listed in the workspace README.

#![warn(missing_docs)]

pub mod clock;
pub mod error;
pub mod key;
mod key_chars;
pub mod lock;
pub mod retry;
pub mod store;
pub mod tasks;
pub mod ttl;
pub mod txn;
pub mod types;
pub mod url;
pub mod watch;

pub use bytes::Bytes;
pub use error::{Error, Result};
pub use lock::{Acquired, HeldLock, LeaseNotifier, Lock, LockBackend, LockLease, LockState};
pub use retry::Backoff;
pub use store::Store;
pub use tasks::TaskSet;
pub use tokio_util::sync::CancellationToken;
pub use txn::{Condition, ConditionFailure, Operation, Transaction};
pub use types::{Capabilities, KvPair, LockOptions, ReadOptions, WriteOptions};
pub use watch::{WatchSender, WatchStream, WatchTreeStream, spawn_watch};
