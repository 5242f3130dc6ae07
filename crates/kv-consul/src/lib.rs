//! # kv-consul: the `kv-core` contract on Consul
//!
//! [`ConsulStore`] implements [`kv_core::Store`] on Consul's HTTP API (KV store, blocking
//! queries, sessions, `/v1/txn`) through a small in-house client on `reqwest` (rustls).
//! `consulrs`, the crate the design first named, was judged unfit: 0.1.0 (2021-10) is its
//! only release, on reqwest 0.11 / http 0.2, it `unwrap`s while parsing response headers,
//! fixes made after it were never published, and it has no binding for `/v1/txn`, which
//! every write here needs. The dozen calls this backend makes fit in a small client.
//!
//! ```no_run
//! use kv_consul::{Config, ConsulStore};
//! use kv_core::{Store, WriteOptions};
//!
//! # async fn demo() -> kv_core::Result<()> {
//! let store = ConsulStore::connect(Config::from_url("consul://127.0.0.1:8500/myapp")?).await?;
//! store.put("config/mode", "fast".into(), WriteOptions::default()).await?;
//! let pair = store.get("config/mode", Default::default()).await?.unwrap();
//! assert_eq!(pair.value, "fast");
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## Storage layout
//!
//! * A key `a/b` is the Consul KV key `a/b`, or `<prefix>/a/b` with a configured
//!   [namespace](Config::namespace). Keys go into URL paths percent-encoded (spaces, `?`, `#`, `%`,
//!   non-ASCII).
//! * The value is the entry's value, the plain bytes: `consul kv get a/b` and
//!   `curl …/v1/kv/a/b?raw` print what was written, and values written by other clients are
//!   read as they are.
//! * The entry's `Flags` (a `u64`) are 0 for a key without TTL. A key written with a TTL has
//!   `Flags = 0x4B56 << 48 | deadline`: the tag `0x4B56` ("KV") in bits 48–63 and its
//!   deadline in Unix milliseconds **of the Consul server's clock** (as the writing handle
//!   estimates it, see [TTLs and clocks](#ttls-and-clocks)) in bits 0–46. Bit 47 is a *rewrite marker*: Consul skips a
//!   write that changes nothing (same value, flags and session) without raising
//!   `ModifyIndex`, so such a write toggles it (a key without TTL then has
//!   `Flags = 0x4B56 << 48 | 1 << 47`, deadline bits 0: no deadline). `Flags` without the tag
//!   (written by other clients, e.g. Consul's `api.Lock` flag) mean "no deadline".
//! * A key written with a TTL, and a lock's key, is held (`Session`) by a session of its own,
//!   named `kv-rs ttl <key>` / `kv-rs lock <key>`, with `Behavior=delete`, `LockDelay=0s` and
//!   no health checks, so that Consul deletes the key itself when the session ends.
//! * Nothing else is written: no index keys, no lock queues. (A watch whose index falls may
//!   *read* the key `<dir>/__kv`, which no valid key can be, to learn the store's index: see
//!   [below](#when-the-server-loses-its-state).)
//! * Consul's `/v1/kv` endpoint refuses some keys our key rules allow: a leading or trailing
//!   space in the whole Consul key, and `%XX` sequences that decode to a space or `..`
//!   (e.g. `pct%20x`). `/v1/txn` takes them, so they are written as usual; reads and watches
//!   of such a key use a listing of its nearest parent directory that Consul accepts
//!   (the key itself is stored literally).
//!
//! ## How the contract is met
//!
//! * **`last_index`** is the entry's `ModifyIndex`, a Raft index: never 0, and it rises on
//!   every write of the key, also across delete and re-create. Consul (1.22) silently skips a
//!   write that changes nothing, without raising `ModifyIndex`; such a write toggles the
//!   rewrite marker in `Flags` (above) so that it does raise it.
//! * **A plain `put`** (no TTL) is one `/v1/txn`: `delete`, then `set`. The `delete` detaches
//!   any session holding the key and works on a missing key; the `set` creates a fresh entry,
//!   so `ModifyIndex` rises even when nothing changed (`CreateIndex` and `LockIndex` restart,
//!   this crate reads neither). Only if Consul refuses it does `put` take the general path.
//! * **Other writes** are one `/v1/txn` each: a condition (`check-not-exists` or `check-index`
//!   on the `ModifyIndex` just read), `unlock` of the session holding the key if any (so an
//!   overwritten TTL key or lock key is detached from its session and not deleted by it later),
//!   then `set`, or `lock` with a new session for a TTL. A plain `put` retries when it loses a
//!   race, an `atomic_put` re-reads and reports [`KeyExists`](kv_core::Error::KeyExists),
//!   [`KeyNotFound`](kv_core::Error::KeyNotFound) or [`KeyModified`](kv_core::Error::KeyModified).
//!   `delete`/`atomic_delete` read the key, then `delete-cas` on its `ModifyIndex` (a
//!   `/v1/txn`), so `delete` reports exactly whether it removed a live key.
//! * **TTL**: Consul has no per-key TTL. A TTL write creates a session of TTL
//!   `max(ttl / 2, session_ttl_min)` that holds the key: Consul invalidates a session at twice
//!   its TTL and then deletes the key. Because that can be late (it depends on the agent's
//!   `session_ttl_min`, 10 s by default), every read also filters out an entry whose `Flags`
//!   deadline has passed on the server's clock: readers never see a key after its TTL (within
//!   `ttl_precision`), and conditional writes and lock acquisition treat such an entry as
//!   absent. A write without TTL detaches the session: the key is permanent. Deadlines are
//!   judged on the server's clock, so clients need not agree on the time: see
//!   [TTLs and clocks](#ttls-and-clocks).
//! * **watch / watch_tree**: blocking queries (`?index=N&wait=`, `?recurse` on `dir/` for a
//!   tree); a state is published only when it differs from the last one; a timer at the
//!   earliest visible TTL deadline publishes the expiry on time; an index below the highest
//!   one the query has answered is checked (a server that lost its state ends the watch with
//!   an error, see [below](#when-the-server-loses-its-state); otherwise the index is reset to
//!   0); errors back off (100 ms … 5 s); dropping the stream aborts the task and its
//!   in-flight request.
//! * **Locks**: a session with `Behavior=delete` and
//!   `LockDelay=0s`, acquired with `check-not-exists` + `lock` in one transaction; renewed in the
//!   background every `ttl / 3`; lost when renewal is refused (session gone) or when a blocking
//!   query on the key sees it deleted, rewritten or held by another session; released by
//!   destroying the session, which deletes the key only if that session still holds it.
//!   Fencing token = `ModifyIndex` at acquisition.
//! * **Transactions** ([`Store::transaction`](kv_core::Store::transaction)) are Consul's
//!   own atomic `/v1/txn`: one in the common case (**fast path**, below), else two per
//!   attempt. First a read-only one answered in `consistent`
//!   mode, i.e. from one linearizable state: `get` of every key a condition or a put names
//!   (`check-not-exists` for a key found absent, since a `get` of an absent key fails the
//!   read; Consul's answer lists every failing operation by `OpIndex`, so the next read
//!   knows). The conditions are judged on that one state, expired entries counting as absent
//!   as for every read, with [`Transaction::first_failure`](kv_core::Transaction::first_failure):
//!   a failure is reported as the first failing condition of a state the store really had.
//!   Then the write, one Raft commit: each condition's key pinned to the state it was judged
//!   on (`check-index` on its `ModifyIndex`, or `check-not-exists`), then each operation as
//!   `put`/`delete` write it — a put is `cas` on the index read (and the rewrite marker as
//!   for `put`), or `unlock` of the session holding the key carrying the new value (a TTL key
//!   or a lock's key becomes a plain value), or `lock` with a new `kv-rs ttl <key>` session
//!   for a TTL (after that `unlock` when another session held the key); a delete is `delete`
//!   (a no-op for an absent key). If anything changed since the read, Consul applies nothing
//!   and reports the failing operations; the attempt starts over with a new read (and
//!   usually reports the condition that now fails), for up to the request timeout
//!   ([`Timeout`](kv_core::Error::Timeout) after it). Every key written gets the commit's
//!   Raft index as its `ModifyIndex`, returned as `last_index`.
//!   **Isolation**: a committed transaction's conditions held in exactly the state it was
//!   applied to, and Consul applies a `/v1/txn` in one state-store transaction at one index,
//!   so no reader (`get`, `list`, blocking queries of `watch`/`watch_tree`, other clients)
//!   ever sees part of it; a watched key sees one change per transaction (an `unlock` and a
//!   `lock` of one key in one transaction are one index), and a tree watch's snapshot, one
//!   listing, holds all of a transaction's keys or none
//!   (`watch_tree_sees_whole_transactions = true`). Puts with the same TTL in one
//!   transaction get the same deadline, so they expire in one snapshot too.
//!   **LockHeld** compares the lock key's `ModifyIndex` with the fencing token (the index of
//!   the acquiring `lock`): renewing a session does not touch the key; the key is gone once
//!   the session ends (expiry, release, `Behavior=delete`), and any other write or
//!   acquisition raises its index, so only the acquisition with that token, still holding the
//!   key on the server, passes — from any handle. A lock key past a deadline in its `Flags`
//!   (another program's TTL write that is not removed yet) counts as lost.
//!   **Fast path**: first, one `/v1/txn` of what Consul can check alone — `Absent` as
//!   `check-not-exists`, `IndexEquals`/`LockHeld` as `check-index` only on a key version this
//!   handle has read or written without a deadline in `Flags`, a put folded with its key's
//!   condition into one `cas` (writing `Flags` 0 or the rewrite marker, whichever the entry
//!   does not have, so that the write always happens), other puts without TTL as `delete` +
//!   `set`. `Exists` and TTL puts never go this way. If Consul refuses it, nothing was
//!   written and the two-step attempt above runs and decides.
//! * **Reads**: `ReadOptions::consistent` (the default) is Consul's `?consistent` mode
//!   (linearizable); `ReadOptions::stale()` is `?stale` (any server answers).
//! * **delete_tree** deletes exactly what `list(dir)` shows, plus `dir` itself, never a key
//!   `list` skips (keys other programs wrote that break the key rules: `dir//x`, `dir/x/`,
//!   `__kv` segments, forbidden characters, over 1024 bytes). It reads the names under `dir/`
//!   (`?keys`, consistent), then deletes in one `/v1/txn`: a prefix `p/` under which every
//!   key is listed is one `delete-tree p/` — the whole `dir/` in the common case where
//!   nothing is hidden, any number of keys —, and next to a hidden key each listed key is one
//!   `delete` by name (whether `list` shows a key depends on its name only, so no condition
//!   is needed). Keys past their TTL that Consul has not removed yet (this crate's own
//!   records) are deleted along, as are held locks' keys (their holders see the lock lost).
//!   **Atomic** when that takes at most 64 operations (Consul's fixed limit per
//!   transaction); beyond, several transactions, each atomic, not atomic as a whole. A key
//!   created while `delete_tree` runs (between its read and its transaction) is deleted if it
//!   falls under a `delete-tree` prefix — even one `list` would skip, if another program
//!   writes one just then — and left otherwise.
//! * **list** is `?recurse` on `dir/` (path-aware), filtered: expired entries, keys that are
//!   not valid normalised keys (written raw by other clients, e.g. ending in `/`) and keys with
//!   a reserved `__kv` segment are skipped.
//!
//! ## Capabilities and limits
//!
//! * `max_value_len` = [`MAX_VALUE_LEN`] (378 KiB), not Consul's 512 KiB `kv_max_value_size`:
//!   every write is a transaction, and Consul caps a whole `/v1/txn` body (with the value in
//!   base64) at `txn_max_req_len` = 512 KiB by default. Values up to 512 KiB written by other
//!   clients through `/v1/kv` are read in full.
//! * `min_ttl` 1 s (the deadline filter makes shorter TTLs exact too, but a second is the
//!   useful floor), `max_ttl` 24 h (Consul's session maximum), `ttl_precision` 1.25 s: 250 ms
//!   for round trips and timers, plus 1 s because writer and reader each know the server's
//!   clock only to within half a second (the `Date` header's resolution; see
//!   [TTLs and clocks](#ttls-and-clocks)). Clock skew between clients adds nothing.
//! * `max_transaction_ops` = [`MAX_TRANSACTION_OPS`] (32): Consul takes 64 operations per
//!   `/v1/txn` (fixed), a condition or a delete is one of them, a put one or two (two when
//!   it has a TTL and another session holds the key), so 32 conditions plus operations fit
//!   whatever the keys' state at commit time. A transaction's values travel together in
//!   base64 in one request body, which Consul caps at 512 KiB (`txn_max_req_len`): a
//!   transaction whose body could exceed it (e.g. two values near `max_value_len`) is
//!   [`InvalidOption`](kv_core::Error::InvalidOption) before anything is sent (and so is
//!   Consul's 413, if its limit was set lower). `delete_tree` is not a transaction operation.
//! * `max_key_len` 1024 bytes (Consul has no key length limit of its own).
//! * Every watch, every held lock (its key watch) and every waiting lock keeps one HTTP/1.1
//!   connection busy with a blocking query. Consul accepts `limits.http_max_conns_per_client`
//!   (200 by default) connections per client address: size that limit for more.
//! * Dropping a watch closes its connection at once, but the agent keeps serving the
//!   abandoned blocking query, and counting its connection against that limit, until the
//!   query's wait ends (hashicorp/consul#8524; measured on 1.22.7). Clients on one address
//!   that together drop more than about `http_max_conns_per_client / watch_wait` watches per
//!   second (20/s with the defaults) get HTTP 429 (or a refused request, reported as
//!   [`kv_core::Error::Unavailable`]) until those waits end: lower [`Config::watch_wait`]
//!   (down to 1 s) or raise the limit for such churn.
//! * A plain `put` costs one request; `delete` and a successful `atomic_put` one; other writes
//!   two (a read, then the transaction), a TTL write three (plus the session); reads and
//!   watches one per answer. A transaction costs two (the consistent
//!   read, then the write; conditions only: the read alone), plus one session per put with a
//!   TTL (created concurrently, once, and destroyed if the transaction fails), plus two more
//!   per lost race.
//!
//! ## Deviations
//!
//! * The issue asked for lock sessions with `Behavior=release`. They use `Behavior=delete`:
//!   the contract says a lock never leaves its value behind, also when its holder dies; with
//!   `release` Consul would keep the key (and its value) after the holder's session expired,
//!   blocking the next `lock` forever.
//! * A lock whose TTL is below twice the agent's `session_ttl_min` gets a session of
//!   `session_ttl_min`: a holder that dies then loses the key up to `2 × session_ttl_min`
//!   after its last renewal instead of `ttl` (with the test agent's `session_ttl_min = "1s"`,
//!   every lock TTL ≥ 2 s is exact). The holder itself still considers the lock lost when
//!   renewal has failed for a whole `ttl`.
//! * TTL expiry is decided on the Consul server's clock, estimated to within half a second
//!   (plus half a round trip): a key can vanish for a reader on another handle up to that
//!   much early as well as late, see [TTLs and clocks](#ttls-and-clocks).
//! * Other clients see an expired TTL key until Consul removes it: up to
//!   `2 × max(ttl / 2, session_ttl_min)` after the write. Our readers never do.
//! * Overwriting a TTL key detaches it from its session; that session, now holding nothing,
//!   stays in `/v1/session/list` until its own TTL runs out (it is never renewed).
//! * A client that overwrites a lock's key *without* releasing the session (a raw
//!   `consul kv put`) leaves the key held by the lock's session: the holder's lost signal fires
//!   (the `ModifyIndex` changed), and its release, which destroys the session, deletes that
//!   key. Writes through this crate always detach the session first.
//! * Without a prefix, `list("")`, `watch_tree("")` and `delete_tree("")` span the whole
//!   Consul KV store (keys that are not valid normalised keys are skipped by all three:
//!   `delete_tree("")` leaves them).
//!
//! ## TTLs and clocks
//!
//! A TTL key's deadline is written by one client and judged by others, so both must use the
//! same clock. Clients' wall clocks may be anything (a client 30 s ahead would otherwise see
//! every fresh key as expired, one 30 s behind would see expired keys as live); this crate
//! uses **the clock of the Consul agent it talks to** instead, and never the local wall clock:
//!
//! * Every Consul HTTP response carries a `Date` header, Go's `net/http` stamp of the agent's
//!   clock in whole seconds. A response to a request sent at local instant `t0` and received
//!   at `t1` with `Date: D` bounds `server − local` (local on the **monotonic** clock) to
//!   `[D − t1, D + 1 s − t0]`. Each handle intersects the intervals of all its responses
//!   (allowing 200 ppm of drift between the two clocks; an empty intersection, after a clock
//!   step, restarts from the new sample), and estimates the server's time as local monotonic
//!   time plus the interval's midpoint: off by at most 0.5 s plus half the round trip of one
//!   response, and less once responses have come on both sides of one of the server's second
//!   boundaries (then about the round trip). The estimate is kv-core's
//!   [`ServerClock`](kv_core::clock::ServerClock), shared with kv-dynamodb.
//! * Writers put `server now + ttl` in `Flags`; every reader (`get`, `list`, `delete`'s and
//!   `atomic_delete`'s liveness, `atomic_put`'s "expired counts as absent", lock acquisition,
//!   watches and their expiry timers) compares it with `server now`; timers sleep on the
//!   monotonic clock for `deadline − server now`.
//! * Sessions (TTL keys' removal by Consul, locks' lifetime) are entirely server-side, and
//!   lock renewal runs on the local monotonic clock: locks never depend on client clocks
//!   (lock keys carry no deadline).
//!
//! **Assumptions.** The agents (and servers) of the cluster agree on the time (NTP among
//! servers, as Consul itself expects for session TTLs): a handle that fails over to an agent
//! whose clock differs re-estimates from its answers, and judges deadlines written against
//! another agent's clock. Responses must keep their `Date` header (a proxy that strips it
//! leaves the handle on the local wall clock, with a warning). The error of both estimates
//! together is within `ttl_precision`: a reader on another handle may see a key up to about
//! 1 s (plus round trips) late, or early, right after connecting, much less after a few
//! seconds of traffic; a handle that wrote a key judges it with the same estimate (exact,
//! unless the estimate was refined in between).
//!
//! ## When the server loses its state
//!
//! A Consul server can come back without the state it had: a dev agent (`consul agent -dev`
//! keeps everything in memory) restarted, a cluster rebuilt from scratch, an older snapshot
//! restored. Its Raft indexes then start again low (120 → 24): every key, session and lock
//! of the old history is gone, `last_index` values go backwards, and another client can
//! acquire a lock that a holder still believes it holds, until that holder notices.
//!
//! **Detection.** Each handle keeps the highest index it has seen (`X-Consul-Index`, every
//! entry's `ModifyIndex`, the index each write commits at). On a healthy cluster the KV
//! store's index never decreases and bounds all of these, so the handle declares the state
//! lost when an exact reading of the store's index is below that highest index: a
//! consistent read of an absent key (Consul answers with the store's index), a write that
//! commits at a lower index, a watched key whose own index falls, or — when a listing's index
//! falls, which also happens on a healthy store when Consul reaps the tombstones of deleted
//! keys — a consistent read of the absent key `<dir>/__kv` (if another program wrote that
//! key, or it cannot be read, the fall counts as legitimate). Stale reads (`?stale`) never
//! count: a lagging server may answer them. The first request of the handle that reaches the
//! new server usually notices: a watch's resynchronising read, a waiting lock's read, any
//! `get` of an absent key, any write. Indexes are all there is to go by: if the new server's index has
//! already passed the highest one the handle saw when the handle reaches it (a busy new
//! cluster, a long outage), nothing reveals the loss, except that the handle's locks find
//! their sessions and keys gone (their renewal and key watch mark them lost, as always).
//!
//! **What happens then**, at once and for the whole handle:
//!
//! * every watch and tree watch opened before ends with an `Err` item
//!   ([`kv_core::Error::Backend`], whose message says that the server lost its state and its
//!   index went backwards from N to M): a watch never carries on with states of another
//!   history. Watch again to follow the new one.
//! * every lock held through the handle is marked lost: its
//!   [`LockLease::lost`](kv_core::LockLease::lost) completes with `LockState::Lost` (its
//!   session and key are gone with the old state anyway), and `unlock` reports
//!   [`LockLost`](kv_core::Error::LockLost).
//! * [`ConsulStore::state_losses`] counts it. Everything else goes on: reads, writes, new
//!   watches and new locks work on the new history; locks that were *waiting* go on waiting
//!   and may be acquired in it.
//!
//! **Fencing tokens restart low.** A fencing token is the lock key's `ModifyIndex`, so an
//! acquisition on the new history gets a token lower than tokens handed out before the
//! loss (the new agent's index is low), and `last_index` values are not comparable across
//! the loss either. A resource protected by fencing tokens must treat a store that lost its
//! state as a **new epoch** (e.g. fence on an epoch number its operator raises, then the
//! token): comparing tokens across the loss, it refuses every new holder as stale, and if it
//! simply took the lower tokens, an old holder's higher token would then win. Nothing in
//! Consul survives such a loss, so no client-side scheme can keep tokens rising for every
//! client; detection is per handle (a handle created after the loss knows nothing of it),
//! which is why only this handle's watches and locks are ended. Between the loss and the
//! moment the old holder notices, two clients can believe they hold the same lock. The holder
//! notices at the first answer of the new server that reveals the loss: a watch's
//! resynchronising read (within the watches' 5 s back-off once the server answers again),
//! any read of an absent key or any write through the handle, or else the lock's own renewal
//! (every TTL / 3), which finds its session gone. Run Consul servers with persistent data
//! (not `-dev`) wherever locks matter.

mod client;
mod config;
mod lock;
mod store;
mod tree;
mod txn;
mod watch;

pub use config::{Config, ConfigBuilder, TlsConfig};
/// The contract this crate implements, re-exported so that depending on this crate alone is
/// enough: `use <this crate>::kv_core::{Store, ReadOptions, WriteOptions};`.
pub use kv_core;
pub use store::{ConsulStore, MAX_VALUE_LEN};
pub use txn::MAX_TRANSACTION_OPS;
