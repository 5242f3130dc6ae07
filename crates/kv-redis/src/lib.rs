//! # kv-redis: the `kv-core` contract on Redis
//!
//! A [`kv_core::Store`] backed by Redis (6.0 or later for `SCAN … TYPE`; tested on 7.0.15)
//! through the [`fred`](https://docs.rs/fred) 10 client: plain values at plain keys,
//! compare-and-swap through a version kept beside the value and updated by Lua, watches
//! through keyspace notifications, locks with a random owner token and a rising fencing
//! token. One server or a Sentinel-managed primary; password/ACL user and TLS (private CA,
//! client certificates) are supported (see [`Config`]).
//!
//! A [`RedisStore`] holds two connections: one for commands and, from the first watch or
//! lock wait on, one subscriber connection for keyspace notifications. Clones of a
//! `RedisStore` share them (and `close` closes them for every clone).
//!
//! ```no_run
//! use kv_core::{ReadOptions, Store, WriteOptions};
//! use kv_redis::{Config, RedisStore};
//!
//! # async fn demo() -> kv_core::Result<()> {
//! let store = RedisStore::connect(Config::from_url("redis://127.0.0.1:6379/0?namespace=app")?).await?;
//! store.put("a/b", "hello".into(), WriteOptions::default()).await?;
//! let pair = store.get("a/b", ReadOptions::default()).await?.unwrap();
//! store.atomic_put("a/b", "world".into(), Some(&pair), WriteOptions::default()).await?;
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## Storage layout
//!
//! For a store key `k` (normalised, e.g. `a/b`) and the namespace prefix `p` (empty, or ending
//! with `/`, e.g. `app/`):
//!
//! | Redis key | type | content |
//! | --- | --- | --- |
//! | `p` + `k` (`app/a/b`) | string | **the value, exactly the bytes written** — `redis-cli GET app/a/b` prints it, any client reads it |
//! | `p` + `__kv:meta:{` + `p` + `k` + `}` (`app/__kv:meta:{app/a/b}`) | hash | `v`: the key's `last_index` (decimal); while a lock holds the key also `o`, the owner token, and `h`, the SHA-1 of the lock value |
//!
//! * Both keys always carry the same TTL (`PX` on the value, `PEXPIRE` on the hash, in the
//!   same script) and are deleted together.
//! * The metadata lives **beside** the value, never around it: valkeyrie's JSON envelope
//!   breaks other clients, its raw codec breaks CAS; this layout does neither.
//! * `__kv` segments are reserved by `kv-core`, so no user key collides with a metadata key,
//!   and listings skip them (`SCAN … TYPE string` plus a key-rule check).
//! * The `{…}` hash tag makes Redis Cluster hash the metadata key by the full value key, so
//!   both land in one slot and every script stays single-slot. A key containing `{` or `}`
//!   would break that (Redis hashes only the first `{…}` of a name): its metadata key is
//!   `p` + `__kv:meta-slot:{` + *alias* + `}` + `p` + `k`, where *alias* is a short base-36
//!   string hashing to the value key's slot (a unit test checks every case). A namespace
//!   prefix may carry a closed tag (`app{1}/` puts the whole namespace in one slot) but not
//!   an unclosed `{`.
//! * A value written by another client (no metadata) reads with `last_index` 1; a later write
//!   through this crate gives it a real index. Writes by other clients do not bump the index,
//!   so CAS cannot detect them (except creation and deletion): write through this crate
//!   when you rely on CAS.
//! * The lock value's SHA-1 (`h`) lets the holder notice a plain `SET` by another client over
//!   a held lock as a takeover.
//! * With no namespace prefix the store *is* the database: `list("")` shows every string key
//!   that is a valid store key and `delete_tree("")` deletes them. Give each application its
//!   own prefix (or database) when sharing a server.
//!
//! ## How the contract is met
//!
//! * **Writes**: every write (`put`, `atomic_put`, `atomic_delete`, `delete`, lock acquire,
//!   renew, release) is one Lua script (`EVALSHA`, reloaded on `NOSCRIPT`) touching the value
//!   and its metadata atomically.
//! * **`last_index`**: `max(previous + 1, server TIME in µs)`. Within a key's life it rises by
//!   at least 1 per write; after a delete (which removes the metadata) a re-created key starts
//!   at the server clock, above every earlier index because an index never runs ahead of the
//!   clock by more than a few writes per µs — and a delete that would leave it ahead waits
//!   (≤ 2 ms, in practice never) for the clock to pass it. This relies on the primary's clock
//!   not stepping back between a delete and the re-create (NTP slews, it does not step).
//! * **CAS**: the scripts compare the stored index with the caller's and answer
//!   `KeyExists`/`KeyNotFound`/`KeyModified` without writing anything.
//! * **TTL**: `SET … PX` and `PEXPIRE` with millisecond precision. Redis checks expiry on
//!   every access, so readers never see an expired key; a `put` without TTL is a plain `SET`
//!   (clears the TTL) and a fresh metadata hash (no TTL).
//! * **list / delete_tree**: `SCAN MATCH <escaped prefix>* TYPE string` (never `KEYS`),
//!   de-duplicated (SCAN may repeat keys), filtered path-aware, values read in concurrent
//!   batches of [`store::BATCH`], sorted.
//!   Neither is a snapshot: a key written during the scan may or may not appear. `delete_tree`
//!   deletes key by key (value + metadata each atomically); **it is not atomic as a whole**
//!   (Redis has no range delete): a concurrent writer can leave a key created during the call.
//! * **watch / watch_tree**: keyspace notifications (`SUBSCRIBE __keyspace@<db>__:<key>`,
//!   `PSUBSCRIBE __keyspace@<db>__:<prefix>*`) on one subscriber connection per handle; each
//!   event triggers a re-read (notifications carry no value); the current state is read after
//!   subscribing, so nothing is missed. After a reconnection the loop re-subscribes and
//!   re-reads everything (notifications are lost while disconnected). A key with a TTL arms a
//!   timer for its deadline. The server must publish `K` with `g`, `$` and `x` (or `A`):
//!   `watch` checks `CONFIG GET notify-keyspace-events` and fails with [`kv_core::Error::Config`]
//!   naming the setting if they are missing; this crate never calls `CONFIG SET` (managed Redis
//!   forbids it), and a server that refuses `CONFIG GET` is trusted.
//! * **Locks**: acquiring = the lock-acquire script, `SET NX` semantics: only when the key is
//!   absent, it writes the lock value at the key (so `get` shows it) and a random 128-bit owner
//!   token in the metadata, both with `PX ttl`. Waiters wake on the key's keyspace events and
//!   poll every [`Config::lock_poll_interval`] as a safety net. Renewal (every `ttl/3`,
//!   `kv_core::lock::keep_alive`) is a token-checked `PEXPIRE` of both keys; release is a
//!   token-checked `DEL`; "ours" means our owner token in the metadata *and* the value still
//!   hashing to the lock value's SHA-1. Any event on a held key triggers an ownership check,
//!   so a deletion or overwrite by anyone (this crate or a plain `SET`) marks the lease lost
//!   at once (measured: ~1 ms) instead of at the next renewal. The fencing token is the key's
//!   `last_index` after acquisition. Without notifications, locks still work by polling.
//! * **Tasks**: watch loops and lock renewals run on the handle's `TaskSet`; dropping a stream
//!   or a lock ends them; `close()` releases locks, ends watches with `Closed`, then
//!   disconnects both connections.
//! * **Timeouts**: every call is bounded by [`Config::request_timeout`] as a whole
//!   (→ [`kv_core::Error::Timeout`]): `list`, `delete_tree` and a `watch_tree` resync too,
//!   all their SCAN pages and batched reads or deletes together (raise the timeout for trees
//!   of hundreds of thousands of keys). fred reconnects in the background with exponential
//!   backoff, but never makes a call wait longer. A command in flight when the connection
//!   breaks is never re-sent (it may have been applied: a re-sent CAS would report a conflict
//!   for its own write); the call fails with [`kv_core::Error::Unavailable`] instead.
//!
//! ## Capabilities and limits
//!
//! * `max_value_len`: [`Config::max_value_len`], default and maximum 512 MiB — Redis' own
//!   `proto-max-bulk-len` default. Measured once on a private 7.0.15 server: a 512 MiB value
//!   is written in 8.4 s and read in 8.2 s (debug build, loopback) with a server memory peak
//!   of 1.9 GB (the request buffer, the Lua argument and the stored value); 100 MiB takes
//!   ~1 s for put + get. The whole value travels in one request and is held in memory on both
//!   sides: raise [`Config::request_timeout`] (default 10 s) for values of hundreds of MiB,
//!   and lower `max_value_len` if the server's `proto-max-bulk-len` is lower.
//! * `max_key_len`: 1024 bytes (kv-core's limit; Redis allows far longer keys).
//! * `min_ttl`: 100 ms ([`store::MIN_TTL`]); `ttl_precision`: 100 ms ([`store::TTL_PRECISION`]).
//! * `ReadOptions::consistent` is ignored: every read goes to the primary.
//!
//! ## Deviations and what Redis cannot do
//!
//! * `delete_tree` is not atomic (see above); `list` is not a point-in-time snapshot.
//! * Watches need keyspace notifications enabled on the server.
//! * Redis Cluster: the layout and scripts are slot-safe (hash tags), but this crate connects
//!   to one server or a Sentinel-managed primary only; Cluster would also need a `SCAN` and a
//!   notification subscription on every primary (notifications are node-local). Not offered
//!   yet.
//! * While the server is unreachable, calls fail with [`kv_core::Error::Unavailable`] (at once
//!   when fred already knows the connection is down, after [`Config::request_timeout`] as
//!   [`kv_core::Error::Timeout`] when it does not yet — `list` and `delete_tree` included);
//!   fred keeps reconnecting in the background and later calls succeed again.
//! * Redis replication is asynchronous: after a Sentinel failover, the last acknowledged writes
//!   (and locks) may be lost. Redis gives no stronger guarantee.

pub mod config;
mod lock;
mod scripts;
pub mod store;
mod watch;

pub use config::{Config, ConfigBuilder, REDIS_MAX_VALUE_LEN, TlsConfig, Topology};
/// The contract this crate implements, re-exported so that depending on this crate alone is
/// enough: `use <this crate>::kv_core::{Store, ReadOptions, WriteOptions};`.
pub use kv_core;
pub use store::RedisStore;
