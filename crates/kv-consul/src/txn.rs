//! [`Store::transaction`](kv_core::Store::transaction) on Consul's `/v1/txn`.
//!
//! Each attempt is two transactions:
//!
//! 1. **Read** (reads and checks only, answered in Consul's `consistent` mode, so from one
//!    linearizable state): `get` of every key a condition or a put names — or
//!    `check-not-exists` for a key the previous round found absent, since a `get` of an
//!    absent key fails the whole read. A failed read names every operation that failed, so
//!    the next round flips exactly those; it converges at once unless the keys keep
//!    appearing and disappearing.
//! 2. The conditions are evaluated on that one state with
//!    [`Transaction::first_failure`] (an entry past its TTL deadline counts as absent, as for
//!    every read): a failing condition is reported from a state the store really had, at
//!    the moment of the read.
//! 3. **Write**, committed through Raft in one step: every condition's key *pinned* to the
//!    state it was judged on (`check-index` on its `ModifyIndex`, or `check-not-exists`),
//!    then each operation exactly as `put`/`delete` write it: a put is `cas` on the index
//!    read (no session involved), `unlock` of the holding session carrying the new value
//!    (a TTL key or a lock's key becomes a plain value), or `lock` with a fresh TTL session
//!    (after that `unlock` if another session held the key); a delete is `delete`. If any of
//!    them fails (something changed since the read), Consul applies nothing and the attempt
//!    starts over with a new read, until the request timeout.
//!
//! So a committed transaction's conditions held in the very state it was applied to, and
//! no reader (`get`, `list`, blocking queries) ever sees part of it: Consul applies a
//! `/v1/txn` in one state-store transaction at one Raft index.
//!
//! # The fast path: one request in the common case
//!
//! Before the steps above, a transaction whose every condition and operation the server can
//! judge alone is sent as ONE `/v1/txn`:
//!
//! * `Absent` is `check-not-exists`. It passes only on a missing key, which is absent for
//!   readers too; a key past its TTL deadline that Consul still keeps makes it fail.
//! * `IndexEquals` and `LockHeld` are `check-index`, but only for a key version this handle
//!   has seen or written without a TTL deadline in `Flags` ([`Timeless`]): Consul cannot look
//!   at `Flags`, so for any other version a passing check could hide an expired entry.
//! * `Exists` is never sent this way (no check verb tells a live key from an expired one).
//! * A put without TTL is `delete` + `set`, as `Store::put` writes it: the `delete` drops any
//!   session holding the key (a TTL key or a lock's key becomes a plain value, as the
//!   `unlock` below does), and the fresh `set` always raises `ModifyIndex`. A delete is
//!   `delete`. A put with a TTL needs a session first, so it takes the steps above.
//! * A put whose key also has a condition is folded into it as one `cas` (what a raw client
//!   sends): `Absent` + put is `cas` at index 0 (create only); `IndexEquals`/`LockHeld` +
//!   put is `cas` at that index when the known version has no session (a `cas` would keep
//!   one) and known `Flags`. The `cas` writes the other of `Flags` 0 and the rewrite marker,
//!   so the entry always changes and `ModifyIndex` rises: Consul skips a write that changes
//!   nothing, and in a transaction of several writes that skip could not be redone alone.
//!
//! If Consul refuses that transaction (some check failed, or anything else), nothing was
//! written, and the steps above run from the start: they decide which condition failed and
//! why, from a state the store really had. So the fast path never decides a failure.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use futures::future::join_all;
use kv_core::{Condition, Error, KvPair, Operation, Result, Transaction};
use serde_json::{Value as Json, json};

use crate::client::{BACKEND, Client, Cond, Entry, TxnAnswer, txn_cond, txn_op, txn_write};
use crate::store::{Inner, effective_flags, flags_for, flags_rewritten, is_live};

/// The most conditions plus operations one transaction may hold
/// ([`Capabilities::max_transaction_ops`](kv_core::Capabilities::max_transaction_ops)).
///
/// Consul accepts at most 64 operations in one `/v1/txn` (`maxTxnOps`, fixed). A condition
/// and a delete are one operation each, but a put over a key held by a session (a TTL key,
/// a lock's key) that itself has a TTL is two (`unlock` of the old session, `lock` with the
/// new one): 32 items fit whatever the keys' state at commit time.
pub const MAX_TRANSACTION_OPS: usize = 32;

/// Consul's default `limits.txn_max_req_len`: the largest `/v1/txn` body (values in base64).
pub(crate) const TXN_MAX_REQ_LEN: usize = 512 * 1024;

/// A session ID's length, for the size bound (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
const SESSION_PLACEHOLDER: &str = "00000000-0000-0000-0000-000000000000";

/// The raw state of the keys an attempt reads (Consul key → entry, expired or not).
type Snapshot = HashMap<String, Option<Entry>>;

/// How many keys [`Timeless`] remembers before it starts over.
const TIMELESS_KEYS: usize = 4096;

/// One version of a key, as far as the fast path needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Version {
    /// Its `ModifyIndex`.
    pub(crate) index: u64,
    /// Its `Flags` (no deadline in them), when known.
    pub(crate) flags: Option<u64>,
    /// Whether a session holds it.
    pub(crate) session: bool,
}

/// Key versions this handle knows carry no TTL deadline: per Consul key, the last version
/// seen without a deadline in `Flags` (read by `get`, written by a put without TTL, or a
/// lock's acquiring write). A version never changes (a write, a session attached or
/// detached, all raise `ModifyIndex`), so `check-index` on it proves on the server alone that
/// the key exists AND is live. The set is bounded (cleared when full) and forgotten when the
/// server lost its state (indexes then restart and name other versions).
#[derive(Debug, Default)]
pub(crate) struct Timeless {
    known: Mutex<(u64, HashMap<String, Version>)>,
}

impl Timeless {
    /// Records that `full` at `version.index` has no deadline.
    pub(crate) fn note(&self, client: &Client, full: &str, version: Version) {
        let generation = client.epoch.generation();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        let (seen, map) = &mut *known;
        if *seen != generation {
            *seen = generation;
            map.clear();
        }
        if let Some(slot) = map.get_mut(full) {
            *slot = version;
            return;
        }
        if map.len() >= TIMELESS_KEYS {
            map.clear();
        }
        map.insert(full.to_owned(), version);
    }

    /// The version of `full` at `index`, if it is known to have no deadline.
    pub(crate) fn version(&self, client: &Client, full: &str, index: u64) -> Option<Version> {
        let generation = client.epoch.generation();
        let known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.0 != generation {
            return None;
        }
        known.1.get(full).copied().filter(|v| v.index == index)
    }
}

impl Inner {
    /// Commits a transaction already checked by `Capabilities::check_transaction` (keys
    /// normalised). See the [module docs](self).
    pub(crate) async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        if txn.conditions().is_empty() && txn.operations().is_empty() {
            return Ok(Vec::new());
        }
        self.check_body(&txn)?;
        if let Some(pairs) = self.transaction_fast(&txn).await? {
            return Ok(pairs);
        }
        let mut sessions = None;
        let result = self.transaction_with(&txn, &mut sessions).await;
        if result.is_err()
            && let Some(sessions) = sessions
        {
            join_all(sessions.iter().flatten().map(|s| self.destroy_quietly(s))).await;
        }
        result
    }

    /// Refuses, before anything is sent, a transaction whose `/v1/txn` body could exceed
    /// Consul's default `txn_max_req_len`: values are sent in base64, so two values near
    /// `MAX_VALUE_LEN` do not fit together. The bound assumes the longest form of every
    /// operation (two operations per put, session IDs, 20-digit indexes and flags).
    fn check_body(&self, txn: &Transaction) -> Result<()> {
        let mut ops = Vec::with_capacity(txn.conditions().len() + 2 * txn.operations().len());
        for condition in txn.conditions() {
            ops.push(json!({ "KV": {
                "Verb": "check-not-exists",
                "Key": self.full(condition.key()),
                "Index": u64::MAX,
            }}));
        }
        for operation in txn.operations() {
            let full = self.full(operation.key());
            match operation {
                Operation::Put { value, .. } => {
                    ops.push(txn_write(
                        "unlock",
                        &full,
                        b"",
                        u64::MAX,
                        Some(SESSION_PLACEHOLDER),
                    ));
                    let mut lock =
                        txn_write("lock", &full, value, u64::MAX, Some(SESSION_PLACEHOLDER));
                    lock["KV"]["Index"] = json!(u64::MAX);
                    ops.push(lock);
                }
                Operation::Delete { .. } => ops.push(txn_op("delete", &full)),
                _ => {
                    return Err(Error::InvalidOption(format!(
                        "the {BACKEND} backend does not know the transaction operation {operation:?}"
                    )));
                }
            }
        }
        let len = serde_json::to_vec(&ops)
            .map_err(|e| Error::backend(BACKEND, e))?
            .len();
        if len > TXN_MAX_REQ_LEN {
            return Err(Error::InvalidOption(format!(
                "the transaction's values together exceed what one Consul transaction carries \
                 (a request of up to {len} bytes with the values in base64, over \
                 txn_max_req_len = {TXN_MAX_REQ_LEN}): split it"
            )));
        }
        Ok(())
    }

    /// The one-request attempt (see the [module docs](self#the-fast-path-one-request-in-the-common-case)).
    /// `None` when it does not apply or Consul refused it: nothing was written, and the
    /// general path decides.
    async fn transaction_fast(&self, txn: &Transaction) -> Result<Option<Vec<KvPair>>> {
        let plain_put = |key: &str| {
            txn.operations().iter().find_map(|op| match op {
                Operation::Put {
                    key: k,
                    value,
                    options,
                } if k == key && options.ttl.is_none() => Some(value),
                _ => None,
            })
        };
        let mut ops = Vec::with_capacity(txn.conditions().len() + 2 * txn.operations().len());
        // Keys whose put is already in `ops`, merged with the key's condition.
        let mut merged: Vec<&str> = Vec::new();
        // The `Flags` each put writes, to note the new versions.
        let mut written: HashMap<String, u64> = HashMap::new();
        for condition in txn.conditions() {
            let key = condition.key();
            let full = self.full(key);
            match condition {
                Condition::Absent { .. } => match plain_put(key) {
                    // Create-only: `cas` at index 0.
                    Some(value) => {
                        ops.push(cas(&full, value, 0, 0));
                        merged.push(key);
                        written.insert(full, 0);
                    }
                    None => ops.push(txn_cond(Cond::NotExists, &full)),
                },
                Condition::IndexEquals { index, .. }
                | Condition::LockHeld {
                    fencing_token: index,
                    ..
                } => {
                    let Some(version) = self.timeless.version(&self.client, &full, *index) else {
                        return Ok(None);
                    };
                    match (plain_put(key), version.flags) {
                        // A version without session whose `Flags` are known: `cas` on its
                        // index, with other `Flags` (no deadline) than it has, so that Consul
                        // cannot skip the write as identical and `ModifyIndex` rises.
                        (Some(value), Some(flags)) if !version.session => {
                            let flags = if flags == 0 { flags_rewritten() } else { 0 };
                            ops.push(cas(&full, value, flags, *index));
                            merged.push(key);
                            written.insert(full, flags);
                        }
                        _ => ops.push(txn_cond(Cond::Index(*index), &full)),
                    }
                }
                _ => return Ok(None),
            }
        }
        for operation in txn.operations() {
            let full = self.full(operation.key());
            match operation {
                _ if merged.contains(&operation.key()) => {}
                Operation::Put { value, options, .. } if options.ttl.is_none() => {
                    ops.push(txn_op("delete", &full));
                    ops.push(txn_write("set", &full, value, 0, None));
                    written.insert(full, 0);
                }
                Operation::Delete { .. } => ops.push(txn_op("delete", &full)),
                _ => return Ok(None),
            }
        }
        // Conditions only: checks, answered from one linearizable state.
        let read_only = txn.operations().is_empty();
        match self
            .client
            .txn_answer(ops, "transaction", read_only)
            .await?
        {
            TxnAnswer::Committed { entries, .. } => {
                let pairs = self.pairs(txn, &entries)?;
                for pair in &pairs {
                    let full = self.full(&pair.key);
                    let flags = written.get(&full).copied();
                    let version = Version {
                        index: pair.last_index,
                        flags,
                        session: false,
                    };
                    self.timeless.note(&self.client, &full, version);
                }
                Ok(Some(pairs))
            }
            TxnAnswer::RolledBack(errors) => {
                tracing::debug!(?errors, "transaction fast path refused, reading the keys");
                Ok(None)
            }
        }
    }

    async fn transaction_with(
        &self,
        txn: &Transaction,
        sessions: &mut Option<Vec<Option<String>>>,
    ) -> Result<Vec<KvPair>> {
        // The keys whose state an attempt needs: every condition's, and every put's (whether a
        // session holds it, and its index for `cas`). Deletes need none.
        let mut keys: Vec<String> = Vec::new();
        let names = txn.conditions().iter().map(|c| c.key()).chain(
            txn.operations()
                .iter()
                .filter(|op| matches!(op, Operation::Put { .. }))
                .map(|op| op.key()),
        );
        for key in names {
            let full = self.full(key);
            if !keys.contains(&full) {
                keys.push(full);
            }
        }
        let mut exists: HashMap<String, bool> = HashMap::new();
        let started = Instant::now();
        let mut attempt = 0u32;
        loop {
            let snapshot = self.read_snapshot(&keys, &mut exists, started).await?;
            let now = self.server_now();
            let current = |key: &str| {
                snapshot
                    .get(&self.full(key))
                    .and_then(Option::as_ref)
                    .filter(|e| is_live(e, now))
                    .map(|e| e.modify_index)
            };
            if let Some(error) = txn.first_failure(current) {
                return Err(error);
            }
            if txn.operations().is_empty() {
                // Conditions only: they all held in one linearizable state.
                return Ok(Vec::new());
            }
            if sessions.is_none() {
                *sessions = Some(self.create_sessions(txn).await?);
            }
            let ops = self.write_ops(txn, &snapshot, sessions.as_deref().unwrap_or_default());
            match self.client.txn_answer(ops, "transaction", false).await? {
                TxnAnswer::Committed { entries, .. } => return self.pairs(txn, &entries),
                TxnAnswer::RolledBack(errors) => {
                    permission_error(&errors)?;
                    // A pinned key or a written key changed since the read: read again, and
                    // judge the conditions on the new state.
                    tracing::debug!(?errors, "transaction lost a race, re-reading");
                }
            }
            attempt += 1;
            if started.elapsed() > self.client.request_timeout {
                return Err(self.timeout());
            }
            Inner::conflict_pause(attempt).await;
        }
    }

    fn timeout(&self) -> Error {
        Error::Timeout {
            backend: BACKEND,
            operation: "transaction",
            after: self.client.request_timeout,
        }
    }

    /// Reads `keys` in one read-only transaction, answered from one linearizable state.
    /// `exists` carries what the last round found: a key believed absent is read with
    /// `check-not-exists` (a `get` of an absent key fails the whole read).
    async fn read_snapshot(
        &self,
        keys: &[String],
        exists: &mut HashMap<String, bool>,
        started: Instant,
    ) -> Result<Snapshot> {
        if keys.is_empty() {
            return Ok(Snapshot::new());
        }
        let mut rounds = 0u32;
        loop {
            let guess = |exists: &HashMap<String, bool>, key: &String| {
                exists.get(key).copied().unwrap_or(true)
            };
            let ops = keys
                .iter()
                .map(|key| {
                    if guess(exists, key) {
                        txn_op("get", key)
                    } else {
                        txn_cond(Cond::NotExists, key)
                    }
                })
                .collect();
            match self.client.txn_answer(ops, "transaction", true).await? {
                TxnAnswer::Committed { entries, .. } => {
                    let mut found: HashMap<String, Entry> =
                        entries.into_iter().map(|e| (e.key.clone(), e)).collect();
                    let snapshot: Snapshot = keys
                        .iter()
                        .map(|key| (key.clone(), found.remove(key)))
                        .collect();
                    for (key, entry) in &snapshot {
                        exists.insert(key.clone(), entry.is_some());
                    }
                    return Ok(snapshot);
                }
                TxnAnswer::RolledBack(errors) => {
                    permission_error(&errors)?;
                    for (op, what) in errors {
                        let Some(key) = keys.get(op) else {
                            return Err(Error::backend(
                                BACKEND,
                                format!("transaction read failed at operation {op}: {what}"),
                            ));
                        };
                        // `get`: "key … doesn't exist"; `check-not-exists`: "key … exists".
                        let believed = guess(exists, key);
                        let expected = if believed {
                            what.contains("doesn't exist")
                        } else {
                            what.ends_with("exists")
                        };
                        if !expected {
                            return Err(Error::backend(
                                BACKEND,
                                format!("transaction read failed at operation {op}: {what}"),
                            ));
                        }
                        exists.insert(key.clone(), !believed);
                    }
                }
            }
            rounds += 1;
            if started.elapsed() > self.client.request_timeout {
                return Err(self.timeout());
            }
            if rounds > 2 {
                // Keys appearing and disappearing under us: give the writers a moment.
                Inner::conflict_pause(rounds).await;
            }
        }
    }

    /// One TTL session per put with a TTL (`None` for the others), created concurrently,
    /// exactly like `put`'s: `kv-rs ttl <key>`, `Behavior=delete`.
    async fn create_sessions(&self, txn: &Transaction) -> Result<Vec<Option<String>>> {
        let created = join_all(txn.operations().iter().map(|op| async move {
            match op {
                Operation::Put { key, options, .. } => match options.ttl {
                    Some(ttl) => self.ttl_session(key, ttl).await.map(Some),
                    None => Ok(None),
                },
                _ => Ok(None),
            }
        }))
        .await;
        let mut sessions = Vec::with_capacity(created.len());
        let mut failure = None;
        for result in created {
            match result {
                Ok(session) => sessions.push(session),
                Err(error) => {
                    failure.get_or_insert(error);
                    sessions.push(None);
                }
            }
        }
        if let Some(error) = failure {
            join_all(sessions.iter().flatten().map(|s| self.destroy_quietly(s))).await;
            return Err(error);
        }
        Ok(sessions)
    }

    /// The write transaction: the conditions' keys pinned to `snapshot`, then every
    /// operation written as `put`/`delete` write it (see the module docs).
    fn write_ops(
        &self,
        txn: &Transaction,
        snapshot: &Snapshot,
        sessions: &[Option<String>],
    ) -> Vec<Json> {
        let entry = |full: &str| snapshot.get(full).and_then(Option::as_ref);
        let mut ops = Vec::with_capacity(txn.conditions().len() + 2 * txn.operations().len());
        for condition in txn.conditions() {
            let full = self.full(condition.key());
            let pin = match entry(&full) {
                Some(e) => Cond::Index(e.modify_index),
                None => Cond::NotExists,
            };
            ops.push(txn_cond(pin, &full));
        }
        // One clock reading for the whole transaction: puts with the same TTL get the same
        // deadline, and expire together.
        let now = self.client.clock.now_millis();
        for (i, operation) in txn.operations().iter().enumerate() {
            let full = self.full(operation.key());
            let Operation::Put { value, options, .. } = operation else {
                ops.push(txn_op("delete", &full));
                continue;
            };
            let current = entry(&full);
            let deadline = options
                .ttl
                .map(|ttl| now.saturating_add(ttl.as_millis() as u64));
            let session = sessions.get(i).and_then(Option::as_deref);
            let holder = current.and_then(|e| e.session.as_deref());
            let flags = effective_flags(current, value, flags_for(deadline), session);
            match (holder, session) {
                // No session on either side: a plain `set`, pinned to the index read (so the
                // rewrite marker computed from it is right).
                (None, None) => {
                    let mut cas = txn_write("cas", &full, value, flags, None);
                    cas["KV"]["Index"] = json!(current.map_or(0, |e| e.modify_index));
                    ops.push(cas);
                }
                // `lock` fails if a session took the key since the read.
                (None, Some(session)) => {
                    ops.push(txn_write("lock", &full, value, flags, Some(session)));
                }
                // `unlock` writes the value and detaches the session, and fails unless that
                // session still holds the key.
                (Some(holder), None) => {
                    ops.push(txn_write("unlock", &full, value, flags, Some(holder)));
                }
                (Some(holder), Some(session)) => {
                    ops.push(txn_write("unlock", &full, b"", 0, Some(holder)));
                    ops.push(txn_write("lock", &full, value, flags, Some(session)));
                }
            }
        }
        ops
    }

    /// The new pair of every put, in operation order, from the committed entries.
    fn pairs(&self, txn: &Transaction, entries: &[Entry]) -> Result<Vec<KvPair>> {
        txn.operations()
            .iter()
            .filter_map(|op| match op {
                Operation::Put {
                    key,
                    value,
                    options,
                } => Some((key, value, options.ttl.is_none())),
                _ => None,
            })
            .map(|(key, value, timeless)| {
                let full = self.full(key);
                // A pinned key reports its old entry too: the write's index is the highest.
                let index = entries
                    .iter()
                    .filter(|e| e.key == full)
                    .map(|e| e.modify_index)
                    .max()
                    .ok_or_else(|| {
                        Error::backend(
                            BACKEND,
                            format!(
                                "a committed transaction reported no entry for its put of {key}"
                            ),
                        )
                    })?;
                if timeless {
                    // Written without a TTL: `Flags` 0 or the rewrite marker, no deadline.
                    let version = Version {
                        index,
                        flags: None,
                        session: false,
                    };
                    self.timeless.note(&self.client, &full, version);
                }
                Ok(KvPair {
                    key: key.clone(),
                    value: value.clone(),
                    last_index: index,
                })
            })
            .collect()
    }
}

/// `cas`: write `value` with `flags` (no session) if the key's `ModifyIndex` is `index` (0:
/// only if the key does not exist).
fn cas(full: &str, value: &[u8], flags: u64, index: u64) -> Json {
    let mut op = txn_write("cas", full, value, flags, None);
    op["KV"]["Index"] = json!(index);
    op
}

/// Consul reports operations its ACLs refuse among a transaction's errors.
fn permission_error(errors: &[(usize, String)]) -> Result<()> {
    match errors
        .iter()
        .find(|(_, what)| what.contains("Permission denied") || what.contains("ACL not found"))
    {
        Some((_, what)) => Err(Error::PermissionDenied {
            backend: BACKEND,
            message: what.clone(),
        }),
        None => Ok(()),
    }
}
