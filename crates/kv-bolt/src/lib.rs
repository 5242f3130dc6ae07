//! # kv-bolt: the embedded backend, on sled
//!
//! The whole [`kv_core::Store`] contract — watch, watch_tree, locks and TTLs included, which
//! valkeyrie's BoltDB store lacks — in a database file of your process, on
//! [sled](https://docs.rs/sled/0.34.7) 0.34.7. No server. It is also the reference backend the
//! conformance suite is proven on.
//!
//! ```no_run
//! # async fn demo() -> kv_core::Result<()> {
//! use kv_bolt::{BoltStore, Config};
//! use kv_core::{ReadOptions, Store, WriteOptions};
//!
//! let store = BoltStore::open(Config::new("/var/lib/myapp/kv")).await?;
//! store.put("config/port", "8080".into(), WriteOptions::default()).await?;
//! let pair = store.get("config/port", ReadOptions::default()).await?.unwrap();
//! assert_eq!(&pair.value[..], b"8080");
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! `cargo run -p kv-bolt --example quickstart` shows put, get, list, CAS, a watch and a lock on
//! a temporary database.
//!
//! ## Opening, handles and processes
//!
//! * [`Config::new(path)`](Config::new) is a persistent database in a directory;
//!   [`Config::temporary()`](Config::temporary) a throw-away one (in `/dev/shm` on Linux),
//!   deleted when its last handle goes. [`Config::from_url`] reads `bolt:///path?…`.
//! * sled allows one open database per path per process, and only one process: the file is
//!   locked. [`BoltStore::open`] on a path this process already has open *joins* it (a
//!   process-wide registry maps the canonical path to the shared engine), so every handle on a
//!   path shares one `sled::Db` and one change broadcast: writes, watches and locks of one
//!   handle are seen by the others at once. [`BoltStore::handle`] makes another independent
//!   handle on the same database (the way to share a temporary one). The first opener's
//!   file settings (durability, cache size, temporary) apply to the shared database; a later
//!   opener's namespace and timeout apply to its own handle.
//! * A path held by another process waits up to [`Config::lock_timeout`], then fails with
//!   [`Error::Unavailable`](kv_core::Error::Unavailable). A path that cannot hold a database
//!   (a file, a corrupt database) is [`Error::Config`](kv_core::Error::Config); an unwritable
//!   one [`Error::PermissionDenied`](kv_core::Error::PermissionDenied).
//! * Each handle has its own [`TaskSet`](kv_core::TaskSet): closing or dropping it ends *its*
//!   watches and locks only. The database closes (sled flushes and unlocks the file) when
//!   the last handle is closed or dropped.
//!
//! ## Storage layout
//!
//! Four sled trees; a key `k` in namespace `ns` is stored as the UTF-8 bytes of `ns/k` (or `k`
//! without a namespace) — the *stored key*:
//!
//! | tree | key | value |
//! | --- | --- | --- |
//! | `kv/data` | stored key | the value, raw bytes, nothing around it |
//! | `kv/meta` | stored key | 16 bytes: `last_index` (u64 big-endian) ‖ TTL deadline (u64 big-endian, Unix milliseconds, 0 = none) |
//! | `kv/expiry` | deadline (u64 BE) ‖ stored key | empty: the TTL index the sweeper walks in deadline order |
//! | `kv/state` | `seq` | the last commit index (u64 BE) |
//!
//! Any sled 0.34 program can read it: `db.open_tree("kv/data")?.get("ns/k")`. Every write is
//! one sled transaction over the four trees, so a crash never separates a value from its
//! metadata or its index.
//!
//! ## How the contract is met
//!
//! * **Commits and `last_index`.** Writes are serialised by a per-database gate (readers share
//!   it), and each commit takes the next number of the database-wide counter in `kv/state`,
//!   written in the same transaction. The counter is the `last_index` of every key the commit
//!   writes: never 0, strictly rising across all keys — hence across delete and re-create —
//!   and, being committed with the data, it survives closing and reopening (and crashes: data
//!   and counter are recovered together). sled's `generate_id` was not used: it is persisted
//!   separately from the data.
//! * **CAS.** `atomic_put`/`atomic_delete` compare the metadata's `last_index` under the write
//!   gate; an expired key counts as absent.
//! * **TTL.** The deadline is stored in `kv/meta`; every read (get, list, watches, lock
//!   attempts, CAS) treats a key past its deadline as absent at once, to the millisecond. A
//!   sweeper thread per database sleeps until the earliest deadline of `kv/expiry`, then
//!   physically removes the expired keys in one commit and publishes the removal. A write
//!   without TTL stores deadline 0: the key is permanent again. Deadlines are wall-clock
//!   times (they must survive a restart), so a jump of the system clock moves them.
//! * **Watch / WatchTree.** Every commit is published on an in-process
//!   `tokio::sync::broadcast` of the database, with the new state of every key it touched and
//!   its commit index. A watch subscribes, reads the current state with the index it reflects,
//!   then applies each later commit in order: one item per change, never backwards. A key's
//!   deadline arms a timer so an expiry is reported as soon as readers stop seeing the key. A
//!   watcher more than 4096 commits behind re-reads the state, and values above 64 KiB are
//!   not carried in the change (a lagging watcher must not pin large values in memory): the
//!   watcher re-reads them. sled's own `watch_prefix` is not used (its subscribers block
//!   writers when not drained).
//! * **Locks.** The lock is its key, created only if absent (like `atomic_put(None)`) with the
//!   lock's TTL as deadline; the fencing token is that commit's index. Waiters sleep on the
//!   broadcast for that key and on the holder's deadline, and honour `abandon` at once. The
//!   holder renews the deadline every `ttl / 3` (without changing `last_index`) while the key
//!   still carries its index, and reports the lock lost the moment a commit deletes or
//!   rewrites the key. Unlock deletes the key only if it still carries the holder's index.
//!   A closed handle releases its locks at once; a dropped one stops renewing (its leases
//!   report [`LockState::Lost`](kv_core::LockState::Lost) at once) and its locks expire by
//!   TTL, like a crashed process's.
//! * **Blocking.** sled is synchronous: every call runs on tokio's blocking pool
//!   (`spawn_blocking`), bounded by [`Config::timeout`]; a panic inside sled becomes
//!   [`Error::Backend`](kv_core::Error::Backend).
//! * **Durability.** [`Durability::Periodic`] (default 500 ms, sled's `flush_every_ms`) or
//!   [`Durability::EveryWrite`] (each write call returns after a flush). `close` flushes.
//! * `ReadOptions::consistent` is ignored: every read is consistent.
//!
//! ## Capabilities and limits
//!
//! Everything is supported. `max_key_len` 1024 bytes (the contract's maximum),
//! `max_value_len` 16 MiB (sled stores large values as blobs; tested), `min_ttl` 100 ms,
//! `ttl_precision` 100 ms (reads are exact; this covers watch timers on a loaded machine).
//! `delete_tree` is atomic (one transaction), and reported to watch_tree as one change.
//!
//! ## Deviations
//!
//! * Background work per database: one sweeper thread (`kv-bolt-sweeper`), not a task of a
//!   handle's [`TaskSet`](kv_core::TaskSet) — it belongs to the database, not to one handle —
//!   so [`Store::background_tasks`](kv_core::Store::background_tasks) does not count it. It
//!   ends when the database closes.
//! * When the last reference to a database goes, sled flushes it and closes its files
//!   synchronously. `close` arranges for that to happen on the blocking pool; a handle
//!   dropped without `close` may do it on the runtime thread that drops it (milliseconds for
//!   a small database).
//! * sled 0.34 has known issues (space amplification; rare corruption on open after an
//!   unclean shutdown, sled issues #1533/#1509). Such a database fails to open with
//!   [`Error::Config`](kv_core::Error::Config) instead of panicking.

#![warn(missing_docs)]

mod config;
mod engine;
mod lock;
mod store;
mod watch;

pub use config::{Config, ConfigBuilder, Durability};
/// The contract this crate implements, re-exported so that depending on this crate alone is
/// enough: `use <this crate>::kv_core::{Store, ReadOptions, WriteOptions};`.
pub use kv_core;
pub use store::BoltStore;
