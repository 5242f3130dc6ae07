//! Locks: the lock's key itself, created only if absent and bound to a lease that a
//! background task keeps alive.
//!
//! * **Acquire**: grant a lease of the lock TTL (rounded up to whole seconds) and run
//!   `txn(create_revision(key) == 0 → put(key, value, lease) else get(key))`. The key held:
//!   revoke the lease and watch the key (from the transaction's revision + 1) until it is
//!   deleted, then try again. A holder written with a TTL past its deadline counts as absent:
//!   its lease is revoked and the transaction runs once more. The fencing token is the revision
//!   of the put, i.e. the key's `last_index`.
//! * **Hold**: one task per held lock renews the lease through etcd's keep-alive stream every
//!   TTL/3 (a response with TTL 0 means the lease is gone: lost at once) and watches the key
//!   from the fencing revision + 1: a deletion or a write by anyone else fires the lost signal
//!   at once.
//! * **Release**: stop the task, then revoke the lease: etcd deletes the key with it if the
//!   key is still bound to the lease (one request).
//! * **Fencing**: [`Condition::LockHeld`](kv_core::Condition::LockHeld) in a transaction is
//!   `mod_revision(key) == token` on the server (see [`crate::txn`]): renewals never touch the
//!   key, and every way of losing the lock (release, delete, overwrite, the lease ending, which
//!   makes etcd delete the key) changes it before anyone else can acquire.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, Txn,
    TxnOp, TxnOpResponse, WatchOptions,
};
use kv_core::tasks::AbortOnDrop;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, LockBackend, LockLease,
    LockOptions, LockState, Result, TaskSet,
};
use tokio::sync::Mutex;

use crate::client::{Inner, header_revision, map_error};
use crate::lease;
use crate::store::revoke_quietly;

/// The [`LockBackend`] of one lock key.
pub(crate) struct EtcdLock {
    inner: Inner,
    tasks: TaskSet,
    key: String,
    full_key: Vec<u8>,
    value: Bytes,
    ttl: Duration,
}

impl fmt::Debug for EtcdLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdLock")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish()
    }
}

enum Attempt {
    Acquired { lease_id: i64, revision: i64 },
    Busy { revision: i64 },
}

impl EtcdLock {
    pub(crate) fn new(inner: Inner, tasks: TaskSet, key: String, options: LockOptions) -> Self {
        let full_key = inner.full_key(&key);
        EtcdLock {
            inner,
            tasks,
            key,
            full_key,
            value: options.value,
            ttl: options.ttl,
        }
    }

    async fn attempt(&self) -> Result<Attempt> {
        let mut kv = self.inner.kv.clone();
        let lease_id = crate::store::grant(&self.inner, self.ttl, "lock").await?;
        // The key's holder comes back in the same transaction when the create fails, so a
        // free lock costs the grant and one transaction (no read before them).
        let mut cleared_expired = false;
        loop {
            let txn = Txn::new()
                .when([Compare::create_revision(
                    self.full_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then([TxnOp::put(
                    self.full_key.clone(),
                    self.value.to_vec(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )])
                .or_else([TxnOp::get(
                    self.full_key.clone(),
                    Some(GetOptions::new().with_keys_only()),
                )]);
            let response = match self.inner.call("lock", kv.txn(txn)).await {
                Ok(response) => response,
                Err(error) => {
                    // Whether or not the put was applied, revoking the lease undoes it.
                    revoke_quietly(&self.inner, lease_id).await;
                    return Err(error);
                }
            };
            if response.succeeded() {
                return Ok(Attempt::Acquired {
                    lease_id,
                    revision: header_revision(response.header()),
                });
            }
            let holder_lease = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(range) => range.kvs().first().map(|kv| kv.lease()),
                _ => None,
            });
            match holder_lease {
                // A key written with a TTL that is past its deadline is absent: revoking its
                // lease deletes it, and the create can succeed. Once: if the key is still
                // there after that, the caller waits for it like for any holder.
                Some(expired)
                    if !cleared_expired && lease::is_expired(&self.inner.clock, expired) =>
                {
                    lease::revoke_all(&self.inner, vec![expired]).await;
                    cleared_expired = true;
                }
                _ => {
                    revoke_quietly(&self.inner, lease_id).await;
                    return Ok(Attempt::Busy {
                        revision: header_revision(response.header()),
                    });
                }
            }
        }
    }

    /// Waits until the key is deleted after `revision` (or some time passed: the caller
    /// checks again anyway).
    async fn wait_for_delete(&self, revision: i64) -> Result<()> {
        let options = WatchOptions::new().with_start_revision(revision + 1);
        let mut client = self.inner.watch.clone();
        let mut stream = self
            .inner
            .call("lock", client.watch(self.full_key.clone(), Some(options)))
            .await?;
        let recheck = self.ttl.max(Duration::from_secs(5));
        let wait = async {
            loop {
                match stream.message().await {
                    Ok(Some(response)) => {
                        if response.compact_revision() > 0 {
                            // Compacted past our revision: just check the key again.
                            return Ok(());
                        }
                        if response.canceled() {
                            return Err(Error::unavailable(
                                crate::client::BACKEND,
                                format!("etcd cancelled the watch: {}", response.cancel_reason()),
                            ));
                        }
                        if response
                            .events()
                            .iter()
                            .any(|e| e.event_type() == EventType::Delete)
                        {
                            return Ok(());
                        }
                    }
                    Ok(None) => {
                        return Err(Error::unavailable(
                            crate::client::BACKEND,
                            "the etcd watch stream ended",
                        ));
                    }
                    Err(error) => return Err(map_error(error, "lock", self.inner.timeout)),
                }
            }
        };
        tokio::time::timeout(recheck, wait).await.unwrap_or(Ok(()))
    }
}

#[async_trait]
impl LockBackend for EtcdLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let shutdown = self.tasks.shutdown_token();
        let mut backoff = kv_core::Backoff::default();
        let gave_up = || Error::LockNotHeld {
            key: self.key.clone(),
        };
        let (lease_id, revision) = loop {
            if abandon.is_cancelled() {
                return Err(gave_up());
            }
            // An attempt runs to its end (a few requests, each bounded by the request
            // timeout): cut short between its transaction and its answer, it would leave the
            // key locked by a lease nobody renews nor revokes. A caller that gave up meanwhile
            // gets the acquisition released by `kv_core::Lock`.
            let waited = match self.attempt().await {
                Ok(Attempt::Acquired { lease_id, revision }) => break (lease_id, revision),
                Ok(Attempt::Busy { revision }) => {
                    backoff.reset();
                    tokio::select! {
                        waited = self.wait_for_delete(revision) => waited,
                        _ = abandon.cancelled() => return Err(gave_up()),
                        _ = shutdown.cancelled() => return Err(Error::Closed),
                    }
                }
                Err(error) => Err(error),
            };
            match waited {
                Ok(()) => {}
                Err(error) if error.is_transient() => {
                    tracing::debug!(%error, key = %self.key, "lock attempt failed, retrying");
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = abandon.cancelled() => return Err(gave_up()),
                        _ = shutdown.cancelled() => return Err(Error::Closed),
                    }
                }
                Err(error) => return Err(error),
            }
        };
        let fencing_token = revision as u64;
        let (notifier, lease) = LeaseNotifier::new(fencing_token);
        let task = self.tasks.spawn_owned(hold(
            self.inner.clone(),
            self.full_key.clone(),
            lease_id,
            revision,
            self.ttl,
            notifier.clone(),
        ));
        let held = Box::new(EtcdHeldLock {
            inner: self.inner.clone(),
            key: self.key.clone(),
            lease_id,
            revision,
            lease: lease.clone(),
            task: Some(task),
        });
        Ok(Acquired {
            fencing_token,
            notifier,
            lease,
            held,
        })
    }
}

/// The keep-alive stream of a held lock's lease and whether it is in step (every request's
/// answer read); reopened after a broken connection or an interrupted exchange.
type KeepAlive = Arc<Mutex<Option<(LeaseKeeper, LeaseKeepAliveStream, bool)>>>;

/// One renewal: `Ok(true)` renewed, `Ok(false)` the lease is gone.
async fn renew(inner: Inner, keep_alive: KeepAlive, lease_id: i64) -> Result<bool> {
    let mut slot = keep_alive.lock().await;
    if let Some((keeper, stream, in_step)) = slot.as_mut().filter(|(_, _, in_step)| *in_step) {
        // Marked out of step until the answer is read: if this future is dropped midway
        // (the renewal loop's timeout), the next renewal opens a fresh stream rather than
        // reading this request's late answer.
        *in_step = false;
        let exchange = async {
            keeper.keep_alive().await?;
            stream.message().await
        };
        let outcome = inner.call("lock renewal", exchange).await;
        *in_step = true;
        match outcome {
            Ok(Some(response)) => return Ok(response.ttl() > 0),
            Ok(None) => {
                *slot = None;
                return Err(Error::unavailable(
                    crate::client::BACKEND,
                    "the lease keep-alive stream ended",
                ));
            }
            Err(error) => {
                *slot = None;
                return Err(error);
            }
        }
    }
    // (Re)open the stream: opening sends one keep-alive and checks the answer.
    *slot = None;
    let mut lease = inner.lease.clone();
    match tokio::time::timeout(inner.timeout, lease.keep_alive(lease_id)).await {
        Ok(Ok((keeper, stream))) => {
            *slot = Some((keeper, stream, true));
            Ok(true)
        }
        Ok(Err(etcd_client::Error::LeaseKeepAliveError(_))) => Ok(false),
        Ok(Err(error)) => Err(map_error(error, "lock renewal", inner.timeout)),
        Err(_) => Err(Error::Timeout {
            backend: crate::client::BACKEND,
            operation: "lock renewal",
            after: inner.timeout,
        }),
    }
}

/// The task of a held lock: renews the lease and watches the key; ends when the lock ends.
async fn hold(
    inner: Inner,
    full_key: Vec<u8>,
    lease_id: i64,
    revision: i64,
    ttl: Duration,
    notifier: LeaseNotifier,
) {
    let keep_alive: KeepAlive = Arc::new(Mutex::new(None));
    let renewal = kv_core::lock::keep_alive(ttl, notifier.clone(), {
        let inner = inner.clone();
        move || renew(inner.clone(), keep_alive.clone(), lease_id)
    });
    tokio::select! {
        _ = renewal => {}
        _ = guard_key(&inner, &full_key, revision, &notifier) => {}
        _ = notifier.ended() => {}
    }
}

/// Watches a held lock's key: any event after our write (a delete, an expiry, someone else's
/// write) means the lock is lost.
async fn guard_key(inner: &Inner, full_key: &[u8], revision: i64, notifier: &LeaseNotifier) {
    let mut backoff = kv_core::Backoff::default();
    let mut start = revision + 1;
    loop {
        let options = WatchOptions::new().with_start_revision(start);
        let mut client = inner.watch.clone();
        let opened = inner
            .call("lock guard", client.watch(full_key.to_vec(), Some(options)))
            .await;
        if let Ok(mut stream) = opened {
            while let Ok(Some(response)) = stream.message().await {
                if response.compact_revision() > 0 {
                    // History is gone: compare the key as it is now.
                    let mut kv = inner.kv.clone();
                    match inner
                        .call("lock guard", kv.get(full_key.to_vec(), None))
                        .await
                    {
                        Ok(current) => {
                            let ours = current
                                .kvs()
                                .first()
                                .is_some_and(|kv| kv.mod_revision() == revision);
                            if !ours {
                                notifier.lost();
                                return;
                            }
                            start = header_revision(current.header()) + 1;
                        }
                        Err(error) => {
                            tracing::debug!(%error, "lock guard: re-reading the key failed")
                        }
                    }
                    break;
                }
                if response.canceled() {
                    break;
                }
                backoff.reset();
                if response
                    .events()
                    .iter()
                    .any(|e| e.kv().is_some_and(|kv| kv.mod_revision() != revision))
                {
                    tracing::debug!("lock key deleted or overwritten: the lock is lost");
                    notifier.lost();
                    return;
                }
            }
        }
        backoff.wait().await;
    }
}

/// A held etcd lock.
struct EtcdHeldLock {
    inner: Inner,
    key: String,
    lease_id: i64,
    revision: i64,
    /// The user's view of this acquisition, to know at release whether it was lost.
    lease: LockLease,
    task: Option<AbortOnDrop>,
}

impl fmt::Debug for EtcdHeldLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdHeldLock")
            .field("key", &self.key)
            .field("lease_id", &self.lease_id)
            .field("fencing_token", &self.revision)
            .finish()
    }
}

#[async_trait]
impl HeldLock for EtcdHeldLock {
    async fn release(mut self: Box<Self>) -> Result<()> {
        drop(self.task.take());
        // Revoking the lease deletes the key in the same etcd transaction if it is still bound
        // to our lease, and leaves it alone if someone else has written it since (without our
        // lease): one request, as the raw client does. A conditional delete before it (the
        // earlier release) cost a second round trip and protected nothing more.
        let mut lease = self.inner.lease.clone();
        match self.inner.call("unlock", lease.revoke(self.lease_id)).await {
            // The request did not reach the server: the key stays until the lease expires.
            // That is only worth reporting for a lock that was still held: a lost lock is
            // one whose renewal already failed for a whole TTL (its lease is expiring on the
            // server anyway) or whose key is already gone or someone else's.
            Err(error) if error.is_transient() && self.lease.state() != LockState::Lost => {
                Err(error)
            }
            _ => Ok(()),
        }
    }
}
