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

use std::collections::HashMap;
use std::time::Instant;

use futures::future::join_all;
use kv_core::{Error, KvPair, Operation, Result, Transaction};
use serde_json::{Value as Json, json};

use crate::client::{BACKEND, Cond, Entry, TxnAnswer, txn_cond, txn_op, txn_write};
use crate::store::{Inner, effective_flags, flags_for, is_live};

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

impl Inner {
    /// Commits a transaction already checked by `Capabilities::check_transaction` (keys
    /// normalised). See the [module docs](self).
    pub(crate) async fn transaction(&self, txn: Transaction) -> Result<Vec<KvPair>> {
        if txn.conditions().is_empty() && txn.operations().is_empty() {
            return Ok(Vec::new());
        }
        self.check_body(&txn)?;
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
                Operation::Put { key, value, .. } => Some((key, value)),
                _ => None,
            })
            .map(|(key, value)| {
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
                Ok(KvPair {
                    key: key.clone(),
                    value: value.clone(),
                    last_index: index,
                })
            })
            .collect()
    }
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
