//! [`ConsulStore`]: the [`Store`] implementation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kv_core::key::{child_prefix, is_descendant, normalize_key};
use kv_core::ttl::now_millis;
use kv_core::{
    Capabilities, Error, KvPair, Lock, LockOptions, ReadOptions, Result, Store, TaskSet,
    Transaction, WatchStream, WatchTreeStream, WriteOptions,
};

use crate::client::{
    BACKEND, Client, Cond, Entry, TxnAnswer, TxnOutcome, txn_cond, txn_op, txn_write,
};
use crate::config::Config;
use crate::tree;

/// Largest value accepted: every write is one `/v1/txn` request, whose whole body (the value
/// base64-encoded, plus the operations) Consul caps at `txn_max_req_len` = 512 KiB by default.
/// 378 KiB of value is 504 KiB of base64, leaving 8 KiB for keys and JSON.
pub const MAX_VALUE_LEN: usize = 378 * 1024;

/// How long past its TTL a key may still be seen (`Capabilities::ttl_precision`): 250 ms
/// for round trips and timers, plus 1 s for the two estimates of the server's clock (writer's
/// and reader's, each within half the `Date` header's 1 s resolution).
pub(crate) const TTL_PRECISION: Duration = Duration::from_millis(1250);

/// Consul's default `session_ttl_min`, used when the agent's configuration cannot be read.
const DEFAULT_SESSION_TTL_MIN: Duration = Duration::from_secs(10);

/// The tag in the top 16 bits of `Flags` that marks a deadline in the low 48 bits ("KV").
const FLAGS_TAG: u64 = 0x4B56;

/// Bit 47: flipped when a write would leave the entry exactly as it is, because Consul skips
/// such writes without raising `ModifyIndex`, and every write must raise `last_index`.
const FLAGS_REWRITE: u64 = 1 << 47;
const FLAGS_DEADLINE_MASK: u64 = FLAGS_REWRITE - 1;

/// The `Flags` word written with a value: 0 without TTL, else the tag and the deadline.
pub(crate) fn flags_for(deadline: Option<u64>) -> u64 {
    deadline.map_or(0, |d| (FLAGS_TAG << 48) | (d & FLAGS_DEADLINE_MASK))
}

/// `Flags` with the rewrite marker alone (no deadline): what a rewrite of a key whose
/// `Flags` are 0 writes.
pub(crate) fn flags_rewritten() -> u64 {
    (FLAGS_TAG << 48) | FLAGS_REWRITE
}

/// The `Flags` to write so that the write really happens: when the entry would not change
/// (same value, same flags, no session involved), the rewrite marker is toggled.
pub(crate) fn effective_flags(
    current: Option<&Entry>,
    value: &[u8],
    flags: u64,
    session: Option<&str>,
) -> u64 {
    match current {
        Some(entry)
            if session.is_none()
                && entry.session.is_none()
                && entry.flags == flags
                && entry.value == value =>
        {
            if flags == 0 {
                flags_rewritten()
            } else if flags == flags_rewritten() {
                0
            } else {
                flags ^ FLAGS_REWRITE
            }
        }
        _ => flags,
    }
}

/// The deadline (the server's Unix milliseconds) recorded in `Flags`, if this crate wrote one.
pub(crate) fn deadline_of(flags: u64) -> Option<u64> {
    let deadline = flags & FLAGS_DEADLINE_MASK;
    (flags >> 48 == FLAGS_TAG && deadline != 0).then_some(deadline)
}

/// True when an entry is visible at server time `now` (Unix ms, see [`Inner::server_now`]):
/// its deadline, if any, has not passed.
pub(crate) fn is_live(entry: &Entry, now: u64) -> bool {
    deadline_of(entry.flags).is_none_or(|d| d > now)
}

/// A handle to a Consul agent's KV store. See the [crate documentation](crate) for the storage
/// layout and how each part of the contract is met.
#[derive(Debug, Clone)]
pub struct ConsulStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) client: Arc<Client>,
    pub(crate) caps: Capabilities,
    pub(crate) tasks: TaskSet,
    /// The namespace prefix, `""` or `"ns/"` (with the slash).
    pub(crate) prefix: String,
    pub(crate) session_ttl_min: Duration,
    /// Key versions known to carry no TTL deadline (the transaction fast path's pins).
    pub(crate) timeless: crate::txn::Timeless,
}

impl Inner {
    /// The Consul key of a normalised key.
    pub(crate) fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The Consul key prefix of everything strictly below a normalised directory.
    fn full_children(&self, directory: &str) -> String {
        format!("{}{}", self.prefix, child_prefix(directory))
    }

    /// The normalised, namespace-relative key of a Consul key, if it is one of ours and valid.
    pub(crate) fn relative(&self, full: &str) -> Option<String> {
        let key = full.strip_prefix(&self.prefix)?;
        match normalize_key(key) {
            Ok(normalized) if normalized == key => Some(normalized),
            _ => None,
        }
    }

    /// The server's time now as this handle estimates it (Unix ms): what TTL deadlines are
    /// written in and judged against, never the local wall clock (see `crate::clock`).
    pub(crate) fn server_now(&self) -> u64 {
        self.client.clock.now_millis()
    }

    /// The pair an entry stands for at server time `now`, if it is live and ours.
    pub(crate) fn pair_at(&self, entry: &Entry, now: u64) -> Option<KvPair> {
        if !is_live(entry, now) {
            return None;
        }
        Some(KvPair {
            key: self.relative(&entry.key)?,
            value: entry.value.clone(),
            last_index: entry.modify_index,
        })
    }

    /// A `list`-shaped snapshot of `directory` from raw entries: live, ours, below it, sorted.
    pub(crate) fn snapshot(&self, directory: &str, entries: &[Entry]) -> Vec<KvPair> {
        self.snapshot_at(directory, entries, self.server_now())
    }

    /// [`Inner::snapshot`] at server time `now`.
    pub(crate) fn snapshot_at(&self, directory: &str, entries: &[Entry], now: u64) -> Vec<KvPair> {
        let mut pairs: Vec<KvPair> = entries
            .iter()
            .filter_map(|e| self.pair_at(e, now))
            .filter(|p| is_descendant(directory, &p.key))
            .collect();
        pairs.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        pairs
    }

    /// The session TTL giving an invalidation after about `ttl`: Consul invalidates a session
    /// at twice its TTL, so half of it, but never below the agent's minimum.
    pub(crate) fn session_ttl(&self, ttl: Duration) -> Duration {
        let half = Duration::from_millis((ttl.as_millis() as u64).div_ceil(2));
        half.max(self.session_ttl_min)
    }

    /// Reads the raw entry (expired or not).
    pub(crate) async fn read(&self, full: &str, consistent: bool) -> Result<Option<Entry>> {
        Ok(self.client.kv_get(full, consistent, None).await?.0)
    }

    /// One write transaction: optional condition, detach the current holder session (so that a
    /// plain value is never deleted by an old TTL session or a lock holder's session), then
    /// `set`, or `lock` with `session` for TTL and lock keys.
    pub(crate) async fn write(
        &self,
        full: &str,
        value: &[u8],
        flags: u64,
        cond: Option<Cond>,
        holder: Option<&str>,
        session: Option<&str>,
    ) -> Result<TxnOutcome> {
        let mut ops = Vec::with_capacity(3);
        if let Some(cond) = cond {
            ops.push(txn_cond(cond, full));
        }
        if let Some(holder) = holder {
            ops.push(txn_write("unlock", full, b"", 0, Some(holder)));
        }
        match session {
            Some(session) => ops.push(txn_write("lock", full, value, flags, Some(session))),
            None => ops.push(txn_write("set", full, value, flags, None)),
        }
        self.client.txn(ops, "put").await
    }

    /// Notes a version written without session or TTL (see `crate::txn::Timeless`).
    pub(crate) fn note_plain(&self, full: &str, index: u64, flags: u64) {
        let version = crate::txn::Version {
            index,
            flags: Some(flags),
            session: false,
        };
        self.timeless.note(&self.client, full, version);
    }

    /// Backs off a little after a lost race, with jitter, so that contending writers spread out.
    pub(crate) async fn conflict_pause(attempt: u32) {
        let jitter = (now_millis() ^ u64::from(attempt).wrapping_mul(0x9E37_79B9)) % 7;
        let ms = (u64::from(attempt.min(8)) * 3 + jitter).min(50);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Creates a TTL session for a key write (best-effort destroyed by the caller on failure).
    pub(crate) async fn ttl_session(&self, key: &str, ttl: Duration) -> Result<String> {
        self.client
            .session_create(self.session_ttl(ttl), "delete", &format!("kv-rs ttl {key}"))
            .await
    }

    pub(crate) async fn destroy_quietly(&self, session: &str) {
        if let Err(error) = self.client.session_destroy(session).await {
            tracing::debug!(%error, session, "could not destroy an unused session; it expires by itself");
        }
    }

    async fn put_with(
        &self,
        full: &str,
        value: &[u8],
        ttl: Option<Duration>,
        session: Option<&str>,
    ) -> Result<u64> {
        let started = Instant::now();
        let mut attempt = 0;
        if session.is_none()
            && let Some(index) = self.put_fast(full, value, ttl).await?
        {
            self.note_plain(full, index, 0);
            return Ok(index);
        }
        loop {
            let current = self.read(full, true).await?;
            let cond = match &current {
                None => Cond::NotExists,
                Some(entry) => Cond::Index(entry.modify_index),
            };
            let holder = current.as_ref().and_then(|e| e.session.as_deref());
            let flags = flags_for(ttl.map(|ttl| self.client.clock.deadline(ttl)));
            let flags = effective_flags(current.as_ref(), value, flags, session);
            match self
                .write(full, value, flags, Some(cond), holder, session)
                .await?
            {
                TxnOutcome::Committed(index) => {
                    if session.is_none() {
                        self.note_plain(full, index, flags);
                    }
                    return Ok(index);
                }
                TxnOutcome::RolledBack(op, what) => {
                    tracing::debug!(op, %what, "put lost a race, retrying");
                }
            }
            attempt += 1;
            if started.elapsed() > self.client.request_timeout {
                return Err(Error::Timeout {
                    backend: BACKEND,
                    operation: "put",
                    after: self.client.request_timeout,
                });
            }
            Self::conflict_pause(attempt).await;
        }
    }

    /// A put without a session in ONE round trip, whatever the key's state, instead of a
    /// read and a conditional write: `delete`, then `set`, in one transaction. The `delete`
    /// detaches any session holding the key (a TTL or a lock, which a plain put must
    /// release) and works on a missing key; the `set` then creates a fresh entry, so
    /// `ModifyIndex` always rises, also when the value and flags are unchanged (Consul skips
    /// an identical `set` over an existing entry). Before, a rewrite of the same value and a
    /// create each took two transactions. `None` when Consul refused it: the general path
    /// decides.
    async fn put_fast(
        &self,
        full: &str,
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Option<u64>> {
        let flags = flags_for(ttl.map(|ttl| self.client.clock.deadline(ttl)));
        let ops = vec![
            txn_op("delete", full),
            txn_write("set", full, value, flags, None),
        ];
        Ok(match self.client.txn(ops, "put").await? {
            TxnOutcome::Committed(index) => Some(index),
            TxnOutcome::RolledBack(..) => None,
        })
    }

    /// An `atomic_put` without a session in ONE round trip when it succeeds, instead of a
    /// read and a conditional write: create-only is `check-not-exists` + `set`; a swap is
    /// `get`, `check-index` (the caller's version), `check-session ""` (a key held by a
    /// session — a TTL or a lock — takes the general path, which releases it) and `set`.
    /// `None` when nothing was written: the general path then reads the key and gives the
    /// verdict (exists, expired, modified, gone), or writes (an identical rewrite, which
    /// Consul skipped without raising `ModifyIndex`, is redone there with the rewrite
    /// marker). A key without a session is never expired: this crate writes a deadline
    /// only together with a TTL session whose end deletes the key.
    async fn cas_fast(
        &self,
        full: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        ttl: Option<Duration>,
    ) -> Result<Option<u64>> {
        let flags = flags_for(ttl.map(|ttl| self.client.clock.deadline(ttl)));
        let Some(previous) = previous else {
            let ops = vec![
                txn_cond(Cond::NotExists, full),
                txn_write("set", full, value, flags, None),
            ];
            return Ok(match self.client.txn(ops, "atomic_put").await? {
                TxnOutcome::Committed(index) => Some(index),
                TxnOutcome::RolledBack(..) => None,
            });
        };
        let ops = vec![
            txn_op("get", full),
            txn_cond(Cond::Index(previous.last_index), full),
            serde_json::json!({ "KV": { "Verb": "check-session", "Key": full, "Session": "" } }),
            txn_write("set", full, value, flags, None),
        ];
        match self.client.txn_answer(ops, "atomic_put", false).await? {
            TxnAnswer::Committed { mut entries, .. } => {
                let (Some(written), Some(before)) = (entries.pop(), entries.into_iter().next())
                else {
                    return Ok(None);
                };
                Ok((written.modify_index != before.modify_index).then_some(written.modify_index))
            }
            TxnAnswer::RolledBack(_) => Ok(None),
        }
    }

    async fn atomic_put_with(
        &self,
        key: &str,
        value: &[u8],
        previous: Option<&KvPair>,
        ttl: Option<Duration>,
        session: Option<&str>,
    ) -> Result<KvPair> {
        let full = self.full(key);
        if session.is_none()
            && let Some(index) = self.cas_fast(&full, value, previous, ttl).await?
        {
            self.note_plain(&full, index, 0);
            return Ok(KvPair {
                key: key.to_owned(),
                value: Bytes::copy_from_slice(value),
                last_index: index,
            });
        }
        let mut attempt = 0;
        loop {
            let current = self.read(&full, true).await?;
            let now = self.server_now();
            let live = current.as_ref().filter(|e| is_live(e, now));
            let cond = match (previous, live, &current) {
                (None, Some(_), _) => {
                    return Err(Error::KeyExists {
                        key: key.to_owned(),
                    });
                }
                (None, None, None) => Cond::NotExists,
                // An expired key that Consul has not removed yet counts as absent.
                (None, None, Some(expired)) => Cond::Index(expired.modify_index),
                (Some(_), None, _) => {
                    return Err(Error::KeyNotFound {
                        key: key.to_owned(),
                    });
                }
                (Some(prev), Some(entry), _) if entry.modify_index != prev.last_index => {
                    return Err(Error::KeyModified {
                        key: key.to_owned(),
                    });
                }
                (Some(prev), Some(_), _) => Cond::Index(prev.last_index),
            };
            let holder = current.as_ref().and_then(|e| e.session.as_deref());
            let flags = flags_for(ttl.map(|ttl| self.client.clock.deadline(ttl)));
            let flags = effective_flags(current.as_ref(), value, flags, session);
            match self
                .write(&full, value, flags, Some(cond), holder, session)
                .await?
            {
                TxnOutcome::Committed(index) => {
                    if session.is_none() {
                        self.note_plain(&full, index, flags);
                    }
                    return Ok(KvPair {
                        key: key.to_owned(),
                        value: Bytes::copy_from_slice(value),
                        last_index: index,
                    });
                }
                TxnOutcome::RolledBack(op, what) => {
                    // Re-read: the verdict (exists, modified, gone) comes from the new state.
                    tracing::debug!(op, %what, "atomic_put lost a race, re-reading");
                }
            }
            attempt += 1;
            if attempt > 50 {
                return Err(Error::backend(BACKEND, "atomic_put kept conflicting"));
            }
            Self::conflict_pause(attempt).await;
        }
    }
}

impl ConsulStore {
    /// Connects: checks that the agent answers and has a leader (else [`Error::Unavailable`]
    /// or [`Error::Timeout`]), and reads its `session_ttl_min` unless the config gives it.
    pub async fn connect(config: Config) -> Result<ConsulStore> {
        let client = Client::new(&config)?;
        client.status_leader().await?;
        let session_ttl_min = match config.session_ttl_min {
            Some(ttl) => ttl,
            None => client
                .session_ttl_min()
                .await
                .unwrap_or(DEFAULT_SESSION_TTL_MIN),
        };
        let prefix = if config.namespace.is_empty() {
            String::new()
        } else {
            format!("{}/", config.namespace)
        };
        let mut caps = Capabilities::full(BACKEND);
        caps.max_value_len = MAX_VALUE_LEN;
        // Keys: the deadline filter makes any TTL exact; 1 s keeps it meaningful. Sessions
        // accept at most 24 h, and a lock's session TTL is half the lock's.
        caps.min_ttl = Duration::from_secs(1);
        caps.max_ttl = Duration::from_secs(24 * 3600);
        // Deadlines are in the server's time, which each handle knows from `Date` headers of
        // 1 s resolution: the writer's and the reader's estimates are each off by at most
        // half a second plus half a round trip (see `crate::clock`), so a key can be seen up
        // to 1 s late beyond the 250 ms this backend needed before (round trips, timers).
        caps.ttl_precision = TTL_PRECISION;
        caps.max_key_len = kv_core::key::MAX_KEY_LEN;
        // `/v1/txn` takes 64 operations; a put can need two of them (see `crate::txn`). A
        // transaction is one state-store write at one Raft index, and a tree watch's snapshot
        // is one listing: never part of a transaction.
        let caps = caps.with_transactions(crate::txn::MAX_TRANSACTION_OPS, true);
        Ok(ConsulStore {
            inner: Arc::new(Inner {
                client: Arc::new(client),
                caps,
                tasks: TaskSet::new(),
                prefix,
                session_ttl_min,
                timeless: crate::txn::Timeless::default(),
            }),
        })
    }

    /// Connects with [`Config::from_url`].
    pub async fn connect_url(url: &str) -> Result<ConsulStore> {
        Self::connect(Config::from_url(url)?).await
    }

    /// How many HTTP requests this handle (with its clones, watches and lock tasks) has sent
    /// to Consul so far, each endpoint tried counting once. A diagnostic: it shows how many
    /// round trips an operation took.
    pub fn requests_sent(&self) -> u64 {
        self.inner
            .client
            .requests
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The agent's `session_ttl_min` this handle works with.
    pub fn session_ttl_min(&self) -> Duration {
        self.inner.session_ttl_min
    }

    /// How many times this handle found that the server had lost its state (its KV index
    /// went below one the handle had seen: a restarted dev agent, a rebuilt cluster, a
    /// restored snapshot). Each time, the watches opened and the locks held before ended (see
    /// the [crate documentation](crate#when-the-server-loses-its-state)). Per handle: a handle
    /// created after a loss starts at 0.
    pub fn state_losses(&self) -> u64 {
        self.inner.client.epoch.generation()
    }

    fn check_write(
        &self,
        key: &str,
        value: &[u8],
        options: &WriteOptions,
    ) -> Result<(String, Option<Duration>)> {
        self.inner.tasks.ensure_open()?;
        let caps = &self.inner.caps;
        let key = caps.check_key(key)?;
        caps.check_value(&key, value)?;
        let ttl = caps.check_ttl(options.ttl)?;
        Ok((key, ttl))
    }
}

#[async_trait]
impl Store for ConsulStore {
    fn capabilities(&self) -> &Capabilities {
        &self.inner.caps
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn put(&self, key: &str, value: Bytes, options: WriteOptions) -> Result<()> {
        let (key, ttl) = self.check_write(key, &value, &options)?;
        let inner = &self.inner;
        let full = inner.full(&key);
        let session = match ttl {
            Some(ttl) => Some(inner.ttl_session(&key, ttl).await?),
            None => None,
        };
        let result = inner.put_with(&full, &value, ttl, session.as_deref()).await;
        if let (Err(_), Some(session)) = (&result, &session) {
            inner.destroy_quietly(session).await;
        }
        result.map(|_| ())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn get(&self, key: &str, options: ReadOptions) -> Result<Option<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let entry = self
            .inner
            .read(&self.inner.full(&key), options.consistent)
            .await?;
        if let Some(entry) = &entry
            && deadline_of(entry.flags).is_none()
        {
            let version = crate::txn::Version {
                index: entry.modify_index,
                flags: Some(entry.flags),
                session: entry.session.is_some(),
            };
            self.inner
                .timeless
                .note(&self.inner.client, &entry.key, version);
        }
        Ok(entry.and_then(|e| self.inner.pair_at(&e, self.inner.server_now())))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn delete(&self, key: &str) -> Result<bool> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full(&key);
        // One transaction: `get` reports the entry the `delete` removes (and fails the
        // transaction when there is none), instead of a read and a conditional delete.
        let ops = vec![txn_op("get", &full), txn_op("delete", &full)];
        match self.inner.client.txn_answer(ops, "delete", false).await? {
            // An expired key Consul had not removed yet is cleaned up and reported absent.
            TxnAnswer::Committed { entries, .. } => Ok(entries
                .first()
                .is_some_and(|entry| is_live(entry, self.inner.server_now()))),
            // Only the `get` can fail: the key does not exist.
            TxnAnswer::RolledBack(_) => Ok(false),
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn list(&self, directory: &str, options: ReadOptions) -> Result<Vec<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        let (entries, _) = self
            .inner
            .client
            .kv_list(
                &self.inner.full_children(&directory),
                options.consistent,
                None,
            )
            .await?;
        Ok(self.inner.snapshot(&directory, &entries))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn delete_tree(&self, directory: &str) -> Result<()> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        // Exactly what `list` shows, plus the directory key: see `crate::tree`.
        let children = self.inner.full_children(&directory);
        let keys: Vec<(String, bool)> = self
            .inner
            .client
            .kv_keys(&children)
            .await?
            .into_iter()
            .map(|key| {
                let shown = self.inner.relative(&key).is_some();
                (key, shown)
            })
            .collect();
        let mut ops = Vec::new();
        if !directory.is_empty() {
            ops.push(txn_op("delete", &self.inner.full(&directory)));
        }
        ops.extend(tree::plan(&children, &keys).iter().map(|d| d.op()));
        if ops.len() > tree::MAX_TXN_OPS {
            tracing::debug!(
                ops = ops.len(),
                "delete_tree: more operations than one transaction holds, deleting in several"
            );
        }
        for chunk in ops.chunks(tree::MAX_TXN_OPS) {
            if let TxnOutcome::RolledBack(op, what) =
                self.inner.client.txn(chunk.to_vec(), "delete_tree").await?
            {
                return Err(Error::backend(
                    BACKEND,
                    format!("delete_tree transaction failed at operation {op}: {what}"),
                ));
            }
        }
        Ok(())
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_put(
        &self,
        key: &str,
        value: Bytes,
        previous: Option<&KvPair>,
        options: WriteOptions,
    ) -> Result<KvPair> {
        let (key, ttl) = self.check_write(key, &value, &options)?;
        let inner = &self.inner;
        let session = match ttl {
            Some(ttl) => Some(inner.ttl_session(&key, ttl).await?),
            None => None,
        };
        let result = inner
            .atomic_put_with(&key, &value, previous, ttl, session.as_deref())
            .await;
        if let (Err(_), Some(session)) = (&result, &session) {
            inner.destroy_quietly(session).await;
        }
        result
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn atomic_delete(&self, key: &str, previous: &KvPair) -> Result<()> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        let full = self.inner.full(&key);
        let current = self.inner.read(&full, true).await?;
        match current.filter(|e| is_live(e, self.inner.server_now())) {
            None => Err(Error::KeyNotFound { key }),
            Some(entry) if entry.modify_index != previous.last_index => {
                Err(Error::KeyModified { key })
            }
            Some(_) => {
                if self
                    .inner
                    .client
                    .kv_delete_cas(&full, previous.last_index)
                    .await?
                {
                    return Ok(());
                }
                let current = self.inner.read(&full, true).await?;
                match current.filter(|e| is_live(e, self.inner.server_now())) {
                    None => Err(Error::KeyNotFound { key }),
                    Some(_) => Err(Error::KeyModified { key }),
                }
            }
        }
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        self.inner.tasks.ensure_open()?;
        let txn = self.capabilities().check_transaction(txn)?;
        self.inner.transaction(txn).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn watch(&self, key: &str, options: ReadOptions) -> Result<WatchStream> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_key(key)?;
        crate::watch::watch_key(self.inner.clone(), key, options.consistent).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, directory = %directory))]
    async fn watch_tree(&self, directory: &str, options: ReadOptions) -> Result<WatchTreeStream> {
        self.inner.tasks.ensure_open()?;
        let directory = self.inner.caps.check_directory(directory)?;
        let prefix = self.inner.full_children(&directory);
        crate::watch::watch_tree(self.inner.clone(), directory, prefix, options.consistent).await
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND, key = %key))]
    async fn new_lock(&self, key: &str, options: LockOptions) -> Result<Lock> {
        self.inner.tasks.ensure_open()?;
        let key = self.inner.caps.check_lock(key, &options)?;
        let backend = crate::lock::ConsulLock::new(self.inner.clone(), &key, options);
        Ok(Lock::new(key, Arc::new(backend), self.inner.tasks.clone()))
    }

    #[tracing::instrument(level = "debug", skip_all, fields(backend = BACKEND))]
    async fn close(&self) -> Result<()> {
        // Releases held locks (destroying their sessions deletes their keys), then stops every
        // watch and renewal task. The HTTP client's pool closes with the last handle.
        self.inner
            .tasks
            .close(self.inner.client.request_timeout)
            .await;
        Ok(())
    }

    fn background_tasks(&self) -> usize {
        self.inner.tasks.running()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_layout() {
        assert_eq!(flags_for(None), 0);
        let f = flags_for(Some(1_700_000_000_000));
        assert_eq!(f >> 48, 0x4B56);
        assert_eq!(deadline_of(f), Some(1_700_000_000_000));
        assert_eq!(deadline_of(0), None);
        assert_eq!(deadline_of(42), None);
        let rewrite = (0x4B56 << 48) | (1 << 47);
        assert_eq!(
            deadline_of(rewrite),
            None,
            "the rewrite marker is no deadline"
        );
        // Consul's own api.Lock flag value is not mistaken for a deadline.
        assert_eq!(deadline_of(0x2ddc_cbc0_58a5_0c18), None);
    }
}
