//! # kv-nats: the `kv-core` contract on NATS JetStream KV
//!
//! A [`kv_core::Store`] backed by a NATS JetStream key/value bucket (nats-server 2.11 or later
//! for per-message TTLs; tested on 2.15.2) through the [`async-nats`](https://docs.rs/async-nats)
//! client. The bucket is an ordinary JetStream KV bucket (stream `KV_<bucket>`, subjects
//! `$KV.<bucket>.>`): `nats kv get/watch/history` and other KV clients see the same keys.
//!
//! ```no_run
//! use kv_core::{ReadOptions, Store, WriteOptions};
//! use kv_nats::{Config, NatsStore};
//!
//! # async fn demo() -> kv_core::Result<()> {
//! let store = NatsStore::connect(Config::from_url("nats://127.0.0.1:4222/kv?namespace=app")?).await?;
//! store.put("a/b", "hello".into(), WriteOptions::default()).await?;
//! let pair = store.get("a/b", ReadOptions::default()).await?.unwrap();
//! store.atomic_put("a/b", "world".into(), Some(&pair), WriteOptions::default()).await?;
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## The bucket
//!
//! [`NatsStore::connect`] opens `KV_<bucket>` (default bucket `kv`) or creates it with
//! [`Config::history`] revisions per key (default 1), [`Config::replicas`],
//! [`Config::storage`] (file by default), `allow_msg_ttl` (per-message TTL) and
//! `subject_delete_marker_ttl` 15 min (the server writes a marker when a key expires, so
//! watchers see expiries). An existing bucket without `allow_msg_ttl` is refused with
//! [`kv_core::Error::Config`].
//!
//! ## Keys and subjects
//!
//! Each key segment is one subject token (`a/b/c` → `$KV.<bucket>.[<namespace tokens>.]a.b.c`),
//! so a directory is a subject wildcard (`list("a/b")` reads `….a.b.>`). Inside a token the
//! bytes of the segment's UTF-8 that are ASCII letters, digits or `-` stay as they are; every
//! other byte is `_XX` (upper-case hex): `.` → `_2E`, `*` → `_2A`, `>` → `_3E`, space → `_20`,
//! `_` → `_5F`, `é` → `_C3_A9`. Tokens are never empty nor wildcards, use only `[A-Za-z0-9_-]`,
//! and the mapping is a bijection on valid keys (the conformance suite's key cases round-trip;
//! a subject in the bucket that is not the canonical encoding of a valid key is ignored). A
//! key whose subject would exceed [`MAX_SUBJECT_LEN`] bytes (NATS' 4096-byte control line) is
//! [`kv_core::Error::InvalidKey`]: 1024 ASCII-alphanumeric bytes always fit; a key of
//! non-ASCII characters takes 3 bytes per UTF-8 byte.
//!
//! ## How the contract is met
//!
//! * **`last_index`** = the revision (stream sequence) of the key's last message. A delete is
//!   a `KV-Operation: DEL` marker message (like `nats kv del`), an expiry a server marker
//!   (`Nats-Marker-Reason`): both take a new sequence, so a re-created key's index is above
//!   every earlier one. Sequences never go back on a stream with file storage, also across a
//!   server restart (tested); with [`Storage::Memory`] a restart loses keys *and* restarts
//!   revisions from 1.
//! * **CAS**: `Nats-Expected-Last-Subject-Sequence`. `atomic_put(k, v, Some(prev))` expects
//!   `prev.last_index`; create-only expects 0, or the revision of the delete/expiry marker it
//!   finds (retried if that moves). On a refusal the key is re-read to report `KeyNotFound`,
//!   `KeyModified` or `KeyExists`.
//! * **`get`**: the last message of the key's subject from the stream leader
//!   (`STREAM.MSG.GET`); with `ReadOptions::stale()` a direct get, which any replica may answer.
//! * **`list`, `watch`, `watch_tree`**: an ordered push consumer with
//!   `DeliverPolicy::LastPerSubject` on the key's subject or the directory's wildcard: the
//!   last message of every subject first (the current snapshot, complete when the consumer's
//!   pending count is 0), then every new message. Watches keep the consumer: the ordered
//!   consumer recreates itself after gaps and reconnects; if that fails the loop starts over
//!   from a fresh snapshot (states never go backwards). `list` is not a point-in-time snapshot
//!   across subjects (a key written during the scan may or may not appear).
//! * **TTL**: the server's per-message TTL (`Nats-TTL`), in whole seconds: a TTL is rounded up
//!   to the next second (`min_ttl` 1 s). Expiry measured ~20 ms late on the test server; the
//!   declared `ttl_precision` is 1.5 s (rounding + the server's 250 ms-minimum expiry timer).
//!   A write without TTL is permanent. Expiry is on the server's clock: no client clock is used.
//! * **`delete_tree`**: the keys listed under the directory, plus the directory key, are each
//!   deleted with a marker pinned to the revision read (a key rewritten meanwhile is re-read and
//!   deleted). **It is not atomic**: JetStream's stream purge is atomic but leaves no marker, so
//!   watchers would never see the deletion; and a key created under the directory after the
//!   listing survives the call.
//! * **Locks** (`kv_core::lock`): acquiring = create-only write of the lock value with the
//!   lock's TTL and a random owner token header (`Kv-Lock-Owner`); waiters wake on messages
//!   published to the key's subject (a core subscription) and poll every
//!   [`Config::lock_poll_interval`] for expiries. Renewal (`keep_alive`, every `ttl/3`)
//!   re-publishes the value with the TTL, pinned to the holder's last revision: any other write
//!   or delete of the key makes it fail and marks the lease lost. Release deletes the key
//!   pinned the same way. **Fencing token = the revision of the acquiring write**; tokens rise
//!   with every acquisition. Deviation: each renewal is a new revision, so the key's
//!   `last_index` equals the token only until the first renewal (`ttl/3`).
//! * **Transactions**: not supported (`Capabilities::transactions` is false;
//!   [`kv_core::Store::transaction`] returns `NotSupported`, which the conformance suite
//!   checks). JetStream KV has no multi-key commit with conditions on keys that are not
//!   written; atomic batch publish (2.12) is not used.
//! * **Errors**: connection refused or lost → `Unavailable`; bad credentials → `PermissionDenied`;
//!   every call bounded by [`Config::request_timeout`] → `Timeout`; JetStream off → `Config`.
//! * **Tasks**: watch loops and lock renewals run on the handle's `TaskSet`; `close()`
//!   releases locks, ends watches with `Closed`, then drains the connection.

mod config;
mod lock;
mod store;
mod subject;
mod watch;

pub use config::{
    Auth, Config, ConfigBuilder, DEFAULT_BUCKET, DEFAULT_MAX_VALUE_LEN, Storage, TlsConfig,
};
pub use kv_core;
pub use store::{MAX_SUBJECT_LEN, NatsStore};
