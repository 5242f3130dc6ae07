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
//! | key `a/b` written with a TTL | same | same | a lease of the TTL rounded up to whole seconds, granted for this write, whose ID (negative, chosen by this crate) carries the key's deadline in the etcd server's Unix milliseconds ([TTLs and clocks](#ttls-and-clocks)) |
//! | a held lock on `l` | `l` | the [lock value](kv_core::LockOptions::value) | the holder's lease of the lock TTL, kept alive while held |
//!
//! No metadata is stored anywhere: the index is etcd's own `mod_revision`, expiry is etcd's
//! own lease (its ID carrying the deadline for when etcd is late). There are no directory
//! keys: `a/b/c` can be written alone, and `a` can hold a value and have children. Keys are
//! stored without a leading `/` (as valkeyrie does). `list` skips stored keys that are not
//! valid keys for this crate (not UTF-8, `//`, `__kv` segments…), so foreign data under the
//! namespace never breaks a listing, and `delete_tree` leaves them alone.
//!
//! ## How the contract is met
//!
//! * **`last_index`** is the key's `mod_revision`: etcd's cluster-wide revision of the key's
//!   last write. It is never 0 and strictly rises on every write of the key, across delete and
//!   re-create, because the revision counter is global. Unrelated writes raise it too: indexes
//!   are not contiguous per key.
//! * **CAS**: `atomic_put(k, v, None)` is `txn(create_revision(k) == 0 → put)`;
//!   `atomic_put(k, v, Some(prev))` is `txn(mod_revision(k) == prev.last_index and the key's
//!   lease is not an expired TTL lease → put)`; `atomic_delete` likewise with a delete. The
//!   failure branch reads the key back in the same transaction to tell
//!   [`KeyNotFound`](kv_core::Error::KeyNotFound) from
//!   [`KeyModified`](kv_core::Error::KeyModified); a key found past its TTL counts as absent
//!   (a create-only write then replaces exactly that version). The returned `last_index` is
//!   the transaction's revision, which is the new `mod_revision`.
//! * **TTL**: every `put`/`atomic_put` with a TTL grants a new lease of the TTL **rounded up
//!   to whole seconds** and writes the key bound to it; etcd deletes the key when the lease
//!   expires (a real delete: watches see it, every reader stops seeing it). A write without
//!   a TTL detaches the key from any lease, making it permanent. The lease of an overwritten
//!   key is not revoked (another client could share it); it expires on its own and then
//!   deletes nothing. [`Capabilities::min_ttl`](kv_core::Capabilities::min_ttl) is etcd's
//!   minimum lease TTL, probed at connection (2 s with default election settings: etcd raises
//!   shorter grants to `1.5 × election timeout`, rounded up).
//!   [`Capabilities::ttl_precision`](kv_core::Capabilities::ttl_precision) is
//!   [`TTL_PRECISION`] (3 s): etcd's own expiry takes up to 1 s of rounding, the leader's
//!   expiry check every 500 ms, and the revocation's trip through Raft (measured on 3.4: a
//!   2 s key is gone after 2.05–2.45 s, a 2.1 s key, rounded to 3 s, after 3.06 s). When etcd
//!   is later than that (after a restart), readers enforce the deadline themselves, in the
//!   server's time, late by at most twice [`CLOCK_TOLERANCE`]: see
//!   [TTLs and clocks](#ttls-and-clocks).
//! * **Watch** / **WatchTree**: the current state is read at revision `R`, then an etcd watch
//!   starts at `R + 1`, so nothing between the read and the watch is missed. A broken stream
//!   is reopened with backoff from the last seen revision + 1. If etcd compacted that
//!   revision, the loop warns (`tracing::warn!`) and resynchronises from a fresh read: the
//!   stream continues with the current state, it does not end. One item per etcd revision.
//! * **List** is a range read over `dir/` (path-aware: never `dirx/…`), ascending by key,
//!   paginated by [`Config::page_size`] with every page read at the first page's revision
//!   (one consistent snapshot).
//! * **DeleteTree** deletes exactly the keys `list(dir)` shows, plus `dir` itself, never a
//!   stored key `list` skips (`dir//x`, `dir/x/`, `__kv` segments, not UTF-8; without a
//!   namespace, `delete_tree("")` leaves `/registry/…`-style keys alone). It reads the range's
//!   keys at a revision `R`, splits them into maximal runs of listed keys, and deletes every
//!   run as a range `[first, last + "\0")`, with `dir`, in **one transaction** guarded by "no
//!   key in the runs' span was created after `R`". When the guard fails, the transaction's
//!   failure branch returns the keys created since, and it tries again. Atomic, except in two
//!   rare cases: more than 127 runs (etcd's default `--max-txn-ops` is 128: several guarded
//!   transactions), and keys created in the tree so fast that the guard fails 5 times in a
//!   row (the keys read so far are then deleted by name, 127 per transaction, which never
//!   touches a key `list` skips but may leave keys created meanwhile). Expired keys that etcd
//!   has not deleted yet are deleted along with the rest (nobody sees them anyway).
//! * **Transactions** ([`Store::transaction`](kv_core::Store::transaction), see
//!   [`kv_core::txn`]) are **one etcd `Txn`**: the conditions are its comparisons, the puts
//!   and deletes its success branch, and its failure branch reads every condition key back
//!   (keys only), so the state that failed a comparison comes back in the same answer, at the
//!   revision the comparisons were evaluated at, and
//!   [`ConditionFailed`](kv_core::Error::ConditionFailed) names the first condition that
//!   fails on exactly that state. The comparisons:
//!
//!   | condition | etcd comparisons |
//!   | --- | --- |
//!   | `Absent` | `create_revision == 0` |
//!   | `Exists` | `create_revision > 0`, and not bound to an expired TTL lease of this crate |
//!   | `IndexEquals(n)` | `mod_revision == n`, and not expired |
//!   | `LockHeld(token)` | `mod_revision == token`, and not expired |
//!
//!   "Not expired" is the lease comparison CAS uses (`lease > bound − 1`, see
//!   [TTLs and clocks](#ttls-and-clocks)). A key past its TTL that etcd has not deleted yet
//!   counts as absent: when the comparisons fail but every condition holds on the state read
//!   back (an `Absent` key that expired), the transaction is sent again with every condition
//!   key pinned to exactly that state (`create_revision == 0` or `mod_revision == r`: a
//!   key's version fixes its lease), up to 4 `Txn`s in all. Everything a transaction writes
//!   gets the one revision of its `Txn`: the returned `last_index` of every put is that
//!   revision, which `get` then reports and CAS compares.
//!
//!   **`LockHeld`**: a lock is its key, created by the acquisition at the fencing token's
//!   revision and bound to the holder's lease. Renewals (lease keep-alives) never touch the
//!   key, so its `mod_revision` stays the token exactly as long as that acquisition holds the
//!   lock; an unlock, a delete, someone else's write, or the end of the lease (etcd deletes
//!   the key in the same step as it revokes an expired lease) changes it, and no contender
//!   can acquire before the key is gone, so a successor always has a higher token. The
//!   comparison runs on the server, so a paused holder that lost its lock cannot write, and
//!   any handle can fence with a token.
//!
//!   Puts honour their [`WriteOptions`](kv_core::WriteOptions) as `put` does: a put without TTL
//!   is written without a lease (detached from any earlier one: permanent), puts with a TTL
//!   get a lease of this crate whose ID carries the deadline, **one per distinct TTL** of the
//!   transaction (keys written together with the same TTL expire together, in one
//!   revision). The stored layout is the same as `put`'s in every respect.
//!
//!   **Isolation**: a `Txn` is applied by etcd in one step at one revision: every reader
//!   (linearizable or serializable reads, `list`, watches, other programs) sees all of its
//!   writes or none. A watch sees one change per transaction (events are grouped by
//!   revision) and `watch_tree` one snapshot holding all of its writes
//!   ([`Capabilities::watch_tree_sees_whole_transactions`](kv_core::Capabilities::watch_tree_sees_whole_transactions)
//!   is `true`: etcd never splits one revision's events over several watch responses unless
//!   asked to fragment, which this crate does not).
//!
//!   **Limits**: at most [`Capabilities::max_transaction_ops`](kv_core::Capabilities::max_transaction_ops)
//!   = 128 conditions plus operations, etcd's default `--max-txn-ops`, which bounds a `Txn`'s
//!   comparisons, success operations and failure operations each (a server started with a
//!   smaller value refuses larger transactions with a backend error). Operations and
//!   read-backs always fit; comparisons (two per condition with a lease check) fit unless
//!   more than 64 conditions need the lease check: such a transaction first reads its
//!   condition keys in one `Txn` (one revision), then commits on that state pinned, one
//!   comparison per key. The whole transaction is one request, bounded by etcd's
//!   `--max-request-bytes` ([`DEFAULT_MAX_REQUEST_BYTES`]): each value is checked against
//!   `max_value_len` as for `put`, and the values of all puts together must fit beside the
//!   keys, else [`InvalidOption`](kv_core::Error::InvalidOption) names the first put that
//!   does not fit and the room left for it, before anything is sent. A guarded put
//!   of a value of `max_value_len` with keys of the longest length fits (with any namespace
//!   shorter than 1.9 KB).
//!   Operations are puts and deletes only (no `delete_tree`, as the contract says).
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
//! * **Watch of a TTL key**: the loop keeps each watched key's lease and arms a timer for when
//!   the server's clock (as estimated, see [TTLs and clocks](#ttls-and-clocks)) certainly
//!   reaches the earliest deadline among them; when it fires, the expired keys are dropped
//!   from the published state and their leases revoked, even while the server is unreachable
//!   (the estimate follows the local monotonic clock in between).
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
//! ## TTLs and clocks
//!
//! etcd enforces TTLs with leases, and etcd 3.4 restores every lease to its **full** TTL when
//! it restarts (lease checkpoints are not persisted before etcd 3.6): on its own, a 10 s key
//! written just before a crash stays visible for the outage plus another 10 s (measured:
//! 15.6–16.1 s; in this crate's restart test a 4 s key stayed 8.1 s, and 4.3 s with the
//! scheme below). So the ID of every lease granted for a TTL write (etcd lets the client
//! choose it) carries the key's deadline:
//!
//! | bits of the lease ID | content |
//! | --- | --- |
//! | 63 | 1: negative. etcd only generates positive IDs, so a lease etcd numbered (other programs', this crate's lock leases) never looks like one of these |
//! | 62 | 0 |
//! | 61–20 | the deadline: the latest the etcd server's clock can read at the write (below) + the TTL, Unix milliseconds |
//! | 19–10 | random (a taken ID is retried with new bits) |
//! | 9–0 | a checksum of bits 10–61 |
//!
//! Every key/value etcd returns carries its lease ID, so every reader — `get`, `exists`,
//! `list`, `watch`, `watch_tree`, CAS, `delete`, lock acquisition — recognises a key past its
//! deadline, treats it as absent and revokes its lease (errors ignored: a lease already gone
//! is fine), after which etcd deletes the key and everybody, other programs included, agrees.
//! Watches arm a timer at the deadline of the keys they hold. Leases without the mark
//! (written by other programs, lock leases, writes made while the server's time was unknown)
//! are never filtered.
//!
//! ### Whose clock: the server's
//!
//! Deadlines are written and judged in the **etcd server's** time, never in the client's:
//! clients' clocks may be off by any amount (a client 30 s ahead must not drop a key written
//! 10 ms ago with a 6 s TTL, nor revoke it for everyone). etcd serves HTTP/1.1 on its client
//! URLs besides gRPC, and Go's HTTP server stamps every answer with its clock in the `Date`
//! header (whole seconds). Each store handle:
//!
//! * sends `GET /version` to the first endpoint that answers (plain or TLS, with the
//!   connection's CA, client certificate and server name; no credentials needed) when it
//!   connects, then every 30 s from a background task, and on demand when its estimate is
//!   missing or getting old. A probe sent at local instant `t0` and answered at `t1` with
//!   `Date: D` proves that at `t1` the server's clock reads within `[D, D + 1 s + (t1 − t0)]`
//!   (1 s resolution, plus the round trip);
//! * keeps that interval anchored on the local **monotonic** clock (the local wall clock is
//!   never read for TTLs, so stepping it changes nothing), advances it with the monotonic
//!   clock, widened for 500 ppm of drift, and intersects it with every new sample (a sample
//!   that disagrees — a stepped server clock, another member — replaces it). Right after
//!   connecting, a few probes timed so that the server's second turns in the middle of the
//!   interval halve it each time, down to about 0.1 s plus the round trip within a few
//!   seconds;
//! * writes each TTL deadline as the **latest** the server's time can be + the TTL (never
//!   earlier than due), and hides a key once the **earliest** the server's time can be has
//!   reached its deadline (never before the server's clock does). So no key is ever hidden
//!   early, whatever the clocks of the clients, and a key is hidden at most the writer's plus
//!   the reader's uncertainty late — each at most [`CLOCK_TOLERANCE`] (1.25 s): a handle whose
//!   uncertainty is wider (no sample yet, round trips over 250 ms, the HTTP side unreachable
//!   for a long time) neither writes deadlines (etcd chooses the lease ID) nor hides keys by
//!   them. [`TTL_PRECISION`] (3 s) covers twice that plus the revocation.
//!
//! **If the HTTP side cannot be reached** (a proxy passing gRPC only, a firewall), the handle
//! logs a warning once and works as if this section did not exist: etcd's own leases still
//! expire every key (within 2 s normally), only the restart case is late again. Keys are
//! never hidden on the strength of an unverified local clock.
//!
//! **Assumptions**: the etcd members' clocks agree with each other well within a second
//! (handles may sample different members; etcd's own lease expiry is the leader's business
//! anyway); the server's clock does not jump (a jump makes readers hide keys early or late by
//! the jump until the next sample, at most 30 s later, notices it); clients' monotonic clocks
//! tick at the right rate within 500 ppm. Nothing is assumed of the clients' wall clocks.
//!
//! ## Limits and deviations
//!
//! * **Values** up to [`Capabilities::max_value_len`](kv_core::Capabilities::max_value_len):
//!   etcd's default `--max-request-bytes` ([`DEFAULT_MAX_REQUEST_BYTES`], 1.5 MiB) minus room
//!   for the key and framing (about 1.52 MiB without namespace). Larger values are
//!   [`Error::ValueTooLarge`](kv_core::Error::ValueTooLarge) before anything is sent.
//! * **Keys** up to 1024 bytes (the workspace limit; etcd itself only bounds the request).
//! * **TTLs** are whole seconds on the server (rounded up) and at least the server's minimum
//!   lease TTL. Keys outliving a server restart are dropped by readers relying on the
//!   server's clock, read over HTTP ([TTLs and clocks](#ttls-and-clocks)); without HTTP
//!   access to the endpoints they stay up to the outage plus a whole TTL after a restart.
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
mod clock;
pub mod config;
mod lease;
mod lock;
mod store;
mod tree;
mod txn;
mod watch;

pub use config::{Config, ConfigBuilder, Credentials, Pem, TlsConfig};
/// The contract this crate implements, re-exported so that depending on this crate alone is
/// enough: `use <this crate>::kv_core::{Store, ReadOptions, WriteOptions};`.
pub use kv_core;
pub use store::{CLOCK_TOLERANCE, DEFAULT_MAX_REQUEST_BYTES, EtcdStore, TTL_PRECISION};
