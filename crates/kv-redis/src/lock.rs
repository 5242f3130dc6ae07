//! Locks: `SET NX PX` semantics in Lua with a random owner token in the metadata hash,
//! renewed and released by token-checked scripts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::types::Value;
use kv_core::lock::keep_alive;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, Lock, LockBackend, LockOptions,
    Result,
};
use rand::Rng;
use tokio::sync::broadcast::error::RecvError;

use crate::scripts::SCRIPTS;
use crate::store::{Inner, parse_index, protocol_error};
use crate::watch::{Subscription, redis_backoff};

/// `Store::new_lock`.
pub(crate) fn new_lock(inner: Arc<Inner>, key: String, options: LockOptions) -> Lock {
    let tasks = inner.tasks.clone();
    let backend = RedisLock {
        full: inner.full_key(&key),
        key: key.clone(),
        inner,
        value: options.value,
        ttl: options.ttl,
    };
    Lock::new(key, Arc::new(backend), tasks)
}

struct RedisLock {
    inner: Arc<Inner>,
    key: String,
    full: String,
    value: Bytes,
    ttl: Duration,
}

impl std::fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLock")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish()
    }
}

fn new_token() -> String {
    let n: u128 = rand::rng().random();
    format!("{n:032x}")
}

fn ttl_ms(ttl: Duration) -> Value {
    Value::Integer(ttl.as_millis().max(1) as i64)
}

impl RedisLock {
    /// Subscribes to the key's keyspace channel, best effort: without it, waiting falls back to
    /// polling and loss detection to the renewals.
    async fn subscribe(
        &self,
    ) -> Option<(
        Subscription,
        tokio::sync::broadcast::Receiver<fred::types::KeyspaceEvent>,
    )> {
        let subs = match self.inner.subscriptions().await {
            Ok(subs) => subs,
            Err(error) => {
                tracing::debug!(%error, "lock: no subscriber connection, polling instead");
                return None;
            }
        };
        let (events, _) = subs.receivers();
        match subs.subscribe(subs.key_channel(&self.full)).await {
            Ok(subscription) => Some((subscription, events)),
            Err(error) => {
                tracing::debug!(%error, "lock: subscribing failed, polling instead");
                None
            }
        }
    }

    async fn try_acquire(&self, token: &str) -> Result<Option<u64>> {
        let reply = self
            .inner
            .eval(
                "lock",
                &SCRIPTS.lock_acquire,
                &self.full,
                vec![
                    Value::Bytes(self.value.clone()),
                    ttl_ms(self.ttl),
                    token.into(),
                ],
            )
            .await?;
        if reply.as_str().as_deref() == Some("!held") {
            return Ok(None);
        }
        parse_index(&reply)
            .map(Some)
            .ok_or_else(|| protocol_error("lock"))
    }
}

/// Waits for the next event on `full` (or returns at once without a subscription).
async fn next_event(
    events: &mut Option<(
        Subscription,
        tokio::sync::broadcast::Receiver<fred::types::KeyspaceEvent>,
    )>,
    full: &str,
) {
    let Some((_, rx)) = events else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(event) if event.key.as_bytes() == full.as_bytes() => return,
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return,
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}

#[async_trait]
impl LockBackend for RedisLock {
    async fn acquire(&self, abandon: CancellationToken) -> Result<Acquired> {
        let mut events = tokio::select! {
            events = self.subscribe() => events,
            _ = abandon.cancelled() => return Err(Error::Closed),
        };
        let poll = self.inner.config.lock_poll_interval;
        let mut backoff = redis_backoff();
        // One token per acquisition attempt sequence: a retry after an ambiguous failure (the
        // script ran but its reply was lost) recognises its own lock instead of waiting for
        // it to expire.
        let token = new_token();
        loop {
            self.inner.tasks.ensure_open()?;
            let attempt = tokio::select! {
                attempt = self.try_acquire(&token) => attempt,
                _ = abandon.cancelled() => {
                    // The script may have run: give back what we may have taken.
                    let _ = release(&self.inner, &self.full, &token).await;
                    return Err(Error::Closed);
                }
            };
            match attempt {
                Ok(Some(index)) => {
                    let (notifier, lease) = LeaseNotifier::new(index);
                    let held = RedisHeld {
                        inner: self.inner.clone(),
                        full: self.full.clone(),
                        token: token.clone(),
                    };
                    spawn_renewal(
                        self.inner.clone(),
                        self.full.clone(),
                        token.clone(),
                        self.ttl,
                        notifier.clone(),
                        events.take(),
                    );
                    return Ok(Acquired {
                        fencing_token: index,
                        notifier,
                        lease,
                        held: Box::new(held),
                    });
                }
                Ok(None) => {
                    backoff.reset();
                    tokio::select! {
                        _ = next_event(&mut events, &self.full) => {}
                        _ = tokio::time::sleep(poll) => {}
                        _ = abandon.cancelled() => return Err(Error::Closed),
                    }
                }
                Err(error) if error.is_transient() => {
                    tracing::debug!(%error, key = self.key, "lock attempt failed; retrying");
                    tokio::select! {
                        _ = backoff.wait() => {}
                        _ = abandon.cancelled() => return Err(Error::Closed),
                    }
                }
                Err(error) => return Err(error),
            }
        }
    }
}

/// Renews every `ttl / 3` (kv-core's `keep_alive`) and, between renewals, checks ownership
/// after every keyspace event of the key, so a deletion or overwrite by someone else is
/// reported at once rather than at the next renewal.
fn spawn_renewal(
    inner: Arc<Inner>,
    full: String,
    token: String,
    ttl: Duration,
    notifier: LeaseNotifier,
    mut events: Option<(
        Subscription,
        tokio::sync::broadcast::Receiver<fred::types::KeyspaceEvent>,
    )>,
) {
    let tasks = inner.tasks.clone();
    tasks.spawn(async move {
        let renew = {
            let inner = inner.clone();
            let full = full.clone();
            let token = token.clone();
            move || {
                let inner = inner.clone();
                let full = full.clone();
                let token = token.clone();
                async move {
                    let reply = inner
                        .eval(
                            "lock renew",
                            &SCRIPTS.lock_renew,
                            &full,
                            vec![token.into(), ttl_ms(ttl)],
                        )
                        .await?;
                    Ok(reply.as_i64() == Some(1))
                }
            }
        };
        let watch_takeover = async {
            loop {
                next_event(&mut events, &full).await;
                match inner
                    .eval(
                        "lock check",
                        &SCRIPTS.lock_check,
                        &full,
                        vec![token.clone().into()],
                    )
                    .await
                {
                    Ok(reply) if reply.as_i64() == Some(0) => {
                        tracing::debug!(key = full, "lock deleted or taken over");
                        notifier.lost();
                        return;
                    }
                    Ok(_) => {}
                    // Renewal handles connection trouble.
                    Err(_) => {}
                }
            }
        };
        tokio::select! {
            _ = keep_alive(ttl, notifier.clone(), renew) => {}
            _ = watch_takeover => {}
            _ = notifier.ended() => {}
        }
    });
}

async fn release(inner: &Inner, full: &str, token: &str) -> Result<bool> {
    let reply = inner
        .eval(
            "unlock",
            &SCRIPTS.lock_release,
            full,
            vec![token.to_owned().into()],
        )
        .await?;
    Ok(reply.as_i64() == Some(1))
}

struct RedisHeld {
    inner: Arc<Inner>,
    full: String,
    token: String,
}

impl std::fmt::Debug for RedisHeld {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisHeld")
            .field("key", &self.full)
            .finish()
    }
}

#[async_trait]
impl HeldLock for RedisHeld {
    async fn release(self: Box<Self>) -> Result<()> {
        // Deletes the key only while it still holds our token; a lock lost meanwhile is not
        // an error here (kv-core reports LockLost from the lease state).
        release(&self.inner, &self.full, &self.token).await?;
        Ok(())
    }
}
