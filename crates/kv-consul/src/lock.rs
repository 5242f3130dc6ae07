//! Locks on sessions.
//!
//! * Acquire: wait (blocking query on the key) until the key is absent, or present but past
//!   its TTL deadline; then one transaction: the key is still absent (or still that expired
//!   entry, whose session is detached), and `lock` it with the value and a session of TTL
//!   `max(ttl / 2, session_ttl_min)`, `Behavior=delete`, `LockDelay=0s`, no health checks.
//!   Consul invalidates a session twice its TTL after the last renewal, so a dead holder's key
//!   disappears about `ttl` after its last renewal.
//!   The first attempt skips the read and bets on the common case, a free key that does not
//!   exist: session, then the transaction (`check-not-exists`, `lock`). Refused (the key
//!   exists: held, a plain value, or an expired entry only the read can judge), nothing was
//!   written, and the wait above starts with the session kept for it.
//! * Fencing token: the key's `ModifyIndex` after the acquiring transaction (a Raft index:
//!   it rises with every acquisition).
//! * Renewal: `kv_core::lock::keep_alive` renews the session every `ttl / 3`; a renewal
//!   answered 404 (session gone) marks the lock lost at once. Beside it, a blocking query on
//!   the key marks the lock lost as soon as the key is deleted, overwritten or its session
//!   changes.
//! * Server state lost: when any request of the handle notices that the server lost its
//!   state (its KV index went below one seen before; see the crate docs), every lock the
//!   handle holds is marked lost at once.
//! * Release: destroy the session. With `Behavior=delete`, Consul deletes the key in the same
//!   Raft transaction — but only if the key is still held by that session, so a key someone
//!   else has overwritten meanwhile is left alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use kv_core::lock::keep_alive;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, LockBackend, LockOptions, Result,
};

use crate::client::{Cond, TxnOutcome};
use crate::store::{Inner, deadline_of, is_live};
use crate::watch::is_terminal;

/// The lock backend of one `Lock`.
#[derive(Debug)]
pub(crate) struct ConsulLock {
    inner: Arc<Inner>,
    key: String,
    full: String,
    value: Bytes,
    ttl: Duration,
}

impl ConsulLock {
    pub(crate) fn new(inner: Arc<Inner>, key: &str, options: LockOptions) -> Self {
        ConsulLock {
            full: inner.full(key),
            inner,
            key: key.to_owned(),
            value: options.value,
            ttl: options.ttl,
        }
    }

    /// A live session for the next attempt: the previous one renewed, or a new one.
    async fn session(&self, previous: Option<String>) -> Result<String> {
        if let Some(previous) = previous
            && self.inner.client.session_renew(&previous).await?
        {
            return Ok(previous);
        }
        self.inner
            .client
            .session_create(
                self.inner.session_ttl(self.ttl),
                "delete",
                &format!("kv-rs lock {}", self.key),
            )
            .await
    }

    async fn acquire_inner(
        &self,
        abandon: &CancellationToken,
        session: &mut Option<String>,
    ) -> Result<Acquired> {
        let client = &self.inner.client;
        let mut index = 0u64;
        let mut backoff = kv_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let mut conflicts = 0u32;
        // The session made for the first attempt serves the next one without a renewal while
        // it is surely alive (Consul ends it twice its TTL after the last renewal); a refusal
        // of the first attempt says nothing about the session, since the key was present.
        let mut fresh = None;
        // The common case first: the key is absent, no need to read it. Any failure here
        // (the server unreachable, say) leaves the decision to the loop, as the read used to:
        // it waits for the server, and if the transaction was applied without its answer
        // arriving, finds the key held by this session.
        match self.first_attempt(abandon, session).await {
            Ok(Some(acquired)) => return Ok(acquired),
            Ok(None) => fresh = Some(Instant::now()),
            Err(error) if is_terminal(&error) => return Err(error),
            Err(error) => tracing::debug!(%error, "first lock attempt failed, reading the key"),
        }
        loop {
            let block = (index > 0).then_some((index, client.watch_wait));
            let read = tokio::select! {
                read = client.kv_get(&self.full, true, block) => read,
                _ = abandon.cancelled() => return Err(Error::Closed),
            };
            let (entry, new_index) = match read {
                Ok(read) => read,
                Err(error) if is_terminal(&error) => return Err(error),
                Err(error) => {
                    tracing::debug!(%error, "lock wait query failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff.next_delay()) => {}
                        _ = abandon.cancelled() => return Err(Error::Closed),
                    }
                    index = 0;
                    continue;
                }
            };
            backoff.reset();
            index = if new_index < index { 0 } else { new_index };
            // Held by this attempt's own session: an earlier transaction was applied though
            // its answer was lost.
            if let (Some(e), Some(id)) = (&entry, session.as_deref())
                && e.session.as_deref() == Some(id)
            {
                let token = e.modify_index;
                return Ok(self.start(id.to_owned(), token));
            }
            let attempt = match &entry {
                None => Some((Cond::NotExists, None)),
                Some(e) if !is_live(e, self.inner.server_now()) => {
                    Some((Cond::Index(e.modify_index), e.session.clone()))
                }
                Some(_) => None,
            };
            let Some((cond, holder)) = attempt else {
                // Held (or a plain value): wait for a change, or for its TTL deadline.
                if let Some(deadline) = entry.as_ref().and_then(|e| deadline_of(e.flags)) {
                    let wait = client.clock.until(deadline);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = abandon.cancelled() => return Err(Error::Closed),
                    }
                    index = 0;
                }
                continue;
            };
            let session_ttl = self.inner.session_ttl(self.ttl);
            let id = match (fresh.take(), session.take()) {
                (Some(at), Some(id)) if at.elapsed() < session_ttl => id,
                (_, previous) => self.session(previous).await?,
            };
            *session = Some(id.clone());
            if abandon.is_cancelled() {
                return Err(Error::Closed);
            }
            let outcome = self
                .inner
                .write(
                    &self.full,
                    &self.value,
                    0,
                    Some(cond),
                    holder.as_deref(),
                    Some(&id),
                )
                .await?;
            match outcome {
                TxnOutcome::Committed(token) => return Ok(self.start(id, token)),
                TxnOutcome::RolledBack(op, what) => {
                    tracing::debug!(op, %what, "lost the race for the lock, waiting again");
                    conflicts += 1;
                    tokio::select! {
                        _ = Inner::conflict_pause(conflicts) => {}
                        _ = abandon.cancelled() => return Err(Error::Closed),
                    }
                    index = 0;
                }
            }
        }
    }

    /// Session, then `check-not-exists` + `lock`: the acquisition of an absent key in two
    /// requests. `None` when the key exists (nothing written; the session stays in `session`).
    async fn first_attempt(
        &self,
        abandon: &CancellationToken,
        session: &mut Option<String>,
    ) -> Result<Option<Acquired>> {
        let id = self.session(session.take()).await?;
        *session = Some(id.clone());
        if abandon.is_cancelled() {
            return Err(Error::Closed);
        }
        let outcome = self
            .inner
            .write(
                &self.full,
                &self.value,
                0,
                Some(Cond::NotExists),
                None,
                Some(&id),
            )
            .await?;
        Ok(match outcome {
            TxnOutcome::Committed(token) => Some(self.start(id, token)),
            TxnOutcome::RolledBack(op, what) => {
                tracing::debug!(op, %what, "lock key present, reading it");
                None
            }
        })
    }

    /// Starts renewal and the held-watch, and builds the acquisition.
    fn start(&self, session: String, token: u64) -> Acquired {
        // The acquiring write carries `Flags` 0: `LockHeld` on this token can be checked on
        // the server alone (see `crate::txn`).
        let version = crate::txn::Version {
            index: token,
            flags: Some(0),
            session: true,
        };
        self.inner
            .timeless
            .note(&self.inner.client, &self.full, version);
        let (notifier, lease) = LeaseNotifier::new(token);
        let inner = self.inner.clone();
        let full = self.full.clone();
        let ttl = self.ttl;
        let task_notifier = notifier.clone();
        let task_session = session.clone();
        // Taken right after the acquiring transaction: if that transaction itself revealed a
        // loss of state (it committed below an index seen before), the lock belongs to the new
        // history and lives on. A loss noticed by another request in that very instant is
        // caught by `watch_held` and the renewal, which then find the key and session gone.
        let mut epoch = self.inner.client.epoch.guard();
        self.inner.tasks.spawn(async move {
            let renew = {
                let client = inner.client.clone();
                let session = task_session.clone();
                move || {
                    let client = client.clone();
                    let session = session.clone();
                    async move { client.session_renew(&session).await }
                }
            };
            tokio::select! {
                _ = keep_alive(ttl, task_notifier.clone(), renew) => {}
                _ = watch_held(&inner, &full, &task_session, token, &task_notifier) => {}
                _ = task_notifier.ended() => {}
                // The server lost its state: the session and the key are gone with it, and
                // someone else may hold the lock in the new history already.
                _ = epoch.over() => {
                    tracing::warn!(key = full, "the server lost its state: lock lost");
                    task_notifier.lost();
                }
            }
        });
        Acquired {
            fencing_token: token,
            notifier,
            lease,
            held: Box::new(ConsulHeld {
                inner: self.inner.clone(),
                session,
            }),
        }
    }
}

/// Follows the held key with blocking queries; marks the lock lost as soon as the key is
/// deleted, rewritten or held by another session.
async fn watch_held(
    inner: &Inner,
    full: &str,
    session: &str,
    token: u64,
    notifier: &LeaseNotifier,
) {
    let client = &inner.client;
    let mut index = token;
    let mut backoff = kv_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        match client
            .kv_get(full, true, Some((index, client.watch_wait)))
            .await
        {
            Ok((entry, new_index)) => {
                backoff.reset();
                let ours = entry.as_ref().is_some_and(|e| {
                    e.modify_index == token && e.session.as_deref() == Some(session)
                });
                if !ours {
                    tracing::debug!(key = full, "lock key deleted or taken over: lock lost");
                    notifier.lost();
                    return;
                }
                index = if new_index < index {
                    token
                } else {
                    new_index.max(token)
                };
            }
            Err(error) => {
                // Renewal decides whether an unreachable server costs us the lock.
                tracing::debug!(%error, "lock held-watch failed, retrying");
                backoff.wait().await;
            }
        }
    }
}

#[async_trait]
impl LockBackend for ConsulLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let mut session = None;
        let result = self.acquire_inner(&abandon, &mut session).await;
        if result.is_err()
            && let Some(session) = session
        {
            // Never used to hold the key: destroy it (it would expire by itself anyway).
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                self.inner.client.session_destroy(&session),
            )
            .await;
        }
        result
    }
}

/// A held lock: its session.
#[derive(Debug)]
struct ConsulHeld {
    inner: Arc<Inner>,
    session: String,
}

#[async_trait]
impl HeldLock for ConsulHeld {
    async fn release(self: Box<Self>) -> Result<()> {
        // Destroying the session deletes the key if (and only if) it still holds it.
        self.inner.client.session_destroy(&self.session).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, ConsulStore};
    use kv_core::{LockOptions, Store};

    async fn store(name: &str) -> ConsulStore {
        let address = std::env::var("KV_TEST_CONSUL_ADDR").unwrap_or_else(|_| {
            panic!("KV_TEST_CONSUL_ADDR not set: run `eval \"$(scripts/servers env)\"` after `scripts/servers up consul`")
        });
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let config = Config::builder()
            .endpoint(address)
            .namespace(format!("kv-consul-unit-{name}-{nanos:x}"))
            .build()
            .unwrap();
        ConsulStore::connect(config).await.unwrap()
    }

    /// A free lock is taken in two requests, a session and the locking transaction, without
    /// reading the key first. Counted right after the acquisition, before the holder's task
    /// (spawned on this single-threaded runtime) has run. Then a second acquisition of the
    /// held key is refused at once, reads the key and waits.
    #[tokio::test]
    async fn a_free_key_is_locked_in_two_requests() {
        let store = store("lock-fast").await;
        let options = LockOptions::default().ttl(Duration::from_secs(10));
        let lock = ConsulLock::new(store.inner.clone(), "free", options.clone());
        let before = store.requests_sent();
        let acquired = lock.acquire(CancellationToken::new()).await.unwrap();
        assert_eq!(store.requests_sent() - before, 2, "session and transaction");
        let entry = store.inner.read(&lock.full, true).await.unwrap().unwrap();
        assert_eq!(entry.modify_index, acquired.fencing_token);
        assert!(entry.session.is_some());

        let rival = ConsulLock::new(store.inner.clone(), "free", options);
        let abandon = CancellationToken::new();
        let waiting = tokio::spawn({
            let abandon = abandon.clone();
            async move { rival.acquire(abandon).await.map(|a| a.fencing_token) }
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "a held key is not taken");
        abandon.cancel();
        assert!(matches!(waiting.await.unwrap(), Err(Error::Closed)));

        acquired.notifier.released();
        acquired.held.release().await.unwrap();
        assert_eq!(store.inner.read(&lock.full, true).await.unwrap(), None);
        Store::close(&store).await.unwrap();
    }
}
