//! # kv-zookeeper: the kv-core contract on Apache ZooKeeper
//!
//! [`ZookeeperStore`] implements [`kv_core::Store`] over a ZooKeeper ensemble (3.6 or newer for
//! persistent recursive watches; TTL nodes need `zookeeper.extendedTypesEnabled=true` on the
//! server). It passes the whole `kv-conformance` suite against Debian's ZooKeeper 3.8.
//!
//! ```no_run
//! use kv_core::{Store, ReadOptions, WriteOptions};
//! use kv_zookeeper::{Config, ZookeeperStore};
//! # async fn demo() -> kv_core::Result<()> {
//! let store = ZookeeperStore::connect(Config::from_url("zookeeper://127.0.0.1:2181/myapp")?).await?;
//! store.put("config/db", "postgres://…".into(), WriteOptions::default()).await?;
//! let pair = store.get("config/db", ReadOptions::default()).await?.unwrap();
//! println!("{:?} at index {}", pair.value, pair.last_index);
//! store.close().await
//! # }
//! ```
//!
//! ## Client library
//!
//! [`zookeeper-client`](https://crates.io/crates/zookeeper-client) (kezhuw), features `tokio`
//! and `tls`. The card named `zookeeper-async`; it lacks multi-op (needed for atomic
//! compare-and-swap of a value *and* its marker, and for an atomic `delete_tree`), persistent
//! recursive watches (needed to see a child's value change: docker/libkv#109) and TLS.
//! `zookeeper-client` has all three, plus TTL-node creation, multi-read and an explicit session
//! state. It is async throughout (its sockets run on `async-io`; nothing blocks the tokio
//! runtime).
//!
//! ## Storage layout
//!
//! With the namespace `kv` (the default; [`Config::namespace`]), the key `a/b` is the znode
//! `/kv/a/b`:
//!
//! | znode | mode | data |
//! | --- | --- | --- |
//! | `/kv` | persistent | empty (created at connect) |
//! | `/kv/a` | container | empty while `a` is only a parent; `a`'s value once written |
//! | `/kv/a/b` | container | **the value of `a/b`, plain bytes** (`zkCli get /kv/a/b` prints it) |
//! | `/kv/a/b/__kv` | persistent, or persistent-with-TTL | the *marker*: present ⇔ `a/b` is a written key; data = the TTL in milliseconds as ASCII decimal, empty for a permanent key |
//! | `/kv/a/b/__kv/__kvowner-<session>-<n>` | ephemeral | only while `a/b` is held as a lock: the holding acquisition's *owner node*, empty (see Locks) |
//! | `/kv/__kvlocks/a/b/__kvlock-0000000007` | ephemeral sequential | a lock waiter's ticket (see Locks) |
//! | `/kv/__kvclock-<session>` | ephemeral | never visible: created, written and deleted in one transaction to sample the server's clock (see TTL) |
//!
//! * **Why a marker.** ZooKeeper keeps parents as real nodes, but the contract lists only keys
//!   that were written, and a key may be both a value and a parent. A node is a key exactly
//!   when it has the `__kv` child; parent-only nodes have none. Writing a key that already is a
//!   parent sets the node's data and creates the marker; deleting a key that still has
//!   children deletes the marker and empties the data. Every node is a *container*, so the
//!   server itself removes a path once nothing is left below it (after a key delete or a TTL
//!   expiry), as it sweeps expired TTL markers.
//! * The marker sits *beside* the value, never around it: other clients (zkCli, valkeyrie, a
//!   Java client) read the plain bytes. They see the `__kv` children in `ls`, and keys they
//!   write themselves become visible to this crate only once a marker is created next to them.
//! * Names: ZooKeeper refuses UTF-16 surrogates in paths, so characters outside the Basic
//!   Multilingual Plane (emoji) are stored as `␚` (U+241A) followed by six hex digits of the
//!   code point, and `␚` itself as `␚00241A`. Every other key is stored as it is spelled.
//!   (kv-core already forbids every other character ZooKeeper refuses.)
//!
//! ## How the contract is met
//!
//! * **`last_index`** is the key node's `mzxid`: the zxid of the transaction that last wrote
//!   the value. zxids are global and only rise, so it rises on every write, including across
//!   delete and re-create (where `stat.version` starts again). Every write is one multi-op:
//!   `[create the node if missing,] setData(node, value, version) [, delete(old marker)],
//!   create(marker)`, so the value, its index and its TTL change together.
//! * **CAS** (`atomic_put`, `atomic_delete`): one multi-read of node and marker, the `mzxid`
//!   compared with `previous.last_index`, then the multi-op above with the *versions just read*
//!   (`setData(node, …, version)`, `delete(marker, version)`), so any write in between makes
//!   the server refuse the whole transaction ([`kv_core::Error::KeyModified`]); a
//!   create-only write fails on the marker's `NodeExists` ([`kv_core::Error::KeyExists`]).
//!   ZooKeeper's `check` compares data versions, not zxids, and a node's data version starts
//!   again at 0 when it is re-created. So a delete never removes the key's node: it deletes
//!   the marker and empties the node (raising its data version), and the server's container
//!   sweep removes the childless node later. A late CAS still carrying the old version then
//!   meets the same node with a higher version and is refused. (Deleting the node made two
//!   racing `atomic_delete`s of one version both succeed when a create landed between them:
//!   found by `kv-faults`' linearizability check.) Residual window, stated honestly: only if
//!   the container sweep removes the node AND a new write re-creates it AND it reaches the
//!   old data version, all between one CAS's read and its multi-op. Locks do not depend on
//!   data versions (see Locks).
//! * **TTL**: the marker is a TTL node (`CreateMode::Persistent` + TTL) whose data records the
//!   TTL, because the server hides a node's TTL from clients (`ephemeralOwner` reads 0). The
//!   server deletes it lazily, once unmodified for the TTL and only every
//!   `znode.container.checkIntervalMs` (60 s by default), so every reader (get, list, CAS,
//!   watches, locks) treats a key as gone once `marker.mtime + ttl <= now on the server`.
//!   A write without TTL re-creates the marker as a persistent node: the key is permanent again.
//! * **Expiry is judged on the server's clock, not the client's.** `mtime` is stamped by the
//!   ZooKeeper leader (its wall clock when it proposed the write), so a deadline is a time on
//!   the server's clock; comparing it with the client's wall clock would let a client whose
//!   clock runs ahead take over live locks and hide live keys, and one behind see expired keys.
//!   Each handle therefore estimates the server's clock from its own writes: every write's
//!   answer carries the `mtime` the server stamped at some instant within the round trip, so
//!   the server's clock read `mtime` at the middle of the round trip (measured on the local
//!   *monotonic* clock), within half the round trip plus 1 ms (mtime has millisecond
//!   resolution). "Now on the server" = that `mtime` + the monotonic time elapsed since. The
//!   samples come from every write and lock renewal of the handle, and from a probe (one
//!   transaction that creates, writes and deletes the ephemeral node
//!   `/<ns>/__kvclock-<session>`: nothing is left behind) sent at connect and, lazily, before
//!   any decision (get, list, CAS, delete, watch read, lock wait) when the newest sample is
//!   older than 30 s. Of the last 8 samples, the one with the smallest error bound now (half
//!   its round trip + 1 ms + 500 ppm of drift per second of age) is used. Readers (get, list,
//!   watch timers, CAS and delete) go by that estimate; a lock waiter takes over an expired
//!   lock only once the deadline has passed by the estimate *plus* its error bound, so it never
//!   starts while the holder may still hold it. A holder's own checks (a whole TTL without a
//!   successful renewal = lost) use only its monotonic clock. The local wall clock is not used
//!   at all, so neither a skewed nor a stepped client clock matters. Remaining assumptions:
//!   the ensemble's leader keeps a sane clock (a leader change to a server whose clock differs
//!   moves every deadline by that difference until the next sample, ≤ 30 s later), and the
//!   estimate is off by at most half a round trip + 1 ms (+ drift). If the server's clock was
//!   never sampled (every probe failed, e.g. no write permission on the namespace root), the
//!   handle falls back to its local wall clock and logs a warning.
//! * **list / watch_tree**: a breadth-first walk, per level one round of multi-reads of each
//!   node with its marker (128 nodes per request, all sent before the first answer is
//!   awaited), keeping nodes with a live marker, then one round listing the children of the
//!   nodes whose stat counts a child besides the marker (leaf keys need none); sorted by key. `__kv…` names are skipped, and so are nodes other programs wrote
//!   whose names are not a key segment this crate could have written (a name must decode to a
//!   segment that kv-core's key rules accept, e.g. not one that makes `a//b` or holds a
//!   forbidden character, and that encodes back to the same name): neither they nor anything
//!   below them is listed.
//! * **delete_tree** deletes exactly the keys `list` shows (plus the directory itself as a
//!   key), never znodes of other programs. One breadth-first walk (as for `list`, also reading
//!   each node's data version and its marker's children) collects the tree; then, children
//!   before parents: every key's marker is deleted with its children (a lock's owner node),
//!   and a node is deleted only when nothing foreign remains below it and it is a key or an
//!   empty parent-only node whose children all go. A key whose node must stay (another
//!   program's znode is below it) loses its marker and its data (conditioned on the data
//!   version, as `delete`). Foreign znodes stay with the path of nodes leading to them: plain
//!   nodes without a marker that hold data, nodes whose names are not valid key segments (see
//!   list) and everything below them, and childless empty nodes without a marker (they may be
//!   another program's; this crate's own are containers the server sweeps). All of it is
//!   *one* multi-op, atomic: readers see all of it or none of it. A request must stay below
//!   the server's `jute.maxbuffer` (1 MiB), so trees above [`Config::max_ops_per_multi`]
//!   operations (1000 by default; each key is two znodes) are deleted in several multi-ops,
//!   each atomic, children before parents. A concurrent write into the tree makes the
//!   multi-op fail (`NotEmpty`/`NoNode`/`BadVersion`): the walk is redone.
//! * **watch**: a persistent watch (`addWatch … PERSISTENT`) on the key's node is installed
//!   *before* the first read; every event triggers a fresh read (node + marker), which is
//!   sent (equal states are dropped by kv-core). A timer fires at the TTL deadline, so expiry
//!   is reported on time even before the server deletes the node.
//! * **watch_tree**: the same with a persistent *recursive* watch on the directory's node, so
//!   a child's value change is seen (valkeyrie's ZooKeeper WatchTree misses it:
//!   docker/libkv#109). Lock renewals (data writes to markers) and lock queues are ignored.
//!   Every snapshot it reports is the tree's state at **one instant**, so it never shows part
//!   of a transaction: every key known to be in the tree is read, with the directory's node
//!   and each node's children, in ONE multi-read (the server answers it between two writes),
//!   and the answer is used once it is *closed* (every key reachable from the directory
//!   through the children it lists was part of it). The keys to read come from a walk of
//!   children lists only; keys created meanwhile are added and the read repeated (value
//!   rewrites never force a repeat, only keys appearing faster than the reads follow them).
//!   ZooKeeper's CommitProcessor processes no read in parallel with a write, so a multi-read
//!   answers at one instant. A tree
//!   whose read would exceed 896 KiB of request (about 3,500 keys of 60 bytes) is walked
//!   as by `list` and then every node read is checked unchanged (same `czxid`, `mzxid`,
//!   `pzxid`: a marker is a child of its key's node, so its creation or deletion moves the
//!   `pzxid`): each node was then as read at the instant the walk ended. A walk disturbed by
//!   a write is redone, so under sustained writes such a big tree's snapshots may come late
//!   (never partial). `list` itself stays a plain walk (cheaper; not atomic across levels).
//! * **Transactions** ([`kv_core::Store::transaction`]): ONE ZooKeeper multi-op, pinned to an
//!   atomic read. First `sync`, then one multi-read of every key named (node, marker and
//!   the marker's children, as `get` reads a key): a snapshot of one instant. The
//!   conditions are evaluated on it with [`kv_core::Transaction::first_failure`] (the
//!   key's `last_index` = its node's `mzxid`, absent = not [visible](#storage-layout), an
//!   expired marker the server has not swept yet included), so a failure is reported
//!   exactly as every backend reports it and nothing is sent; that snapshot is the
//!   transaction's linearization point. Otherwise one multi-op carries the writes — for a
//!   put exactly the operations `put` sends (`[create(node)] setData(node, value, version)
//!   [delete(old marker's owner node), delete(old marker, version)] create(marker)`, the
//!   marker a TTL node when the put has a TTL, a plain one otherwise), for a delete exactly
//!   those of `delete` (marker deleted, node emptied) — and pins every other key to the
//!   state read: `check(node, data version)` for a node that exists (every write and
//!   delete of a key sets its node's data, so any of them moves the version), and
//!   `create(node) + delete(node)` for one that does not (refused if it appeared; when its
//!   parent is missing too, the nearest missing ancestor is probed that way; nothing is
//!   left behind). The server applies all of it or none of it, in one zxid: every key put
//!   gets the same new `last_index`, which is its `mzxid` as `get` reports it. If the
//!   server refuses it, its per-operation answer says which operation failed and why: a
//!   missing parent is created (containers, as `put` does), a probe moved, anything else
//!   means the state moved on since the read, and the keys are read and the conditions
//!   evaluated again (at most 64 times; a transaction that the server keeps refusing while
//!   every read shows its conditions holding fails with
//!   [`ConditionFailed`](kv_core::Error::ConditionFailed)`{ index: 0, reason: KeyModified }`,
//!   never with a silent success). **Readers** see all of a transaction or none of it:
//!   `get` and CAS read one key in one multi-read, `watch` re-reads after every event (one
//!   change per transaction), `watch_tree` reads whole instants (above); only `list` can
//!   straddle a transaction, as it can straddle any two writes.
//! * **`Condition::LockHeld`** compares the lock key's `mzxid` with the fencing token, which
//!   *is* the `mzxid` of the acquiring write. Renewals only rewrite the marker, never the
//!   key's node, so they keep it; a takeover (after the key was deleted or expired) is a new
//!   write with a higher zxid; an expired lock key whose TTL marker the server has not swept
//!   yet is not visible, so it counts as lost. The check is pinned like any other condition
//!   (the node's data version), so a takeover racing with a guarded write is ordered by the
//!   server: exactly one of them wins. A holder whose session ended (its owner node is gone,
//!   its lease reports the loss) still passes the condition until the key expires, as the
//!   contract defines it: nobody else can take the lock before that.
//! * **Reconnection and session expiry**: the client library resumes a session over a new
//!   connection by itself; after a reconnect the watch loops re-read (events during the gap
//!   may be lost: ZOOKEEPER-4698). An *expired* session is terminal in ZooKeeper: the store
//!   then connects a new session on its next call (shared by all users of the handle), and
//!   the watch loops re-install their watches on it and re-read. Transient failures are
//!   retried with backoff (100 ms doubling to 2 s), never in a hot loop.
//! * **Locks**: a waiter takes an ephemeral sequential ticket in
//!   `/<ns>/__kvlocks/<key>/__kvlock-N` and watches only its predecessor (no herd effect,
//!   first come first served). First in line, it waits until the key is absent, then writes it
//!   with the lock's value and a TTL marker of the lock's TTL (the multi-op above), plus, in
//!   the same transaction, an ephemeral *owner node* below the new marker whose name is unique
//!   to this acquisition (`__kvowner-<session id>-<n>`); the same transaction removes its
//!   ticket when the key's node already exists without a marker (otherwise the key is read
//!   first and the ticket removed after). The ticket is created and the queue listed in one
//!   round trip (the listing is sent before the creation's answer). **Nobody queued**: a lock
//!   first tries to take the key in one transaction that also *creates* the queue directory,
//!   which the server refuses if the directory exists (someone is or was queued) or the key
//!   has a marker; then it queues as above. A holder that created the queue directory or
//!   was alone in it deletes it in its release transaction when it is still empty (refused,
//!   and released without it, when someone queued meanwhile). Waiters therefore never lose
//!   their turn to a newcomer. Taking
//!   over an expired lock (like any write or delete of the key) deletes the previous owner
//!   node in the transaction that replaces or deletes the marker: a node with a child cannot
//!   be deleted.
//! * **Renewal is atomic and cannot touch another acquisition's lock.** The holder renews
//!   every TTL/3 with one multi-op, `[check(owner node), setData(marker)]`. While the owner
//!   node exists, the marker at that path is the one this acquisition created (it cannot be
//!   deleted or replaced without deleting its child), so the server applies the renewal only
//!   if this very acquisition still owns the key, and refuses all of it otherwise. A holder
//!   that was paused (SIGSTOP, a VM freeze) or whose renewal was held up in the network past
//!   its TTL while another client took the lock over cannot modify the new holder's marker. (A
//!   renewal conditioned on the marker's data version could, since versions restart at 0 with
//!   every new marker: an ABA.) A holder that resumes after a whole TTL without a successful
//!   renewal reports the lock lost without renewing it, even if nobody took it over (readers
//!   may have seen the key expire).
//! * The owner node also keeps the server's TTL sweeper off a fresh lock marker. The sweeper
//!   lists expired TTL nodes, then deletes them *by path*, a few milliseconds apart
//!   (ZooKeeper's `deleteContainer` re-checks neither the TTL nor the node's identity, only
//!   that it has no children), so a marker created at an expired marker's path just after the
//!   listing would be deleted; a marker with a child is not.
//! * The lock is lost when its owner node or the marker it created (identified by its
//!   `czxid`) is gone (someone deleted or overwrote the key, or took it over after expiry),
//!   when renewals fail for a whole TTL, or when the session expires (the owner node goes with
//!   it); a persistent watch on the key reports a deletion or an overwrite at once. A lost
//!   holder deletes its own owner node if it is still there, so that the server can sweep the
//!   expired marker. `unlock` deletes the key, the marker and the owner node in one
//!   transaction, only if the marker is still its own: it deletes the owner node first, so
//!   no read is needed (while the owner node exists the marker is its own); if the server
//!   refuses (the owner node is gone), the key is read and the marker's `czxid` decides.
//!   Readers never see owner nodes (`list`
//!   skips `__kv…` names) and watches ignore their events.
//! * **Fencing token** = the key's `last_index` (`mzxid`) after the acquiring write, as
//!   kv-core's lock contract defines it. It rises strictly with every acquisition (zxids are
//!   global). The ticket's sequence number is *not* used: it would differ from the key's
//!   `last_index`, and it restarts when the queue directory (a container) is removed.
//! * **Why not an ephemeral key node for locks**: an ephemeral node lives until the *session*
//!   expires (at least 2 × tickTime, 4 s by default, often 10–40 s), not the lock's TTL, and it
//!   cannot have children (a lock key may also be a parent). valkeyrie's ZooKeeper store uses
//!   ephemeral nodes for TTLs too; that does not meet the contract.
//! * **Timeouts**: every request is bounded by [`Config::request_timeout`]
//!   ([`kv_core::Error::Timeout`]); connecting by [`Config::connect_timeout`]. A refused
//!   connection is [`kv_core::Error::Unavailable`] at once.
//! * **Consistency**: a `consistent` read (the default) first sends `sync` so that the server
//!   answering has caught up with the leader; [`kv_core::ReadOptions::stale`] skips it.
//!   Concurrent reads share one `sync`: a read may use any `sync` sent after it was called
//!   (the session's requests are served in order), so under load one `sync` serves many
//!   reads instead of doubling the server's work.
//! * **Background tasks**: watch loops and lock renewals run on the handle's
//!   [`kv_core::TaskSet`]; dropping a stream or a lock ends its task, `close` (or dropping the
//!   store) releases the locks, ends every task and closes the session.
//!
//! ## Limits and capabilities
//!
//! | capability | value | why |
//! | --- | --- | --- |
//! | watch, watch_tree, locks, ttl | yes | |
//! | `max_value_len` | 1 000 000 bytes ([`MAX_VALUE_LEN`]) | a request may not exceed `jute.maxbuffer` (1 MiB − 1 by default) and a write also carries the path, the ACL and the marker operations; tested: 1 000 000 bytes work, a raw 1 MiB write is refused |
//! | `max_key_len` | 1024 bytes | kv-core's maximum; ZooKeeper bounds paths only by `jute.maxbuffer` |
//! | `min_ttl` | 1 s | |
//! | `max_ttl` | 365 days | ZooKeeper's TTL limit is 2^40 − 1 ms (≈ 34 years) |
//! | `ttl_precision` | 500 ms | readers filter on the server's `mtime` against their estimate of the server's clock, exact to half a round trip + 1 ms (see TTL); the rest covers watch timers on a loaded machine and round trips up to several hundred ms |
//! | transactions | yes, [`MAX_TRANSACTION_OPS`] = 128 conditions plus operations | one multi-op; 128 puts with 1,024-byte keys need about 750 KB of request besides the values |
//! | request size of a transaction | [`MAX_TRANSACTION_BYTES`] = 1,040,000 bytes (estimated before anything is sent: values, paths, ACLs, headers) | the server drops the connection on a request over `jute.maxbuffer` (1 MiB − 1): one value of [`MAX_VALUE_LEN`] fits, two half-size values do not. Over it: [`kv_core::Error::InvalidOption`] before anything is sent. kv-core has no capability for it yet |
//! | `watch_tree_sees_whole_transactions` | true | every snapshot is one instant (see watch_tree) |
//!
//! ## Deviations
//!
//! * Keys with characters outside the BMP are stored escaped (see Storage layout).
//! * Other clients see the `__kv` marker children and the `__kvlocks` directory.
//! * `delete_tree` is atomic per [`Config::max_ops_per_multi`] operations, not beyond. It
//!   leaves other programs' znodes (and the nodes leading to them) in place, so a directory
//!   may still exist as a znode after it; `list` shows nothing there.
//! * CAS and transactions have the (narrow) residual window described above (a condition or
//!   write pins a node's data version); locks do not.
//! * A transaction's size is bounded in bytes too ([`MAX_TRANSACTION_BYTES`]), not only in
//!   operations. A transaction that times out ([`kv_core::Error::Timeout`]) may or may not
//!   have been applied, like any write.
//! * A transaction's pins on keys whose node does not exist create and delete that node (or
//!   its nearest missing ancestor) inside the multi-op: nothing is left, but other clients'
//!   watches on those paths see a create and a delete.
//! * Known issue, plain keys only: a `put`/`atomic_put` that replaces a key whose TTL marker
//!   has just expired can lose its new marker to the server's TTL sweeper (see Locks: it
//!   deletes by path), and then the key is gone. The window runs from the sweeper's listing
//!   (every `znode.container.checkIntervalMs`) to its delete, a few milliseconds per expired
//!   node listed. Locks are immune (their marker has a child).
//! * A lock *waiter* whose process hangs keeps its ticket until its session expires
//!   ([`Config::session_timeout`]), delaying the waiters queued behind it by that much; a
//!   *holder* that hangs loses the lock after the lock's TTL, as the contract says.
//! * TTL expiry is judged on the ZooKeeper leader's clock, estimated by each client to within
//!   half a round trip + 1 ms; client clocks do not matter (see TTL).
//! * TLS ([`TlsConfig`], `zookeeper+tls://…?ca_file=…&cert_file=…&key_file=…`) is tested in
//!   the test command: the whole conformance suite runs over ZooKeeper 3.8's Netty
//!   `secureClientPort` with `ssl.clientAuth=need` and digest credentials
//!   (`tests/tls_conformance.rs`, `scripts/servers up zookeeper-tls`); a missing client
//!   certificate or a wrong CA is [`kv_core::Error::Unavailable`]. Hostname verification
//!   cannot be turned off (the library marks that `unsafe`, which this workspace forbids).
//!   Digest credentials ([`Credentials`]) are tested: nodes get `CREATOR_ALL_ACL`, another
//!   identity is [`kv_core::Error::PermissionDenied`]. Beware: over mutual TLS ZooKeeper also
//!   registers the client certificate as an identity, so `CREATOR_ALL_ACL` admits the same
//!   certificate with a wrong digest password; give each principal its own certificate.

mod clock;
mod config;
mod lock;
mod store;
mod txn;
mod watch;

pub use config::{Config, ConfigBuilder, Credentials, TlsConfig};
/// The contract this crate implements, re-exported so that depending on this crate alone is
/// enough: `use <this crate>::kv_core::{Store, ReadOptions, WriteOptions};`.
pub use kv_core;
pub use store::{MAX_VALUE_LEN, ZookeeperStore};
pub use txn::{MAX_TRANSACTION_BYTES, MAX_TRANSACTION_OPS};
