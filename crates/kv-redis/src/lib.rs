//! # kv-redis: the `kv-core` contract on Redis
//!
//! A [`kv_core::Store`] backed by Redis (6.0 or later for `SCAN … TYPE`; tested on 7.0.15)
//! through the [`fred`](https://docs.rs/fred) 10 client: plain values at plain keys,
//! compare-and-swap through a version kept beside the value and updated by Lua, watches
//! through keyspace notifications, locks with a random owner token and a rising fencing
//! token. One server, a Sentinel-managed primary or a Redis Cluster
//! ([`Topology`]); password/ACL user and TLS (private CA, client certificates) are supported
//! (see [`Config`]), and optionally every write waits for replicas
//! ([`Config::wait_for_replicas`], see [Replication and failover](#replication-and-failover)).
//!
//! A [`RedisStore`] holds two connections: one for commands and, from the first watch or
//! lock wait on, one subscriber connection for keyspace notifications (on a cluster: a
//! command connection per node, as fred keeps them, and one subscriber connection per
//! primary). Clones of a `RedisStore` share them (and `close` closes them for every clone).
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
//! | `p` + `__kv:meta:{` + `p` + `k` + `}` (`app/__kv:meta:{app/a/b}`) | string | the metadata record `<index> <sha1>` or `<index> <sha1> <owner>`: the key's `last_index` (decimal), the SHA-1 (40 hex digits) of the value that index belongs to, and while a lock holds the key the owner token (32 hex digits), separated by single spaces |
//!
//! * Both keys always carry the same TTL (`PX` on both, in the same script) and are deleted
//!   together.
//! * The record is one string so that one `MGET` reads a value and its metadata (see
//!   [How the contract is met](#how-the-contract-is-met)). Development builds before
//!   2026-11-27 kept the same three fields in a hash (`v`, `h`, `o`) at the same name: every
//!   script still reads that form, and the next write of the key replaces it with the string.
//!   Their data needs no migration step, but those builds cannot read the string form:
//!   upgrade every client of a namespace together.
//! * The metadata lives **beside** the value, never around it: valkeyrie's JSON envelope
//!   breaks other clients, its raw codec breaks CAS; this layout does neither.
//! * `__kv` segments are reserved by `kv-core`, so no user key collides with a metadata key,
//!   and listings never show one (their names break the key rules, and a directory's `SCAN`
//!   pattern does not match them).
//! * The `{…}` hash tag makes Redis Cluster hash the metadata key by the full value key, so
//!   both land in one slot and every script stays single-slot. A key containing `{` or `}`
//!   would break that (Redis hashes only the first `{…}` of a name): its metadata key is
//!   `p` + `__kv:meta-slot:{` + *alias* + `}` + `p` + `k`, where *alias* is a short base-36
//!   string hashing to the value key's slot (a unit test checks every case). A namespace
//!   prefix may carry a closed tag (`app{1}/` puts the whole namespace in one slot) but not
//!   an unclosed `{`.
//! * The value's SHA-1 (`h`) ties the metadata to one incarnation of the value: see
//!   [Other programs writing the same keys](#other-programs-writing-the-same-keys).
//! * With no namespace prefix the store *is* the database: `list("")` shows every string key
//!   that is a valid store key and `delete_tree("")` deletes them. Give each application its
//!   own prefix (or database) when sharing a server.
//!
//! ## Other programs writing the same keys
//!
//! The value keys are plain Redis strings, so other programs (any client, `redis-cli`) may
//! read them and also write them: `SET` (with or without a TTL), `DEL`, `EXPIRE`/`PERSIST`,
//! `APPEND`, a key expiring on its own. They must leave the `__kv` metadata keys alone. The
//! metadata cannot follow such writes (a plain `DEL` even leaves it behind), so the value key
//! is the truth and the metadata counts only while it matches the value:
//!
//! * **Reads** (`get`, `list`, watches) always return the value key's current bytes and TTL.
//! * **A foreign write voids the version.** The metadata records the SHA-1 of the value its
//!   index belongs to, and every script compares it with the value now at the key. When they
//!   differ, another program replaced the value (overwrote it, or deleted and re-created it
//!   while the metadata stayed behind): a CAS (`atomic_put`, `atomic_delete`) with a pair read
//!   before fails with [`kv_core::Error::KeyModified`] and writes nothing, and the next read
//!   adopts the value — gives it a fresh `last_index`, above every index the key had, in new
//!   metadata with the value's TTL — so watchers see the index rise and a CAS with the pair
//!   read then succeeds. (A read may thus write the metadata record of a foreign value.)
//! * **A value no write of this crate ever touched** (no metadata) reads with `last_index` 1;
//!   nothing ties that index to one value, so a CAS with index 1 holds only while the value is
//!   still byte for byte the previous pair's value. The first write through this crate gives
//!   the key a real index. Reads do not create metadata for such values.
//! * **Locks**: any foreign write of a held lock's key (delete, overwrite) marks the lease
//!   lost at once (see below); an unlock never deletes a value that is not the holder's.
//! * **Limits**: a foreign write that puts back exactly the bytes the metadata records (an
//!   A→B→A sequence nobody read in between) is indistinguishable from no write. Metadata left
//!   behind by a foreign `DEL` holds nothing visible and is removed by the next write or delete
//!   of that key through this crate, or with its TTL if the value had one; `delete_tree` does
//!   not look for it. Metadata written by earlier versions of this crate without a digest
//!   counts as void: such keys are adopted with a fresh index on their first read. So does a
//!   metadata name that another program overwrote with anything that is not a record (a
//!   string that does not parse, a list, …); the next write replaces it.
//! * **What is a store key**: a *string* key inside the namespace whose rest is a valid,
//!   normalised key (`kv_core::key::normalize_key(k) == Ok(k)`). Anything else other programs
//!   put there — names like `a//b`, `a/`, `/a`, `a/./b`, `a/__kvx`, control characters, more
//!   than 1024 bytes; keys of other types (hashes, lists, …) — is invisible, the same way for
//!   every call: `get`/`exists` report it absent, `list` and `watch_tree` skip it (and their
//!   snapshots do not change for it), `delete` and `delete_tree` leave it alone (also when it
//!   sits at the directory key itself). `put` over a key of another type replaces it (Redis
//!   `SET`); a create-only `atomic_put` or a lock finds the name taken.
//! * **TTL changes** by another program (`EXPIRE`, `PERSIST`) reach the value only. The index
//!   stays; but if the metadata then expires before the value, the value counts as never
//!   written through this crate (index 1) until its next write here.
//!
//! ## How the contract is met
//!
//! * **Writes**: every write (`put`, `atomic_put`, `atomic_delete`, `delete`, lock acquire,
//!   renew, release, `transaction`) is one Lua script (`EVALSHA`, reloaded on `NOSCRIPT`)
//!   touching the value and its metadata atomically — a transaction's script every key's pair
//!   (see [Transactions](#transactions)).
//! * **Reads**: `get` sends one `MGET <value key> <meta key>` (no script). The pair is
//!   consistent without `MULTI`: when the SHA-1 of the value read equals the record's, the
//!   index belonged to those very bytes when the record was read (a write in between changes
//!   the digest). A key of another type reads as absent (`MGET` answers nil for it).
//!   Anything else — no record, a mismatch (a racing write, or a value another program
//!   replaced), the older hash form — is answered by the read script, which reads atomically and
//!   adopts foreign values. `list` reads its keys the same way, many per `MGET` (one key per
//!   `MGET` on a cluster, where one command may not span slots); the watches read with the
//!   script (they also need the TTL). A `put` stays a script: its index,
//!   `max(previous + 1, server µs)`, must be computed from the previous one atomically with
//!   the write, which plain commands (or `MULTI`) cannot do in one round trip.
//! * **`last_index`**: `max(previous + 1, server TIME in µs)`. Within a key's life it rises by
//!   at least 1 per write; after a delete (which removes the metadata) a re-created key starts
//!   at the server clock, above every earlier index because an index never runs ahead of the
//!   clock by more than a few writes per µs — and a delete that would leave it ahead waits
//!   (≤ 2 ms, in practice never) for the clock to pass it. The same holds across a server
//!   restart without persistence (every key and its metadata gone): indexes, fencing tokens
//!   included, restart from the server clock, above everything handed out before (tested).
//!   This relies on the primary's clock not stepping back between a delete (or restart) and
//!   the re-create (NTP slews, it does not step), and after a failover on the new primary's
//!   clock not being behind the old one's.
//! * **CAS**: the scripts compare the caller's index with the key's current one (the
//!   metadata's while its SHA-1 matches the value, see
//!   [above](#other-programs-writing-the-same-keys)) and answer
//!   `KeyExists`/`KeyNotFound`/`KeyModified` without writing anything.
//! * **TTL**: `SET … PX` and `PEXPIRE` with millisecond precision. Redis checks expiry on
//!   every access, so readers never see an expired key; a `put` without TTL is a plain `SET`
//!   (clears the TTL) and a fresh metadata record (no TTL).
//! * **list / delete_tree**: `SCAN MATCH <escaped prefix>* TYPE string` (never `KEYS`),
//!   de-duplicated (SCAN may repeat keys), filtered path-aware and by the key rules (the same
//!   filter as `watch_tree`'s events), values read in concurrent batches of [`store::BATCH`],
//!   sorted.
//!   Neither is a snapshot: a key written during the scan may or may not appear. `delete_tree`
//!   deletes key by key (value + metadata each atomically); **it is not atomic as a whole**
//!   (Redis has no range delete): a concurrent writer can leave a key created during the call.
//! * **watch / watch_tree**: keyspace notifications (`SUBSCRIBE __keyspace@<db>__:<key>`,
//!   `PSUBSCRIBE __keyspace@<db>__:<prefix>*`) on one subscriber connection per handle; each
//!   event triggers a re-read (notifications carry no value); the current state is read after
//!   subscribing, so nothing is missed. After a reconnection the loop re-subscribes and
//!   re-reads everything (notifications are lost while disconnected). A key with a TTL arms a
//!   timer for its deadline. On a Redis Cluster notifications are published only by the node
//!   holding the key: see [Redis Cluster](#redis-cluster). The server must publish `K` with `g`, `$` and `x` (or `A`):
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
//!   at once (measured: ~1 ms) instead of at the next renewal. Every reconnection of the
//!   handle's command or subscriber connection (fred's reconnect events) makes every held
//!   lock renew at once: a server restarted without persistence has forgotten the lock, a
//!   contender can take it right away, and no keyspace event says so — the holder's lease is
//!   marked lost as soon as its connection is back (measured: 20–170 ms after the restarted
//!   server accepts connections, depending on where fred's reconnection back-off stands;
//!   otherwise up to `ttl/3` later, at the next renewal), and waiters retry at once. The fencing token is the key's `last_index` after acquisition. Without
//!   notifications, locks still work by polling.
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
//! ## Transactions
//!
//! [`Store::transaction`](kv_core::Store::transaction) (contract: [`kv_core::txn`]) is **one
//! Lua script** (`EVALSHA`), Redis' native atomic unit: the server runs a script to the end
//! without running any other command in between, so every reader — `get`, `list`, watches,
//! other clients — sees the state before the transaction or after it, never a part of it
//! (serializable isolation: Redis executes commands one at a time).
//!
//! * **Keys**: the script gets every distinct key of the transaction as its value key and
//!   metadata key (`KEYS`), the conditions and operations as arguments.
//! * **Conditions first**: the script reads each condition key's current index exactly as
//!   `get` reports it (the metadata's `v` while its SHA-1 matches the value; `1` for a value
//!   never written through this crate; absent for a missing, expired or non-string key; a
//!   value another program replaced counts with the fresh index `get` would give it, which no
//!   caller holds). If any condition fails it writes nothing and answers with every condition
//!   key's index; [`kv_core::Transaction::first_failure`] then turns those commit-time states
//!   into the [`kv_core::Error::ConditionFailed`] of the first failing condition, with the
//!   reason every backend gives. (Should the script refuse while its states satisfy every
//!   condition — impossible, both compare the same decimal strings — the call reports
//!   `KeyModified` on the first condition rather than success.)
//! * **`LockHeld`**: the lock key's index, read the same way, must equal the fencing token.
//!   A lock's index is set when it is acquired and renewals only extend the TTL, so the token
//!   matches for as long as that acquisition holds the key; a lock deleted, expired (Redis
//!   treats a key past its TTL as absent inside scripts even before it is reclaimed),
//!   overwritten or re-acquired (a new, higher index) fails with `LockLost` — checked on the
//!   server, whatever the holder's lease has noticed so far.
//! * **Operations**: each put is the `put` script's write (`SET` with or without `PX`, fresh
//!   metadata `v`/`h` with the same TTL: the layout above, so every call treats the key like a
//!   put's, and a put without TTL makes it permanent), each delete the `delete` script's. Every
//!   key written gets one new `last_index` (`max(previous + 1, server µs)`), returned for
//!   every put in operation order.
//! * **Limit**: [`store::MAX_TRANSACTION_OPS`] = 128 conditions plus operations (Redis has no
//!   limit of its own; the script blocks the server while it runs, values are hashed inside
//!   it). Larger transactions, duplicate keys, bad keys, values or TTLs are refused before
//!   anything is sent; an empty transaction sends nothing.
//! * **Watches**: `watch` on a key sees one change per transaction (the script writes the key
//!   once). `watch_tree` may report a transaction's keys in **two snapshots**
//!   (`watch_tree_sees_whole_transactions` is `false`): keyspace notifications name one key
//!   each, the loop re-reads the keys it has been told about so far, and a resynchronising
//!   `list` reads key by key, so a snapshot can hold one key's new value beside another's old
//!   one. The next snapshot always has both.
//! * **Redis Cluster** runs a script on one hash slot only
//!   (`Capabilities::transaction_keys_share_a_shard` is `true` there). Keys are co-located
//!   with hash tags: a namespace prefix with a tag (`app{1}/`) puts the whole namespace in one
//!   slot; without one, keys sharing their first `{…}` section (`orders/{42}/total`,
//!   `orders/{42}/lines`) share a slot (metadata keys always follow their value key's slot).
//!   A transaction whose keys span slots is refused with [`kv_core::Error::InvalidOption`]
//!   before anything is sent; [`RedisStore::transaction_slot`] computes the slot, or that
//!   error, without sending anything.
//! * `delete_tree` is not an operation (see [`kv_core::txn`]).
//!
//! ## Capabilities and limits
//!
//! * `max_value_len`: [`Config::max_value_len`], default and maximum 512 MiB — Redis' own
//!   `proto-max-bulk-len` default. Measured once on a private 7.0.15 server: a 512 MiB value
//!   is written in 8.4 s and read in 8.2 s (debug build, loopback) with a server memory peak
//!   of 1.9 GB (the request buffer, the Lua argument and the stored value); 100 MiB takes
//!   ~1 s for put + get. Since the metadata records the value's SHA-1, every write, read and
//!   CAS also hashes the value inside its script: ~0.25 s of server time per 100 MiB (during
//!   which, as during any script, the server serves nobody else), so 100 MiB now takes
//!   ~1.7 s for put + get, and 512 MiB some 2.5 s more than measured above. The whole value
//!   travels in one request and is held in memory on both sides: raise
//!   [`Config::request_timeout`] (default 10 s) for values of hundreds of MiB, and lower
//!   `max_value_len` if the server's `proto-max-bulk-len` is lower.
//! * `max_key_len`: 1024 bytes (kv-core's limit; Redis allows far longer keys).
//! * `min_ttl`: 100 ms ([`store::MIN_TTL`]); `ttl_precision`: 100 ms ([`store::TTL_PRECISION`]).
//! * `ReadOptions::consistent` is ignored: every read goes to the primary.
//! * Transactions: up to [`store::MAX_TRANSACTION_OPS`] (128) conditions plus operations;
//!   `watch_tree_sees_whole_transactions`: `false` (see [Transactions](#transactions)).
//!
//! ## Deviations and what Redis cannot do
//!
//! * `delete_tree` is not atomic (see above); `list` is not a point-in-time snapshot.
//! * Watches need keyspace notifications enabled on the server.
//! * Redis Cluster: a transaction's keys must share one hash slot (see
//!   [Transactions](#transactions)); a `list` or `delete_tree` that runs while slots move
//!   between nodes may miss or repeat keys (one `SCAN` per primary).
//! * While the server is unreachable, calls fail with [`kv_core::Error::Unavailable`] (at once
//!   when fred already knows the connection is down, after [`Config::request_timeout`] as
//!   [`kv_core::Error::Timeout`] when it does not yet — `list` and `delete_tree` included);
//!   fred keeps reconnecting in the background and later calls succeed again.
//! * Redis replication is asynchronous: after a failover the last acknowledged writes (and
//!   locks) may be lost unless [`Config::wait_for_replicas`] is set; see
//!   [Replication and failover](#replication-and-failover).
//!
//! ## Redis Cluster
//!
//! [`Topology::Cluster`] (`redis+cluster://h1:p1,h2:p2/`, `rediss+cluster://` for TLS): the
//! endpoints are seeds; fred discovers every node from the first that answers and follows
//! slot moves (`MOVED`/`ASK`) and failovers. Every script names a value key and its metadata
//! key, which share a slot (see [Storage layout](#storage-layout)), so every call but a
//! multi-slot transaction runs unchanged.
//!
//! * **list / delete_tree** `SCAN` every primary (fred's `scan_cluster_buffered`) and read or
//!   delete the keys through the slot's primary.
//! * **Watches and lock waits**: keyspace notifications are published only by the node that
//!   holds the key, so a handle keeps one subscriber connection per primary and every
//!   subscription on all of them. A task follows the cluster's layout (fred's cluster-change
//!   events, and `CLUSTER SLOTS` every 500 ms, because a replica promoted after its primary
//!   died changes nothing our commands would notice): on a new primary it connects and
//!   subscribes everything, a node that is no longer a primary is dropped, and then every
//!   watch re-reads its key or re-lists its tree and every held lock renews at once —
//!   events may have been missed across the change, and a failover may even have lost
//!   writes (see below), so a watch delivers the state after the change rather than trust
//!   what it saw before. While a slot has no primary, reads fail with a transient error and
//!   the watch retries with back-off. Measured on the 3-primary test cluster
//!   (`cluster-node-timeout` 1 s): after SIGKILL of a primary, writes to its slots succeed
//!   again on the same handle after ~3.4 s and `watch`/`watch_tree` deliver the final state
//!   right after (`tests/cluster_failover.rs`).
//! * A cluster has database 0 only.
//!
//! ## Replication and failover
//!
//! A Redis primary acknowledges a write before any replica has it. If it dies before they
//! copy it, the replica Sentinel or the cluster promotes does not have it: the write, CAS,
//! delete or lock acquisition is gone although it was acknowledged (measured in
//! `tests/sentinel_wait.rs`: replicas frozen, write acknowledged, primary killed — the key is
//! missing after the failover, every run).
//!
//! [`Config::wait_for_replicas`] (`?wait_replicas=N&wait_timeout_ms=T`) sends `WAIT N T`
//! after every script that writes — `put`, `atomic_put`, `atomic_delete`, `delete`,
//! `delete_tree`'s deletes, `transaction`, lock acquisition and renewal — on the connection
//! (the primary) that ran it. The call succeeds only when `N` replicas confirmed it; fewer
//! within `T` is [`kv_core::Error::Timeout`]: the write took effect on the primary and may or
//! may not survive a failover (a reconnection between the script and the `WAIT` counts as a
//! failure too: `WAIT` on a fresh connection confirms nothing). A refused CAS waits as well
//! (it wrote nothing; the wait is then immediate). Cost: one more round trip per write, and
//! the connection serves no other command while the server blocks it in `WAIT` (fred and
//! Redis both serialise behind it), so write throughput drops to about one write per
//! replica round trip per connection. Tested with `WAIT 1` on Sentinel: the same frozen-replica
//! sequence answers `Timeout` instead of an acknowledgement, and a writer running through a
//! failover loses none of its acknowledged writes (2,052 acknowledged, 0 lost).
//!
//! `WAIT` is not consensus: Sentinel promotes the replica with the most data among those it
//! can reach, which has every confirmed write unless the confirming replicas are themselves
//! unreachable; `N` = all replicas removes that exception at the price of failing writes while
//! any replica is down.
//!
//! **What the fencing token still guarantees.** A lock's fencing token is its key's
//! `last_index`, `max(previous + 1, server time in µs)`, taken on the primary that grants it.
//!
//! * Without `WAIT`: an acquisition can vanish in a failover, and a second client can then
//!   acquire the same lock on the new primary while the first still believes it holds it
//!   (its lease is marked lost at its next renewal or right after its connection moves to
//!   the new primary, not before). A frozen primary that resumes does the same the other
//!   way round: it runs the commands queued on it while it was frozen, an acquisition among
//!   them, and grants them until Sentinel demotes it, while the new primary grants the same
//!   lock (measured by `kv-faults`' `redis_sentinel::pause_leader`: two holders at once in
//!   about 1 run in 10). Mutual exclusion is therefore not guaranteed across a failover. The
//!   tokens still rise: the new acquisition's index comes from the new
//!   primary's clock, above the lost one as long as that clock is not behind the old
//!   primary's by more than the failover took (seconds). A resource that remembers the
//!   highest token it has seen and refuses lower ones — the point of fencing — still refuses
//!   the first holder once the second has written, and a `LockHeld` transaction condition is
//!   checked against the new primary's state (the lost acquisition fails it).
//! * With `WAIT`: an acquisition (and each renewal) counts only once `N` replicas have it, so
//!   the promoted replica holds the lock with the same token and TTL (Redis replicates
//!   expiry as an absolute time): exclusivity survives the failover, within the limit above.
//!   An acquisition answered with `Timeout` may still hold the key until its TTL: the lock
//!   is not granted to the caller, and others wait for the TTL.

pub mod config;
mod lock;
mod scripts;
pub mod store;
mod watch;

pub use config::{
    Config, ConfigBuilder, REDIS_MAX_VALUE_LEN, TlsConfig, Topology, WaitForReplicas,
};
/// The contract this crate implements, re-exported so that depending on this crate alone is
/// enough: `use <this crate>::kv_core::{Store, ReadOptions, WriteOptions};`.
pub use kv_core;
pub use store::RedisStore;
