//! Locks: `SET NX PX` semantics in Lua with a random owner token in the metadata record,
//! renewed and released by token-checked scripts. A holder re-checks its key after every
//! keyspace event of the key and after every reconnection of the handle's connections (a
//! restarted server may have lost the key, and no event says so).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::prelude::EventInterface;
use fred::types::config::Server;
use fred::types::{KeyspaceEvent, Value};
use kv_core::lock::keep_alive;
use kv_core::{
    Acquired, CancellationToken, Error, HeldLock, LeaseNotifier, Lock, LockBackend, LockOptions,
    Result,
};
use rand::Rng;
use tokio::sync::broadcast::Receiver as BroadcastReceiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

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

/// The key's keyspace subscription and its event receiver, when there is a subscriber
/// connection (without one, waiting polls and loss is noticed by renewals and reconnections).
type Events = Option<(Subscription, BroadcastReceiver<KeyspaceEvent>)>;

/// Reconnections of the handle's connections: the command connection and, when the lock
/// subscribed to its key, the subscriber connection (each reconnects on its own). Made before
/// a request, it reports every reconnection from then on.
struct Reconnects {
    commands: Option<BroadcastReceiver<Server>>,
    subscriber: Option<BroadcastReceiver<Server>>,
}

impl Reconnects {
    fn new(inner: &Inner, events: &Events) -> Self {
        Reconnects {
            commands: Some(inner.client.reconnect_rx()),
            subscriber: events
                .as_ref()
                .map(|(subscription, _)| subscription.subscriptions().reconnect_rx()),
        }
    }

    /// Whether a reconnection has been reported and not yet taken by [`next`](Self::next).
    fn pending(&self) -> bool {
        [&self.commands, &self.subscriber]
            .into_iter()
            .flatten()
            .any(|rx| !rx.is_empty())
    }

    /// Completes at the next reconnection of either connection (a lagging receiver missed
    /// some: that counts too).
    async fn next(&mut self) {
        async fn one(rx: &mut Option<BroadcastReceiver<Server>>) {
            let Some(receiver) = rx else {
                return std::future::pending().await;
            };
            match receiver.recv().await {
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                // The client is gone (the store is closing): nothing more to report.
                Err(RecvError::Closed) => {
                    *rx = None;
                    std::future::pending::<()>().await
                }
            }
        }
        let Reconnects {
            commands,
            subscriber,
        } = self;
        tokio::select! {
            _ = one(commands) => {}
            _ = one(subscriber) => {}
        }
    }
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
    async fn subscribe(&self) -> Events {
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
                self.inner.script_keys(&self.full),
                vec![
                    Value::Bytes(self.value.clone()),
                    ttl_ms(self.ttl),
                    token.into(),
                ],
                true,
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

/// Waits for the next event on `full` and returns its operation (`None`: some events were
/// missed); without a subscription it never returns.
async fn next_event(events: &mut Events, full: &str) -> Option<String> {
    let Some((_, rx)) = events else {
        return std::future::pending().await;
    };
    loop {
        match rx.recv().await {
            Ok(event) if event.key.as_bytes() == full.as_bytes() => return Some(event.operation),
            Ok(_) => continue,
            Err(RecvError::Lagged(_)) => return None,
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
}

/// Drops every event already received (of any key: the receiver is this lock's own). An
/// ownership check sent after that answers for all of them: each one's write came before it.
fn drain_events(events: &mut Events) {
    if let Some((_, rx)) = events {
        while !matches!(
            rx.try_recv(),
            Err(tokio::sync::broadcast::error::TryRecvError::Empty
                | tokio::sync::broadcast::error::TryRecvError::Closed)
        ) {}
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
            // Made before the attempt: a reconnection from here on (the server may have
            // restarted empty after granting the lock) reaches the holder's renewal task, or
            // wakes the waiter.
            let mut reconnects = Reconnects::new(&self.inner, &events);
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
                        reconnects,
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
                        // A restarted server may have lost the holder's key.
                        _ = reconnects.next() => {}
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
/// reported at once rather than at the next renewal. After every reconnection of either
/// connection it renews at once: a server restarted without persistence has forgotten the
/// lock (a contender can take it right away), and no keyspace event reports that. A check
/// that cannot reach the server is retried with back-off until one gets an answer.
fn spawn_renewal(
    inner: Arc<Inner>,
    full: String,
    token: String,
    ttl: Duration,
    notifier: LeaseNotifier,
    mut events: Events,
    mut reconnects: Reconnects,
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
                            inner.script_keys(&full),
                            vec![token.into(), ttl_ms(ttl)],
                            true,
                        )
                        .await?;
                    Ok(reply.as_i64() == Some(1))
                }
            }
        };
        let watch_takeover = async {
            let mut backoff = redis_backoff();
            // When to ask again after a check that got no answer.
            let mut retry_at: Option<Instant> = None;
            // The acquisition's own `SET … PX` reports `set` then `expire`, adjacent (one
            // command). The server had run our subscription before that write (`send_to`
            // waits for it), and events come in the server's order: every write after ours is
            // reported after those two. So a leading `set`, `expire` is ours or older and
            // needs no check. Anything else, a gap in the events (lagged), or a reconnection
            // (events may have been lost) means every later event is checked.
            let mut own: &[&str] = &["set", "expire"];
            // After a reconnection fred subscribes again, but reports that done before the
            // server has run it: we subscribe again ourselves (confirmed) before the renewal,
            // so no write after that renewal goes unheard.
            let mut resubscribe = false;
            loop {
                // An event calls for an ownership check; a reconnection (or a retry) for a
                // renewal: the check plus a fresh TTL, after a time without renewals.
                let renewal = tokio::select! {
                    operation = next_event(&mut events, &full) => {
                        let ours = own.first().is_some_and(|o| operation.as_deref() == Some(*o));
                        if ours && !reconnects.pending() {
                            own = &own[1..];
                            continue;
                        }
                        own = &[];
                        false
                    }
                    _ = reconnects.next() => {
                        tracing::debug!(key = full, "reconnected: renewing a held lock at once");
                        own = &[];
                        resubscribe = true;
                        true
                    }
                    _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)),
                        if retry_at.is_some() => true,
                };
                if resubscribe && let Some((subscription, _)) = &events {
                    let subs = subscription.subscriptions();
                    if let Err(error) = subs.resubscribe(subscription.channel()).await {
                        tracing::debug!(%error, key = full, "re-subscribing failed; retrying");
                        retry_at = Some(Instant::now() + backoff.next_delay());
                        continue;
                    }
                }
                resubscribe = false;
                // One check answers for every event received until it is sent.
                drain_events(&mut events);
                let (script, args): (_, Vec<Value>) = if renewal {
                    (&SCRIPTS.lock_renew, vec![token.clone().into(), ttl_ms(ttl)])
                } else {
                    (&SCRIPTS.lock_check, vec![token.clone().into()])
                };
                match inner
                    .eval("lock check", script, inner.script_keys(&full), args, false)
                    .await
                {
                    Ok(reply) if reply.as_i64() == Some(0) => {
                        tracing::debug!(key = full, "lock deleted, taken over or forgotten");
                        notifier.lost();
                        return;
                    }
                    Ok(_) => {
                        retry_at = None;
                        backoff.reset();
                    }
                    // keep_alive marks the lock lost once no renewal succeeded for a whole
                    // TTL; until then, keep asking.
                    Err(error) => {
                        tracing::debug!(%error, key = full, "lock check failed; retrying");
                        retry_at = Some(Instant::now() + backoff.next_delay());
                    }
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
            inner.script_keys(full),
            vec![token.to_owned().into()],
            false,
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
