//! # kv-etcd: the kv-core contract on etcd v3
//!
//! [`EtcdStore`] implements [`kv_core::Store`] on an etcd v3 cluster (tested against etcd
//! 3.4.23, the version Debian 12 ships; everything used exists since etcd 3.4) through the
//! [`etcd-client`](https://docs.rs/etcd-client) crate (tonic gRPC, fully async).
//!
//! ```no_run
//! use kv_core::{ReadOptions, Store, WriteOptions};
//! use kv_etcd::{Config, EtcdStore};
//!
//! # async fn demo() -> kv_core::Result<()> {
//! let store = EtcdStore::connect(Config::from_url("etcd://127.0.0.1:2379/my-app")?).await?;
//! store.put("config/color", "blue".into(), WriteOptions::default()).await?;
//! let pair = store.get("config/color", ReadOptions::default()).await?.unwrap();
//! assert_eq!(pair.value, "blue");
//! store.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Storage layout
//!
//! Nothing but plain etcd keys holding the plain value bytes, so `etcdctl` and every other
//! client (valkeyrie's `etcdv3` store included) read and write the same data:
//!
//! | what | etcd key | etcd value | lease |
//! | --- | --- | --- | --- |
//! | key `a/b` | `a/b` (with a [namespace](Config::namespace) `ns`: `ns/a/b`) | the value, byte for byte | none |
//! | key `a/b` written with a TTL | same | same | a lease of the TTL rounded up to whole seconds, granted for this write |
//! | a held lock on `l` | `l` | the [lock value](kv_core::LockOptions::value) | the holder's lease of the lock TTL, kept alive while held |
//!
//! No metadata is stored anywhere: the index is etcd's own `mod_revision`, expiry is etcd's
//! own lease. There are no directory keys: `a/b/c` can be written alone, and `a` can hold a
//! value and have children. Keys are stored without a leading `/` (as valkeyrie does).
//! `list` skips stored keys that are not valid keys for this crate (not UTF-8, `//`, `__kv`
//! segments…), so foreign data under the namespace never breaks a listing.
//!
//! ## How the contract is met
//!
//! * **`last_index`** is the key's `mod_revision`: etcd's cluster-wide revision of the key's
//!   last write. It is never 0 and strictly rises on every write of the key, across delete and
//!   re-create, because the revision counter is global. Unrelated writes raise it too: indexes
//!   are not contiguous per key.
//! * **CAS**: `atomic_put(k, v, None)` is `txn(create_revision(k) == 0 → put)`;
//!   `atomic_put(k, v, Some(prev))` is `txn(mod_revision(k) == prev.last_index → put)`;
//!   `atomic_delete` likewise with a delete. The failure branch reads the key back in the same
//!   transaction to tell [`KeyNotFound`](kv_core::Error::KeyNotFound) from
//!   [`KeyModified`](kv_core::Error::KeyModified). The returned `last_index` is the
//!   transaction's revision, which is the new `mod_revision`.
//! * **TTL**: every `put`/`atomic_put` with a TTL grants a new lease of the TTL **rounded up
//!   to whole seconds** and writes the key bound to it; etcd deletes the key when the lease
//!   expires (a real delete: watches see it, every reader stops seeing it). A write without
//!   a TTL detaches the key from any lease, making it permanent. The lease of an overwritten
//!   key is not revoked (another client could share it); it expires on its own and then
//!   deletes nothing. [`Capabilities::min_ttl`](kv_core::Capabilities::min_ttl) is etcd's
//!   minimum lease TTL, probed at connection (2 s with default election settings: etcd raises
//!   shorter grants to `1.5 × election timeout`, rounded up).
//!   [`Capabilities::ttl_precision`](kv_core::Capabilities::ttl_precision) is
//!   [`TTL_PRECISION`] (2 s): up to 1 s of rounding, the leader's expiry check every 500 ms,
//!   and the revocation's trip through Raft (measured on 3.4: a 2 s key is gone after
//!   2.05–2.45 s, a 2.1 s key, rounded to 3 s, after 3.06 s).
//! * **Watch** / **WatchTree**: the current state is read at revision `R`, then an etcd watch
//!   starts at `R + 1`, so nothing between the read and the watch is missed. A broken stream
//!   is reopened with backoff from the last seen revision + 1. If etcd compacted that
//!   revision, the loop warns (`tracing::warn!`) and resynchronises from a fresh read: the
//!   stream continues with the current state, it does not end. One item per etcd revision.
//! * **List** is a range read over `dir/` (path-aware: never `dirx/…`), ascending by key,
//!   paginated by [`Config::page_size`] with every page read at the first page's revision
//!   (one consistent snapshot). **DeleteTree** is one transaction deleting `dir` and the
//!   range `dir/…`: atomic.
//! * **Locks** (see [`kv_core::lock`]): the lock's key is created with
//!   `txn(create_revision == 0 → put(value, lease))`; waiters watch the key for its deletion
//!   from the revision of their failed attempt. The fencing token is the put's revision
//!   (= the key's `last_index`). A background task keeps the lease alive through etcd's
//!   keep-alive stream every TTL/3 (a keep-alive answered with TTL 0 means the lease is gone:
//!   lost at once) and watches the key: a deletion or someone else's write fires the lost
//!   signal at once. Unlock deletes the key only if its `mod_revision` is still ours, then
//!   revokes the lease. A holder that dies stops renewing and etcd deletes the key when the
//!   lease expires (lock TTL rounded up to whole seconds).
//! * **Authentication and TLS**: [`Config::credentials`] log in with etcd's user/password
//!   authentication (the token is refreshed automatically when it expires); [`TlsConfig`]
//!   gives the CA, an optional client certificate and key (mutual TLS) and the server name,
//!   inline or as files. Both are exercised against private etcd servers in the tests.
//! * **Consistency**: reads are linearizable; [`ReadOptions::stale`](kv_core::ReadOptions::stale)
//!   makes them serializable (served by any member).
//! * **Timeouts and errors**: every request has [`Config::request_timeout`]
//!   ([`Error::Timeout`](kv_core::Error::Timeout)); unreachable servers are
//!   [`Error::Unavailable`](kv_core::Error::Unavailable), rejected credentials or missing
//!   permissions [`Error::PermissionDenied`](kv_core::Error::PermissionDenied).
//! * **Background tasks**: watch loops and lock holders run on the store's
//!   [`TaskSet`](kv_core::TaskSet); they end when their stream or lock is dropped and when
//!   the store is closed. [`close`](kv_core::Store::close) releases held locks (revoking
//!   their leases) first.
//!
//! ## Limits and deviations
//!
//! * **Values** up to [`Capabilities::max_value_len`](kv_core::Capabilities::max_value_len):
//!   etcd's default `--max-request-bytes` ([`DEFAULT_MAX_REQUEST_BYTES`], 1.5 MiB) minus room
//!   for the key and framing (about 1.52 MiB without namespace). Larger values are
//!   [`Error::ValueTooLarge`](kv_core::Error::ValueTooLarge) before anything is sent.
//! * **Keys** up to 1024 bytes (the workspace limit; etcd itself only bounds the request).
//! * **TTLs** are whole seconds (rounded up) and at least the server's minimum lease TTL.
//! * **Lease per TTL write**: a key rewritten with a TTL many times leaves one lease per write
//!   until each expires (leases are cheap in etcd, but a very long TTL rewritten very often
//!   accumulates them).
//! * **Large listings** are held in memory; each page must fit in
//!   [`Config::max_response_bytes`].
//! * etcd 3.4 lacks the RangeStream RPC behind etcd-client's `get_stream` (etcd 3.7; it
//!   answers `Unimplemented`, checked by a test), hence the `limit`/`more` pagination.
//!   Everything else used (transactions, leases, watches with start revision, progress
//!   requests) exists in 3.4.
//! * The TLS support uses rustls with no system trust store: give the CA.
//!
//! ## Building
//!
//! etcd-client compiles etcd's `.proto` files at build time: it needs `protoc` and the
//! well-known protobuf types (Debian: `protobuf-compiler` **and** `libprotobuf-dev`; the first
//! alone, installed without recommends, fails with `google/protobuf/descriptor.proto: File
//! not found`).

mod client;
pub mod config;
mod lock;
mod store;
mod watch;

pub use config::{Config, ConfigBuilder, Credentials, Pem, TlsConfig};
/// The contract this crate implements, re-exported so that depending on this crate alone is
/// enough: `use <this crate>::kv_core::{Store, ReadOptions, WriteOptions};`.
pub use kv_core;
pub use store::{DEFAULT_MAX_REQUEST_BYTES, EtcdStore, TTL_PRECISION};
