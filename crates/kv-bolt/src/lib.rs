//! # kv-bolt: the embedded backend, on redb
//!
//! The whole [`kv_core::Store`] contract — watch, watch_tree, locks and TTLs included, which
//! valkeyrie's BoltDB store lacks — in a database file of your process, on
//! [redb](https://docs.rs/redb/4) 4 (copy-on-write B-trees, ACID, MVCC readers and one
//! writer: the closest in design to BoltDB). No server. It is also the reference backend the
//! conformance suite is proven on.
//!
//! Until this version the engine was sled 0.34, which stalls every writer for 10 s and more
//! under concurrent writes (reproduced by `tests/stress.rs`; see the README's dependency
//! table): the crate's API, behaviour and storage layout (the same four tables) stayed.
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
//! * [`Config::new(path)`](Config::new) is a persistent database in a directory (the data is
//!   the file `kv.redb` inside); [`Config::temporary()`](Config::temporary) a throw-away one
//!   held in memory; a temporary database with a path is deleted when its last handle goes.
//!   [`Config::from_url`] reads `bolt:///path?…`.
//! * One process at a time opens a database file: redb locks it. [`BoltStore::open`] on a path
//!   this process already has open *joins* it (a process-wide registry maps the canonical
//!   path to the shared engine), so every handle on a path shares one database, one writer
//!   and one change broadcast: writes, watches and locks of one handle are seen by the others
//!   at once. [`BoltStore::handle`] makes another independent handle on the same database
//!   (the way to share a temporary one). The first opener's file settings (durability, cache
//!   size, temporary) apply to the shared database; a later opener's namespace and timeout
//!   apply to its own handle.
//! * A path held by another process waits up to [`Config::lock_timeout`], then fails with
//!   [`Error::Unavailable`](kv_core::Error::Unavailable); the lock goes with the process, so
//!   a killed holder's database opens at once (`tests/crash.rs`). A path that cannot hold a
//!   database (a file, a corrupt database, another program's redb file) is
//!   [`Error::Config`](kv_core::Error::Config); an unwritable one
//!   [`Error::PermissionDenied`](kv_core::Error::PermissionDenied).
//! * Each handle has its own [`TaskSet`](kv_core::TaskSet): closing or dropping it ends *its*
//!   watches and locks only. The database closes (the writer finishes what is queued, the
//!   file is unlocked) when the last handle is closed or dropped.
//!
//! ## Storage layout
//!
//! Three redb tables; a key `k` in namespace `ns` is stored as `ns/k` (or `k` without a
//! namespace) — the *stored key*:
//!
//! | table | key | value |
//! | --- | --- | --- |
//! | `kv/entries` (`&str` → `&[u8]`) | stored key | a 16-byte header — `last_index` (u64 big-endian) ‖ TTL deadline (u64 big-endian, Unix milliseconds, 0 = none) — then the value's raw bytes |
//! | `kv/expiry` (`&[u8]` → `()`) | deadline (u64 BE) ‖ stored key | the TTL index the sweeper walks in deadline order |
//! | `kv/state` (`&str` → `u64`) | `seq` | the last commit index |
//!
//! Any redb 4 program can read it with those table definitions (`tests/bolt.rs` does).
//! Every write is one redb transaction over the three tables, so a crash never separates a
//! value from its metadata or its index. The header sits in front of the value, in the same
//! row, so a read is one B-tree lookup and a listing one B-tree walk.
//!
//! Builds before 2026-11-27 kept the value (`kv/data`) and the header (`kv/meta`) in two
//! tables. Opening such a database moves every key into `kv/entries` and drops the two old
//! tables, in one redb write transaction (all or nothing, like every commit: a process killed
//! during the move leaves the old layout whole, `tests/crash.rs`); a header
//! without its value refuses to open ([`Error::Config`](kv_core::Error::Config)) and changes
//! nothing. The move is one way: an earlier build opening the new layout sees no keys.
//!
//! ## How the contract is met
//!
//! * **One writer, group commit.** Write calls are requests queued to one writer thread per
//!   database. The thread takes every request waiting, applies them in order inside ONE redb
//!   write transaction — each request sees the ones before it and gets its own commit index —
//!   commits once, then answers them and publishes their changes in index order. Under
//!   concurrency many writes share one `fsync`; a lone write pays one. A request's answer
//!   goes out only after its transaction committed; if the transaction fails, every request
//!   in it gets the error and none is applied.
//! * **Commits and `last_index`.** Each commit takes the next number of the database-wide
//!   counter in `kv/state`, written in the same transaction: the `last_index` of every key the
//!   commit writes. Never 0, strictly rising across all keys — hence across delete and
//!   re-create — and recovered with the data after a crash.
//! * **Reads** run on the caller's task in a redb read transaction: an MVCC snapshot of value,
//!   metadata and counter of one commit, never blocked by the writer, no thread hop.
//! * **CAS.** `atomic_put`/`atomic_delete` compare the metadata's `last_index` inside the
//!   writer's transaction; an expired key counts as absent.
//! * **TTL.** The deadline is stored in the key's header; every read (get, list, watches, lock
//!   attempts, CAS) treats a key past its deadline as absent at once, to the millisecond. The
//!   writer thread wakes at the earliest deadline of `kv/expiry`, removes the expired keys in
//!   a commit and publishes the removal. A write without TTL stores deadline 0: the key is
//!   permanent again. Deadlines are wall-clock times (they must survive a restart), so a jump
//!   of the system clock moves them.
//! * **Watch / WatchTree.** Every commit is published on an in-process
//!   `tokio::sync::broadcast` of the database, with the new state of every key it touched and
//!   its commit index. A watch subscribes, reads the current state with the index it reflects,
//!   then applies each later commit in order: one item per change, never backwards. A key's
//!   deadline arms a timer so an expiry is reported as soon as readers stop seeing the key. A
//!   watcher more than 4096 commits behind re-reads the state, and values above 64 KiB are
//!   not carried in the change (a lagging watcher must not pin large values in memory): the
//!   watcher re-reads them.
//! * **Locks.** The lock is its key, created only if absent (like `atomic_put(None)`) with the
//!   lock's TTL as deadline; the fencing token is that commit's index, durable before the
//!   caller learns it (so a holder killed right after acquiring never hands its token on:
//!   `tests/crash.rs`). Waiters sleep on the broadcast for that key and on the holder's
//!   deadline, and honour `abandon` at once. The holder renews the deadline every `ttl / 3`
//!   (without changing `last_index`) while the key still carries its index, and reports the
//!   lock lost the moment a commit deletes or rewrites the key. Unlock deletes the key only if
//!   it still carries the holder's index. A closed handle releases its locks at once; a
//!   dropped one stops renewing (its leases report
//!   [`LockState::Lost`](kv_core::LockState::Lost) at once) and its locks expire by TTL, like
//!   a crashed process's.
//! * **Durability.** [`Durability::EveryWrite`], the default: a write call returns after its
//!   commit is on disk. [`Durability::Periodic`] commits without `fsync` and makes the commits
//!   durable at the period (a crash loses the last period's acknowledged writes). `close`
//!   makes everything durable.
//! * **Bounded calls, and a stuck disk.** A write waits at most [`Config::timeout`] for its
//!   answer ([`Error::Timeout`](kv_core::Error::Timeout); the request may still be applied,
//!   as with a networked store). While the writer has been inside one transaction for longer
//!   than the timeout (a hung disk), write calls fail at once with
//!   [`Error::Unavailable`](kv_core::Error::Unavailable) instead of queueing behind it; no
//!   caller thread is ever blocked.
//! * `ReadOptions::consistent` is ignored: every read is consistent.
//!
//! ## Capabilities and limits
//!
//! Everything is supported. `max_key_len` 1024 bytes (the contract's maximum),
//! `max_value_len` 16 MiB (tested; redb's own limit is 3 GiB), `min_ttl` 100 ms,
//! `ttl_precision` 100 ms (reads are exact; this covers watch timers on a loaded machine).
//! `delete_tree` is atomic (one transaction), and reported to watch_tree as one change.
//!
//! ## Deviations
//!
//! * Background work per database: one writer thread (`kv-bolt-writer`, which also sweeps
//!   expired keys), not a task of a handle's [`TaskSet`](kv_core::TaskSet) — it belongs to the
//!   database, not to one handle — so
//!   [`Store::background_tasks`](kv_core::Store::background_tasks) does not count it. It ends
//!   when the database closes.
//! * When the last reference to a database goes, the writer finishes its queue and the file
//!   is closed synchronously. `close` arranges for that to happen on the blocking pool; a
//!   handle dropped without `close` may do it on the runtime thread that drops it
//!   (milliseconds).

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
