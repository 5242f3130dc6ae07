//! Watches through keyspace notifications.
//!
//! One subscriber connection per store handle ([`Subscriptions`], created on the first watch
//! or lock wait) carries every `SUBSCRIBE __keyspace@<db>__:<key>` (watch, lock waiters and
//! holders) and `PSUBSCRIBE __keyspace@<db>__:<escaped prefix>*` (watch_tree), reference
//! counted so that dropping one watch never unsubscribes another. Notifications carry no
//! value: after each event the loop re-reads the key (value, index and TTL in one script).
//! Notifications published while the subscriber is disconnected are lost, so after every
//! reconnection the loop re-subscribes and re-reads everything (a full `SCAN` for trees); a
//! lagging event queue triggers the same resynchronisation. A key with a TTL also arms a
//! timer for its deadline, so an expiry is reported even when Redis reaps it late.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::prelude::{ClientLike, EventInterface, PubsubInterface};
use fred::types::{ConnectHandle, KeyspaceEvent};
use futures::{StreamExt, TryStreamExt};
use kv_core::{Error, KvPair, Result, WatchStream, WatchTreeStream, key, spawn_watch};
use tokio::sync::broadcast::Receiver as BroadcastReceiver;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::time::Instant;

use crate::store::{BATCH, Found, Inner, glob_escape, map_err};

/// A keyspace channel or pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Channel {
    /// `SUBSCRIBE` to one key's channel.
    Key(String),
    /// `PSUBSCRIBE` to a pattern.
    Pattern(String),
}

/// The handle's subscriber connection and its reference-counted subscriptions.
pub(crate) struct Subscriptions {
    pub(crate) client: SubscriberClient,
    pub(crate) db: u8,
    timeout: Duration,
    counts: tokio::sync::Mutex<HashMap<Channel, usize>>,
    connection: StdMutex<Option<ConnectHandle>>,
    manager: StdMutex<Option<tokio::task::JoinHandle<()>>>,
    closed: AtomicBool,
}

impl Subscriptions {
    pub(crate) fn new(
        client: SubscriberClient,
        connection: ConnectHandle,
        db: u8,
        timeout: Duration,
    ) -> Self {
        // fred re-subscribes the tracked channels after a reconnection; the watch loops
        // re-subscribe too (idempotent) before resynchronising, so nothing depends on order.
        let manager = client.manage_subscriptions();
        Subscriptions {
            client,
            db,
            timeout,
            counts: tokio::sync::Mutex::new(HashMap::new()),
            connection: StdMutex::new(Some(connection)),
            manager: StdMutex::new(Some(manager)),
            closed: AtomicBool::new(false),
        }
    }

    /// The keyspace channel of a full Redis key.
    pub(crate) fn key_channel(&self, full: &str) -> Channel {
        Channel::Key(format!("__keyspace@{}__:{full}", self.db))
    }

    /// The keyspace pattern matching every full Redis key starting with `prefix`.
    pub(crate) fn prefix_pattern(&self, prefix: &str) -> Channel {
        Channel::Pattern(format!("__keyspace@{}__:{}*", self.db, glob_escape(prefix)))
    }

    async fn send(&self, channel: &Channel, subscribe: bool) -> Result<()> {
        let request = async {
            match (channel, subscribe) {
                (Channel::Key(c), true) => self.client.subscribe(c.as_str()).await,
                (Channel::Key(c), false) => self.client.unsubscribe(c.as_str()).await,
                (Channel::Pattern(p), true) => self.client.psubscribe(p.as_str()).await,
                (Channel::Pattern(p), false) => self.client.punsubscribe(p.as_str()).await,
            }
        };
        match tokio::time::timeout(self.timeout, request).await {
            Ok(result) => result.map_err(|e| map_err(e, "subscribe", self.timeout)),
            Err(_) => Err(Error::Timeout {
                backend: crate::store::BACKEND,
                operation: "subscribe",
                after: self.timeout,
            }),
        }
    }

    /// Subscribes (if nobody else is) and returns the guard that unsubscribes on drop.
    pub(crate) async fn subscribe(self: &Arc<Self>, channel: Channel) -> Result<Subscription> {
        let mut counts = self.counts.lock().await;
        let count = counts.get(&channel).copied().unwrap_or(0);
        if count == 0 {
            self.send(&channel, true).await?;
        }
        counts.insert(channel.clone(), count + 1);
        Ok(Subscription {
            subs: self.clone(),
            channel,
        })
    }

    /// Subscribes again after a reconnection (harmless if fred already did).
    pub(crate) async fn resubscribe(&self, channel: &Channel) -> Result<()> {
        let counts = self.counts.lock().await;
        if counts.get(channel).copied().unwrap_or(0) > 0 {
            self.send(channel, true).await?;
        }
        Ok(())
    }

    async fn release(&self, channel: Channel) {
        let mut counts = self.counts.lock().await;
        let count = counts.get(&channel).copied().unwrap_or(0);
        if count <= 1 {
            counts.remove(&channel);
            if !self.closed.load(Ordering::SeqCst)
                && let Err(error) = self.send(&channel, false).await
            {
                tracing::debug!(%error, ?channel, "unsubscribing failed");
            }
        } else {
            counts.insert(channel, count - 1);
        }
    }

    /// New receivers of keyspace events and of reconnections.
    pub(crate) fn receivers(
        &self,
    ) -> (
        BroadcastReceiver<KeyspaceEvent>,
        BroadcastReceiver<fred::types::config::Server>,
    ) {
        (self.client.keyspace_event_rx(), self.client.reconnect_rx())
    }

    /// Disconnects the subscriber (store closed or dropped).
    pub(crate) async fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(manager) = self
            .manager
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            manager.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.client.quit()).await;
        let handle = self
            .connection
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let abort = handle.abort_handle();
            if tokio::time::timeout(Duration::from_secs(2), handle)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

/// One holder's share of a subscription; unsubscribes (in the background) when dropped and
/// nobody else needs the channel.
pub(crate) struct Subscription {
    subs: Arc<Subscriptions>,
    channel: Channel,
}

impl Subscription {
    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(crate) fn subscriptions(&self) -> &Arc<Subscriptions> {
        &self.subs
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let subs = self.subs.clone();
        let channel = self.channel.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Short-lived: one UNSUBSCRIBE, bounded by the request timeout.
            runtime.spawn(async move { subs.release(channel).await });
        }
    }
}

/// Margin after a key's deadline before the timer re-reads it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// `Store::watch`.
pub(crate) async fn watch_key(inner: Arc<Inner>, key: String) -> Result<WatchStream> {
    inner.check_notifications().await?;
    let subs = inner.subscriptions().await?;
    let full = inner.full_key(&key);
    let (mut events, mut reconnects) = subs.receivers();
    let subscription = subs.subscribe(subs.key_channel(&full)).await?;
    let tasks = inner.tasks.clone();
    Ok(spawn_watch(&tasks, move |tx| async move {
        let subscription = subscription;
        let subs = subscription.subscriptions().clone();
        let mut backoff = redis_backoff();
        let mut deadline: Option<Instant> = None;
        let mut reread = true;
        loop {
            if reread {
                match inner.read(&key).await {
                    Ok(found) => {
                        backoff.reset();
                        deadline = found.as_ref().and_then(|f| f.deadline);
                        if !tx.send(found.map(|f| f.pair)) {
                            return;
                        }
                    }
                    Err(error) if error.is_transient() => {
                        tracing::debug!(%error, key, "watch read failed; retrying");
                        backoff.wait().await;
                        continue;
                    }
                    Err(error) => {
                        tx.fail(error);
                        return;
                    }
                }
            }
            let timer = deadline
                .map(|d| d + DEADLINE_MARGIN)
                .unwrap_or_else(far_future);
            tokio::select! {
                event = events.recv() => match event {
                    Ok(event) => {
                        reread = event.db == subs.db && event.key.as_bytes() == full.as_bytes();
                    }
                    Err(RecvError::Lagged(_)) => reread = true,
                    Err(RecvError::Closed) => return,
                },
                reconnect = reconnects.recv() => match reconnect {
                    Ok(_) | Err(RecvError::Lagged(_)) => {
                        if let Err(error) = subs.resubscribe(subscription.channel()).await {
                            tracing::debug!(%error, "re-subscribing after a reconnection failed");
                        }
                        reread = true;
                    }
                    Err(RecvError::Closed) => return,
                },
                _ = tokio::time::sleep_until(timer) => reread = true,
                _ = tx.closed() => return,
            }
        }
    }))
}

/// `Store::watch_tree`.
pub(crate) async fn watch_tree(inner: Arc<Inner>, dir: String) -> Result<WatchTreeStream> {
    inner.check_notifications().await?;
    let subs = inner.subscriptions().await?;
    let prefix = format!("{}{}", inner.config.namespace, key::child_prefix(&dir));
    let (mut events, mut reconnects) = subs.receivers();
    let subscription = subs.subscribe(subs.prefix_pattern(&prefix)).await?;
    let tasks = inner.tasks.clone();
    Ok(spawn_watch(&tasks, move |tx| async move {
        let subscription = subscription;
        let subs = subscription.subscriptions().clone();
        let mut backoff = redis_backoff();
        let mut state: BTreeMap<String, Found> = BTreeMap::new();
        let mut resync = true;
        let mut dirty: BTreeSet<String> = BTreeSet::new();
        loop {
            if resync {
                match inner.list_found(&dir).await {
                    Ok(list) => {
                        state = list.into_iter().map(|f| (f.pair.key.clone(), f)).collect();
                        resync = false;
                        dirty.clear();
                        backoff.reset();
                    }
                    Err(error) if error.is_transient() => {
                        tracing::debug!(%error, dir, "watch_tree listing failed; retrying");
                        backoff.wait().await;
                        continue;
                    }
                    Err(error) => {
                        tx.fail(error);
                        return;
                    }
                }
            } else if !dirty.is_empty() {
                let keys: Vec<String> = std::mem::take(&mut dirty).into_iter().collect();
                let inner_ref = &inner;
                let read: Result<Vec<(String, Option<Found>)>> = futures::stream::iter(keys)
                    .map(|k| async move {
                        let found = inner_ref.read(&k).await?;
                        Ok((k, found))
                    })
                    .buffer_unordered(BATCH)
                    .try_collect()
                    .await;
                match read {
                    Ok(results) => {
                        backoff.reset();
                        for (k, found) in results {
                            match found {
                                Some(found) => state.insert(k, found),
                                None => state.remove(&k),
                            };
                        }
                    }
                    Err(error) if error.is_transient() => {
                        tracing::debug!(%error, dir, "watch_tree read failed; resynchronising");
                        backoff.wait().await;
                        resync = true;
                        continue;
                    }
                    Err(error) => {
                        tx.fail(error);
                        return;
                    }
                }
            }
            let snapshot: Vec<KvPair> = state.values().map(|f| f.pair.clone()).collect();
            if !tx.send(snapshot) {
                return;
            }
            let deadline = state.values().filter_map(|f| f.deadline).min();
            let timer = deadline
                .map(|d| d + DEADLINE_MARGIN)
                .unwrap_or_else(far_future);
            // Wait for something that may change the snapshot.
            loop {
                let note = |event: KeyspaceEvent, dirty: &mut BTreeSet<String>| {
                    if event.db != subs.db {
                        return;
                    }
                    if let Some(rel) = event.key.as_str().and_then(|k| inner.relative_key(k))
                        && key::is_descendant(&dir, rel)
                    {
                        dirty.insert(rel.to_owned());
                    }
                };
                tokio::select! {
                    event = events.recv() => match event {
                        Ok(event) => {
                            note(event, &mut dirty);
                            // Coalesce what is already queued.
                            loop {
                                match events.try_recv() {
                                    Ok(event) => note(event, &mut dirty),
                                    Err(TryRecvError::Lagged(_)) => { resync = true; break; }
                                    Err(_) => break,
                                }
                            }
                        }
                        Err(RecvError::Lagged(_)) => resync = true,
                        Err(RecvError::Closed) => return,
                    },
                    reconnect = reconnects.recv() => match reconnect {
                        Ok(_) | Err(RecvError::Lagged(_)) => {
                            if let Err(error) = subs.resubscribe(subscription.channel()).await {
                                tracing::debug!(%error, "re-subscribing after a reconnection failed");
                            }
                            resync = true;
                        }
                        Err(RecvError::Closed) => return,
                    },
                    _ = tokio::time::sleep_until(timer) => {
                        let now = Instant::now() + DEADLINE_MARGIN;
                        dirty.extend(
                            state
                                .values()
                                .filter(|f| f.deadline.is_some_and(|d| d <= now))
                                .map(|f| f.pair.key.clone()),
                        );
                        if dirty.is_empty() {
                            // Clock skew: re-read everything that has a deadline.
                            dirty.extend(
                                state.values().filter(|f| f.deadline.is_some()).map(|f| f.pair.key.clone()),
                            );
                        }
                    }
                    _ = tx.closed() => return,
                }
                if resync || !dirty.is_empty() {
                    break;
                }
            }
        }
    }))
}

/// Reconnect back-off of watch loops and lock waits: 100 ms doubling to 2 s.
pub(crate) fn redis_backoff() -> kv_core::Backoff {
    kv_core::Backoff::new(Duration::from_millis(100), Duration::from_secs(2))
}
