//! # kv-dynamodb: the kv contract on Amazon DynamoDB
//!
//! A [`kv_core::Store`] kept in one DynamoDB table, through the official AWS SDK
//! (`aws-sdk-dynamodb`, plus `aws-sdk-dynamodbstreams` for watches). Every call of the
//! contract works: put/get/delete/exists, list and delete_tree that read only the subtree
//! asked for, compare-and-swap, TTLs, watch and watch_tree through DynamoDB Streams, leased
//! locks with fencing tokens, and transactions over several keys (one `TransactWriteItems`,
//! so writes fenced by a held lock too). Tested against DynamoDB Local 3.x; in production the
//! usual AWS credential chain and the regional endpoint are used.
//!
//! ```no_run
//! use std::time::Duration;
//! use kv_core::{Store, ReadOptions, WriteOptions};
//! use kv_dynamodb::{Config, DynamoStore};
//!
//! # async fn demo() -> kv_core::Result<()> {
//! // Real AWS: credentials and region from the environment / profile / instance role.
//! let store = DynamoStore::connect(Config::new("my-kv-table").namespace("app")).await?;
//! // DynamoDB Local, creating the table on first use:
//! let local = DynamoStore::connect(Config::from_url(
//!     "dynamodb://kv?endpoint=http://127.0.0.1:28000&region=us-east-1\
//!      &access_key_id=local&secret_access_key=local&create_table=true",
//! )?)
//! .await?;
//! local.put("config/db/url", "postgres://…".into(), WriteOptions::default()).await?;
//! local.put("session/42", "alice".into(), WriteOptions::with_ttl(Duration::from_secs(30))).await?;
//! let below = local.list("config", ReadOptions::default()).await?;
//! # drop((store, below)); Ok(()) }
//! ```
//!
//! ## Storage layout
//!
//! One table, key schema `pk` (String, partition key) + `sk` (String, sort key). A key `k`
//! of a handle with namespace `ns` is stored under the *full key* `ns/k` (just `k` without
//! a namespace) as one item:
//!
//! | attribute | type | content |
//! | --- | --- | --- |
//! | `pk` | S | the first `/`-separated segment of the full key (`ns/a/b` → `ns`, `a/b` → `a`) |
//! | `sk` | S | the full key, normalised (`ns/a/b`) |
//! | `value` | B | the value: exactly the bytes written, nothing around them |
//! | `version` | N | the key's `last_index` (see below) |
//! | `deadline_ms` | N | only with a TTL: the exact expiry, Unix milliseconds *on the server's clock* (see [Time](#time-the-servers-clock-and-lease-observation)) |
//! | `expires_at` | N | only with a TTL (or on a tombstone): Unix seconds, rounded up — the table's TTL attribute (on a lock: one lease after `deadline_ms`) |
//! | `owner` | S | only on a key held as a lock: the holder's random token |
//! | `heartbeat` | N | only on a key held as a lock: 0 when acquired, changed by every renewal |
//! | `lease_ms` | N | only on a key held as a lock: the lease (the lock's TTL), milliseconds |
//! | `deleted` | BOOL | only on a tombstone: `true` (then `value` is absent) |
//!
//! The value stays plain bytes under the plain key, so the AWS CLI
//! (`aws dynamodb get-item --key '{"pk":{"S":"a"},"sk":{"S":"a/b"}}'`, which shows `B` values
//! base64-encoded as it does for every binary attribute) and any other client read what we
//! write; the metadata sits *beside* the value in its own attributes. valkeyrie's DynamoDB
//! store cannot share a table with this one: its table has a single hash key `id` and
//! base64 text in `encoded_value`, a layout in which listing a directory has to Scan the
//! whole table, which is what this design avoids.
//!
//! ### Items written by other programs
//!
//! An item written by another client with only `pk`, `sk`, `value` (B, or S for text) and
//! `version` is read back as a permanent key, and CAS works on it as long as that client
//! raises `version` on every write (as this crate does).
//!
//! * **Without `version`** (or with one below 1) its `last_index` is 1, and it stays 1 when
//!   that client rewrites the item: nothing in the item changes on a rewrite that a
//!   condition could check (DynamoDB keeps no per-item revision), so a pair read before the
//!   rewrite would still match. Compare-and-swap against such an item is therefore
//!   **refused**: `atomic_put` / `atomic_delete` with a `previous` pair at `last_index` 1
//!   return [`Error::NotSupported`](kv_core::Error::NotSupported), whose message says why,
//!   and which retrying does not clear (unlike `KeyModified`). A plain `put` (or `delete`)
//!   gives the key a version; CAS works from then on. A foreign rewrite that drops
//!   `version` again makes every pair read before it stale (`KeyModified`), since the
//!   condition `version = :prev` no longer holds. Create-only `atomic_put` reports such an
//!   item as present (`KeyExists`); `get`, `list`, watches and `delete_tree` treat it as any
//!   other key.
//! * **At a sort key that is no valid key** (`a//b`, `a/`, a `.` or `__kv…` segment, a
//!   character the [key rules](kv_core::key) refuse) or **under a partition key other than
//!   the sort key's first segment** (where `get` never looks), an item cannot be named by any
//!   call: `list` and `watch_tree` skip it, and `delete_tree` leaves it alone (it deletes
//!   exactly what `list` shows, plus the directory key). Only the Scan of `list("")` without
//!   a namespace can meet the second kind; the partition's Query cannot.
//!
//! ### Why this key design: listing reads only the subtree
//!
//! Every key below a directory shares the directory's first segment, hence its partition
//! key, and DynamoDB keeps a partition's items sorted by sort key (UTF-8 byte order, the
//! contract's order). So `list(dir)` is one paginated Query
//! `pk = first_segment(dir) AND begins_with(sk, "dir/")`: it reads only the subtree, in
//! order, whatever the table holds elsewhere. With a namespace, `list("")` is the Query
//! `pk = first_segment(ns) AND begins_with(sk, "ns/")`. Only `list("")` and
//! `delete_tree("")` of a handle *without* namespace Scan: there the root *is* the whole
//! table.
//!
//! **Hot-partition trade-off**: all keys below one top-level segment (with a namespace: all
//! keys of the namespace, if the namespace has one segment) share a partition key. DynamoDB
//! serves one partition key at up to 3,000 reads and 1,000 writes per second before its
//! adaptive capacity splits the item collection by sort key (possible because the table has
//! no local secondary index). Spread heavy traffic over several top-level directories (or
//! namespaces with different first segments) if it goes beyond that.
//!
//! ### Tombstones, and why `last_index` survives deletion
//!
//! `last_index` must rise across delete and re-create. A deletion therefore does not remove
//! the item: it replaces it with a *tombstone* (`pk`, `sk`, a higher `version`,
//! `deleted = true`, `expires_at` = now + [`Config::tombstone_ttl`], one day by default),
//! which every read and every condition treats as absent, and which DynamoDB's TTL process
//! removes later. Versions are also taken from the clock: a write picks
//! `max(previous + 1, now in µs)` and is conditional on the stored version being lower
//! (`attribute_not_exists(version) OR version < :new`; when that fails, the write is
//! retried above the version the failure returned). Versions therefore rise strictly on
//! every write whoever writes, and keep rising after DynamoDB physically removed an item
//! (an expired key, or a tombstone after a day), as long as the writers' clocks are within
//! a day of each other. Nothing lies above version `u64::MAX`: a compare-and-swap with a
//! `previous` pair at that `last_index` fails like any stale one (`KeyModified`, or
//! `KeyNotFound` when the key is absent), and an item another client stored at that version
//! is refused every write ([`kv_core::Error::Backend`]).
//!
//! ## How the contract is met
//!
//! * **put** — PutItem of the whole item (a write without TTL drops `deadline_ms` and
//!   `expires_at`: the key is permanent again), conditional on the version guard above.
//! * **get / exists** — GetItem (`ConsistentRead` unless [`ReadOptions::stale`](kv_core::ReadOptions::stale));
//!   a tombstone or an item whose `deadline_ms` has passed is `None`.
//! * **TTL** — DynamoDB deletes expired items lazily (within days on AWS; DynamoDB Local
//!   within seconds), so expiry is enforced on read: every read, filter and condition
//!   compares `deadline_ms` with the handle's estimate of the *server's* clock (never the
//!   host's wall clock; see [Time](#time-the-servers-clock-and-lease-observation)).
//!   `expires_at` only lets DynamoDB clean up. TTLs from 1 s to 365 days.
//! * **CAS** — condition expressions on `version`: create-only is
//!   `(attribute_not_exists(sk) OR attribute_exists(deleted) OR deadline_ms <= :now)`, a swap
//!   is `version = :prev AND <live>` where *live* is
//!   `attribute_exists(sk) AND attribute_not_exists(deleted) AND (attribute_not_exists(deadline_ms) OR deadline_ms > :now)`.
//!   A failed condition returns the current item (`ReturnValuesOnConditionCheckFailure =
//!   ALL_OLD`), which tells [`KeyExists`](kv_core::Error::KeyExists),
//!   [`KeyNotFound`](kv_core::Error::KeyNotFound) and
//!   [`KeyModified`](kv_core::Error::KeyModified) apart without a second read. An item
//!   another client wrote without `version` never matches `version = :prev`, and a swap
//!   against it is refused (see [above](#items-written-by-other-programs)).
//! * **delete** — a conditional tombstone (`Ok(true)` only if the replaced item was live).
//!   `atomic_delete` adds `version = :prev AND <live>`.
//! * **list** — see above: Query (or the root Scan) with a filter expression dropping
//!   tombstones and expired items, every 1 MB page followed, sorted; items at keys no call
//!   could name are skipped (see [above](#items-written-by-other-programs)). A directory
//!   whose `dir/` prefix is 1024 bytes or longer (`max_key_len` bytes long, or one byte
//!   less) has nothing below it: no sort key is that long. It lists as empty without a
//!   request (DynamoDB would refuse the Query's 1025-byte prefix), and its `watch_tree`
//!   starts with the empty snapshot.
//! * **delete_tree** — the same Query (keys and versions only), then tombstones, over
//!   exactly the keys `list` shows plus the directory key. A tree of
//!   at most **100** keys (DynamoDB's TransactWriteItems limit) is deleted **atomically**
//!   in one transaction whose every tombstone is conditional on the version the Query saw;
//!   a concurrent write cancels it and the tree is read again (five attempts, then the
//!   batch path). A larger tree is deleted with BatchWriteItem, **25** tombstones per request
//!   (DynamoDB's limit), four requests in flight, unprocessed items retried with
//!   exponential backoff: **not atomic** — a failure part-way leaves part of the tree, a
//!   concurrent reader may see it half-deleted, and a key written concurrently may be kept
//!   or deleted. Both paths are tested (100 and 101 keys, and 10,000 keys).
//! * **watch / watch_tree** — through the table's DynamoDB Stream. Each store handle runs
//!   one shared stream reader while at least one of its watches is active (DynamoDB
//!   throttles more than about two readers per shard, so readers must not multiply with
//!   watches): it polls `GetRecords` on every shard every [`Config::poll_interval`] (250 ms
//!   by default), follows child shards when a shard closes, and tells the watches which
//!   keys changed. A new watch first makes sure the reader holds iterators (`LATEST`, taken
//!   when the reader starts), *then* reads the current state, so no change falls in
//!   between; on every record whose `sk` is its key (or below its directory) it re-reads the
//!   state with a consistent read and publishes it. No stream record comes when a TTL runs
//!   out, so each watch also wakes at the earliest `deadline_ms` of what it published and
//!   re-reads. Reader errors (expired iterators, trimmed data, network) reopen the stream
//!   with exponential backoff up to 5 s and make every watch re-read; a watch that falls
//!   behind the reader re-reads too. The stream reopened is always the one DescribeTable
//!   names now (`LatestStreamArn`): a table deleted and created again (or a DynamoDB Local
//!   restarted in memory, then the table created again) has a new stream with a new ARN,
//!   while the old one is gone (`ResourceNotFoundException`) or disabled with its shards
//!   closed and no children. The reader treats both, and a `LatestStreamArn` that is no
//!   longer its stream (checked every 30 s, with the shard list), like any failure: it
//!   moves to the table's current stream and every watch re-reads, so the watches report
//!   the state of the new table and go on. Failures that waiting does not clear (the table
//!   missing or without a stream, a request DynamoDB refuses) end the watches with that
//!   error once they have lasted longer than [`Config::request_timeout`]; an unreachable or
//!   throttling server is retried for as long as it takes. A watch never waits silently on
//!   a stream that will not speak again. And a watch the stream told nothing for
//!   [`Config::watch_resync`] (5 s by default) re-reads anyway, reporting only a change: a
//!   bound on staleness should the reader miss records or stall (one reader on a DynamoDB
//!   Local slowed by many earlier writes once reported nothing for over 15 s; the cause was
//!   not found). Tables without a stream, or [`WatchMode::Poll`], fall
//!   back to **polling**: the watched key or subtree is re-read every
//!   [`Config::poll_interval`] (the declared fallback; one read per watch per interval).
//!   [`DynamoStore::watches_use_streams`] says which is in use.
//! * **locks** — the lock *is* the key: acquiring is a create-only write with the lock's
//!   value, `owner` = a random token, `heartbeat` = 0, `lease_ms` = TTL and `deadline_ms` =
//!   server now + TTL, conditional on the key being free: no item, a tombstone, or a plain
//!   key (no `owner`) whose TTL ran out. An item with an `owner` is a held lock *whatever
//!   its `deadline_ms` says*: it is taken over only by **lease observation** (see
//!   [Time](#time-the-servers-clock-and-lease-observation)). A waiter retries every
//!   [`Config::lock_retry_interval`] (and stops at once when its `lock()` future is
//!   dropped). The holder renews every TTL/3 with UpdateItem `SET deadline_ms, expires_at,
//!   heartbeat = <next>, lease_ms` conditional on `owner = :me AND version = :acquired AND
//!   <not deleted>`; a failed condition means the key was deleted, overwritten or taken over:
//!   the lock is reported lost at once. A holder whose last successful renewal was *sent* a
//!   whole TTL ago (on its monotonic clock: it was paused, or could not reach DynamoDB) does
//!   not renew but reports the lock lost, since a contender may have seen it unchanged for a
//!   lease by then. Release writes a tombstone only if `owner` and `version` are still ours.
//!   The **fencing token** is the acquiring (or take-over) write's `version` (renewals do not
//!   change it), so it rises with every acquisition.
//! * **transaction** — one `TransactWriteItems`, all or nothing, with **one action per key**
//!   (DynamoDB refuses two actions on one item in a transaction):
//!   * a key that is written becomes a `Put` of exactly the item `put` writes (or the
//!     tombstone `delete` writes; deleting an absent key writes a tombstone too, which no
//!     call can tell from no item), at a version picked as for `put`, and its condition
//!     expression is the key's transaction condition, if it has one, AND the version guard;
//!   * a key that is only checked becomes a `ConditionCheck`;
//!   * conditions are the expressions single writes use, evaluated by DynamoDB at commit
//!     time: [`Absent`](kv_core::Condition::Absent) = *absent* above (no item, a tombstone,
//!     or expired on the server's clock), [`Exists`](kv_core::Condition::Exists) = *live*,
//!     [`IndexEquals`](kv_core::Condition::IndexEquals) = `version = :prev AND <live>`;
//!   * [`LockHeld`](kv_core::Condition::LockHeld) = `version = :token AND <live>` on the
//!     lock's key: the lock item still carries the acquiring write's `version` (renewals only
//!     change `heartbeat`, `deadline_ms` and `expires_at`; a take-over, an overwrite, a
//!     release or a delete all write a higher version), and its `deadline_ms` has not passed
//!     on the server's clock, so a lock item whose holder stopped renewing counts as lost
//!     as soon as its deadline passes, even before a contender took it over or DynamoDB
//!     removed it. The holder's renewals keep the deadline a lease ahead.
//!
//!   The actions of the keys with a condition come first, in condition order. Every action
//!   asks for `ReturnValuesOnConditionCheckFailure = ALL_OLD`, so a cancelled transaction
//!   (`TransactionCanceledException`) returns, for each action whose condition failed, the
//!   item *as DynamoDB evaluated it in that transaction*: the reason of each condition comes
//!   from that state through [`Condition::evaluate`](kv_core::Condition::evaluate) (so it is
//!   the one every backend reports), and the first failing condition in order is returned as
//!   [`ConditionFailed`](kv_core::Error::ConditionFailed) — without a second read. When
//!   only the version guard failed (an item stored at a version above this host's clock),
//!   or another transaction was in progress on an item (`TransactionConflict`) before any
//!   known failure, the transaction is sent again (with a jittered backoff, at most 64
//!   times); a cancellation that names no failing condition is never reported as success.
//!   An item at version `u64::MAX` cannot be written (as for `put`), and a compare at
//!   `last_index` 1 on an item without a `version` is refused with `NotSupported` (as for
//!   `atomic_put`). On success the new pairs carry the versions written, which `get` then
//!   reports. The SDK gives each request an idempotency token, so its own retries after a
//!   lost response cannot apply a transaction twice.
//!
//!   **Isolation**: DynamoDB runs `TransactWriteItems` serializably with every single-item
//!   operation: `get`, `exists`, `put`, `atomic_*`, `delete`, locks never see or interleave
//!   with part of a transaction (a single write meeting a transaction in progress on its
//!   item gets `TransactionConflictException`, and is sent again after a short pause).
//!   `list` (a Query or Scan) is only **read-committed** against transactions: on AWS, a
//!   listing that runs while a transaction commits may contain some of its writes and not
//!   the others. `watch_tree` builds its snapshots with the same Query and DynamoDB Streams
//!   delivers a transaction's records one by one, so it may publish a snapshot with part of
//!   a transaction (followed by the whole one): `watch_tree_sees_whole_transactions` is
//!   **false**. A `watch` on one key sees one change per transaction (one item write).
//! * **close** — releases the handle's locks, cancels its watch and renewal tasks (watches
//!   end with [`Closed`](kv_core::Error::Closed)) and returns once no task is left.
//!
//! ## Table creation
//!
//! With [`Config::create_table`] a missing table is created with the key schema above,
//! on-demand billing (`PAY_PER_REQUEST`), a stream (`NEW_AND_OLD_IMAGES`, so other stream
//! consumers get full images; this crate only uses the keys), and TTL enabled on
//! `expires_at`; `connect` waits until it is `ACTIVE`. Handles racing to create it are fine
//! (`ResourceInUseException` and an already-enabled TTL are accepted). Without the option a
//! missing table is [`Error::Config`](kv_core::Error::Config); a table with another key
//! schema is refused the same way.
//!
//! ## Limits (the declared [`Capabilities`](kv_core::Capabilities))
//!
//! * `max_value_len` = 405,504 bytes (400 KiB − 4 KiB): DynamoDB's item limit is 400 KiB
//!   *including attribute names and the key attributes*; 4 KiB covers the longest key twice
//!   (`pk` and `sk`), the metadata attributes and their names. Tested at the limit with the
//!   longest key, a TTL and a lock owner.
//! * `max_key_len` = 1024 bytes minus the namespace prefix: DynamoDB's sort-key limit.
//! * `max_transaction_ops` = **100** conditions plus operations: DynamoDB's limit of 100
//!   actions per `TransactWriteItems`; a condition and a write on the same key share one
//!   action, so the layout never needs more actions than that. The aggregate size of the
//!   items of one transaction is limited to 4 MB (4 MiB) by DynamoDB: a transaction whose
//!   values plus twice its full keys plus 128 bytes per key (the metadata) exceed it is
//!   refused with [`InvalidOption`](kv_core::Error::InvalidOption) before anything is sent
//!   (ten values at the value limit fit). `watch_tree_sees_whole_transactions` = false (see
//!   *transaction* above).
//! * `min_ttl` 1 s, `max_ttl` 365 days, `ttl_precision` 1.5 s: expiry is judged to the
//!   millisecond on each handle's estimate of the server's clock, which is off by at most
//!   500 ms (half the `Date` header's one-second resolution) plus half a round trip; a
//!   writer's and a reader's estimates may therefore differ by 1 s plus a round trip. The
//!   same margin is added to a lock's lease before a contender takes it over.
//! * Watch latency: one poll interval plus a GetRecords round trip (about 120 ms measured
//!   against DynamoDB Local with a 100 ms interval). On AWS, stream records usually appear
//!   within a second.
//!
//! ## Deviations
//!
//! * `delete_tree` of more than 100 keys is not atomic (see above).
//! * `list` and `watch_tree` are read-committed against transactions: they may show part of
//!   a transaction that commits while they read (see *transaction* above); single-key reads
//!   never do.
//! * `list("")` without a namespace is a full-table Scan (the root is the whole table).
//! * Watches poll the stream (DynamoDB Streams has no push API): each handle with active
//!   watches makes one GetRecords per shard per interval; in polling mode each watch makes
//!   one read per interval.
//! * Versions are clock-based (microseconds since the epoch), not small counters.
//! * Expiry is judged on each handle's estimate of DynamoDB's clock, good to about 1 s (see
//!   [Time](#time-the-servers-clock-and-lease-observation)); a key may look expired up to
//!   `ttl_precision` early or late to a handle other than its writer.
//! * A dead holder's lock is taken over a whole lease (plus `ttl_precision`) after a
//!   contender *first saw* it, not at the deadline the holder wrote: a contender that
//!   arrives late waits a full lease from its arrival.
//! * Deleted keys leave a tombstone item for [`Config::tombstone_ttl`]; other clients
//!   scanning the table see it (`deleted = true`).
//! * Compare-and-swap on an item another client wrote without `version` is refused with
//!   `NotSupported` until a plain `put` gives it one (see
//!   [above](#items-written-by-other-programs)).
//!
//! ## Time: the server's clock and lease observation
//!
//! No decision of this crate compares a deadline written by one client with another
//! client's wall clock (a host 30 s ahead would otherwise see every TTL key expired and steal
//! every held lock; a host behind would see expired keys live). Two mechanisms replace it,
//! as in the AWS DynamoDB lock client:
//!
//! **TTL keys — the server's clock.** Every DynamoDB response (DynamoDB Local's too) carries
//! an HTTP `Date` header, the server's time truncated to the second. Each handle installs an
//! SDK interceptor that notes the monotonic time just before each attempt is transmitted
//! (`t0`) and when its response arrives (`t1`), and parses `Date` = `D`: the offset *server
//! time − local monotonic time* then lies in `(D − t1, D + 1 s − t0]`. The handle keeps the
//! intersection of these intervals over all its responses (a sample that does not overlap
//! replaces it: the server's clock stepped, or the local clock drifted), so the estimate
//! tightens as responses arrive with different sub-second phases. "Server now" = monotonic
//! now + the interval's midpoint; deadlines are written as server now + TTL, and reads,
//! filters, conditions and watch timers compare `deadline_ms` with server now. `connect`
//! already takes a sample (DescribeTable), so the host's wall clock never enters once
//! connected; it is the documented fallback only while no response carried a parsable
//! `Date` (a proxy that strips the header; `connect` logs a warning then).
//!
//! **Locks — lease observation.** A contender that finds the lock held (an item with an
//! `owner`) remembers the `version`, `owner` and `heartbeat` it saw and its own *monotonic*
//! time. Every renewal of a live holder changes `heartbeat`, which restarts the observation.
//! Only when the item stayed unchanged for the lease written in it (`lease_ms`; the
//! contender's own TTL for a lock item of an older writer without one) plus `ttl_precision`,
//! measured on the contender's monotonic clock, does it write its own lock item at a higher
//! version (the new fencing token), conditional on exactly the `version`, `owner` and
//! `heartbeat` it observed: a heartbeat landing first makes the take-over fail and the
//! observation start again. A live holder renews every TTL/3 and gives the lock up itself
//! when no renewal succeeded for a TTL, before any contender can have watched it unchanged
//! that long.
//!
//! Remaining assumptions: the hosts' *monotonic* clocks run at (nearly) the same rate — a
//! drift of well under `ttl_precision` per lease (any real clock does far better); DynamoDB's
//! `Date` header is accurate to its second and its clock does not jump during a lease;
//! requests do not take longer than `ttl_precision` in flight unnoticed (a response's round
//! trip widens its own sample). DynamoDB's TTL process removes items by `expires_at` on its
//! own clock: a lock item's `expires_at` lies a lease after its deadline, so a dead holder's
//! lock is normally taken over by observation before it disappears. Versions still take
//! the host's wall clock (microseconds) as a floor; they only need to rise, which the
//! version guard ensures whatever the clocks say.
//!
//! ## Configuration, credentials, TLS
//!
//! [`Config`] holds the table, endpoint override, region, [`Credentials`] (the default AWS
//! chain, or static keys), [`TlsConfig`] (an extra CA file added to the platform roots of
//! the SDK's rustls client; tested through a TLS proxy with a private CA, and refused
//! without it), the namespace, connect and request timeouts (every request, retries included,
//! ends with [`Timeout`](kv_core::Error::Timeout) past `request_timeout`), the SDK's retry
//! attempts, and the watch/lock intervals. [`Config::from_url`] reads the same from
//! `dynamodb://TABLE?…`. Errors map to the contract's variants: connection failures →
//! `Unavailable`, throttling and 5xx → `Unavailable`, signature/unknown-key/access-denied →
//! `PermissionDenied`, timeouts → `Timeout`. No call blocks the runtime: the SDK is async;
//! the CA file is read on the blocking pool.

mod clock;
mod config;
mod item;
mod lock;
mod store;
mod table;
mod txn;
mod watch;

pub use config::{Config, Credentials, TlsConfig, WatchMode};
pub use item::{
    ATTR_DEADLINE, ATTR_DELETED, ATTR_EXPIRES, ATTR_HEARTBEAT, ATTR_LEASE, ATTR_OWNER, ATTR_PK,
    ATTR_SK, ATTR_VALUE, ATTR_VERSION,
};
/// The contract this crate implements, re-exported so that depending on this crate alone is
/// enough: `use <this crate>::kv_core::{Store, ReadOptions, WriteOptions};`.
pub use kv_core;
pub use store::DynamoStore;
